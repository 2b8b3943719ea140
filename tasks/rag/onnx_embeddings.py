"""A sentence-transformers model run by onnxruntime: the same vectors, without importing torch.

Importing torch, transformers and sentence-transformers is most of what a cold RAG command spends
on its embedding model; onnxruntime and tokenizers import in a fraction of a second. The model is
exported to ONNX once, with torch, on its first use, into the converted-models folder
(`tasks.core.models.model_cache_dir()`) that every later process reuses. The vectors match
sentence-transformers' (tests/rag/test_onnx_embeddings.py), so an index written with one runtime
is read with the other.

Supported: models made of a Transformer, a Pooling (mean, cls or max tokens) and optionally a
Normalize module, which most sentence-embedding models are (all-MiniLM-L6-v2 included). Any other
model says so and names `embeddings.runtime=torch`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from langchain_core.embeddings import Embeddings

from tasks.core.models import file_lock, model_cache_dir

EXPORT_FILES = ("model.onnx", "tokenizer.json", "layout.json")
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
TRANSFORMER, POOLING, NORMALIZE = "Transformer", "Pooling", "Normalize"


class UnsupportedModel(ValueError):
    """A model this runtime cannot run; the message says why and what to use instead."""


@dataclass
class Layout:
    """What turns the transformer's token states into the model's sentence vector."""

    pooling: str  # mean, cls or max
    max_seq_length: int  # longer texts are truncated, as sentence-transformers does
    lower_case: bool  # sentence-transformers' do_lower_case: the text is lower-cased before tokenizing
    inputs: list[str]  # the tokenizer's outputs the model takes, e.g. input_ids, attention_mask


def model_folder(model: str) -> Path:
    """A local folder as is; a Hub id through the Hub's cache (as sentence-transformers resolves it)."""
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser().resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model if "/" in model else f"sentence-transformers/{model}"))


def read_layout(folder: Path) -> tuple[str, int | None, bool]:
    """(pooling, max_seq_length or None, lower_case) from the model's sentence-transformers files;
    a plain transformer folder gets sentence-transformers' default, mean pooling."""
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [kind for kind in kinds if kind not in (TRANSFORMER, POOLING, NORMALIZE)]
    if unsupported or (modules and kinds[:2] != [TRANSFORMER, POOLING]):
        raise UnsupportedModel(
            f"embeddings.runtime=onnx runs models made of Transformer, Pooling and Normalize modules; "
            f"{folder.name} has {', '.join(kinds)}: set embeddings.runtime=torch"
        )
    pooling = "mean"
    if modules:
        pooling_config = json.loads((folder / modules[1]["path"] / "config.json").read_text())
        active = sorted(key for key, on in pooling_config.items() if key.startswith("pooling_mode") and on)
        if len(active) != 1 or active[0] not in POOLING_MODES:
            raise UnsupportedModel(
                f"embeddings.runtime=onnx pools by mean, cls or max tokens, one of them; {folder.name}'s pooling "
                f"is {active}: set embeddings.runtime=torch"
            )
        pooling = POOLING_MODES[active[0]]
    settings_file = folder / "sentence_bert_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return pooling, settings.get("max_seq_length"), bool(settings.get("do_lower_case", False))


def exported_model(model: str) -> Path:
    """The folder holding `model` exported to ONNX (EXPORT_FILES); exported now if it is not yet."""
    folder = model_folder(model)
    target = model_cache_dir() / "onnx" / f"{folder.name}-{_files_key(folder)}"
    with file_lock(target.with_name(target.name + ".lock")):  # one export, whatever runs at once
        if not all((target / name).is_file() for name in EXPORT_FILES):
            layout = read_layout(folder)  # fails on an unsupported model before torch is imported
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            _export(folder, partial, *layout)
            shutil.rmtree(target, ignore_errors=True)  # what an older layout of the cache left
            partial.rename(target)  # atomic: a crash mid-export never leaves half a model in use
    return target


def _files_key(folder: Path) -> str:
    """Changes when the model's files do (a re-installed or updated model is exported again)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([str(folder), listing]).encode()).hexdigest()[:16]


def _export(folder: Path, out: Path, pooling: str, max_seq_length: int | None, lower_case: bool) -> None:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.is_fast:
        raise UnsupportedModel(
            f"embeddings.runtime=onnx needs a fast tokenizer; {folder.name} has none: set embeddings.runtime=torch"
        )
    model = AutoModel.from_pretrained(folder).eval()
    inputs = [name for name in tokenizer.model_input_names if name in ("input_ids", "attention_mask", "token_type_ids")]
    if max_seq_length is None:  # sentence-transformers' default: what both the model and the tokenizer allow
        positions = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", 512)
        max_seq_length = min(positions, tokenizer.model_max_length)

    class TokenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(inputs, tensors, strict=True))).last_hidden_state

    example = tokenizer(["a sentence", "another, longer sentence"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*inputs, "token_states"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on traced control flow
        torch.onnx.export(
            TokenStates(),
            tuple(example[name] for name in inputs),
            str(out / "model.onnx"),
            input_names=inputs,
            output_names=["token_states"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    layout = Layout(pooling, int(max_seq_length), lower_case, inputs)
    (out / "layout.json").write_text(json.dumps({**asdict(layout), "pad_id": tokenizer.pad_token_id or 0}))


class OnnxEmbeddings(Embeddings):
    """LangChain's `Embeddings` over a sentence-transformers model exported to ONNX, normalized
    (cosine = dot product), on the CPU. Threads: $OMP_NUM_THREADS, else onnxruntime's default."""

    def __init__(self, model_path: str, batch_size: int = 16):
        self.model_path, self.batch_size = model_path, batch_size
        self._session = None
        self._lock = threading.Lock()  # one encode at a time: the session already uses every core
        self._loading = threading.Lock()

    def _load(self):
        with self._loading:
            if self._session is None:
                import onnxruntime
                from tokenizers import Tokenizer

                folder = exported_model(self.model_path)
                settings = json.loads((folder / "layout.json").read_text())
                pad_id = settings.pop("pad_id")
                self._layout = Layout(**settings)
                self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
                self._tokenizer.enable_truncation(self._layout.max_seq_length)
                self._tokenizer.enable_padding(pad_id=pad_id)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
                options.inter_op_num_threads = 1
                # Idle threads sleep instead of spinning: on a shared, busy CPU spinning only steals cores.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = onnxruntime.InferenceSession(
                    str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
                )
        return self._session

    def warm_up(self) -> threading.Thread:
        """Load (and on its first use export) the model in a background thread."""
        thread = threading.Thread(target=self._load, name="embedding-model-load", daemon=True)
        thread.start()
        return thread

    def _encode(self, texts: list[str]):
        import numpy as np

        session = self._load()
        if self._layout.lower_case:
            texts = [text.lower() for text in texts]
        # Longest first, as sentence-transformers batches: texts of a batch have similar lengths,
        # so little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = [None] * len(texts)
        with self._lock:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                encoded = self._tokenizer.encode_batch([texts[i] for i in batch])
                feeds = {
                    "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
                }
                states = session.run(None, {name: feeds[name] for name in self._layout.inputs})[0]
                for i, vector in zip(batch, _pool(states, feeds["attention_mask"], self._layout.pooling), strict=True):
                    vectors[i] = vector
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [vector.tolist() for vector in self._encode(list(texts))] if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0].tolist()


def _pool(states, mask, pooling: str):
    """Token states (batch, tokens, dim) to unit sentence vectors, as sentence-transformers' Pooling
    and Normalize modules compute them."""
    import numpy as np

    weights = mask[..., None].astype(states.dtype)
    if pooling == "cls":
        pooled = states[:, 0]
    elif pooling == "max":
        pooled = np.where(weights > 0, states, -1e9).max(axis=1)
    else:
        pooled = (states * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
