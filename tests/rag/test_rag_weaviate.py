"""The Weaviate code path, against a real Weaviate server: no Weaviate can run on these machines
(embedded mode downloads its binary from GitHub; there is no Docker), so this runs only where
WEAVIATE_URL points at one (http://host:8080, gRPC on 50051)."""

from __future__ import annotations

import os
import uuid

import pytest

from tasks.core.config import load_config
from tasks.rag import retrieval
from tasks.rag.config import RagConfig
from tests.support.rag import by_name, pdf_folder

WEAVIATE_URL = os.environ.get("WEAVIATE_URL")

pytestmark = pytest.mark.skipif(not WEAVIATE_URL, reason="WEAVIATE_URL is not set (no Weaviate server can run here)")


def test_index_and_retrieve_on_weaviate(prefect_harness, sample_data, tmp_path):
    from flows.pdf_index import pdf_index
    from tasks.rag.stores import weaviate

    collection = f"Ftllm_test_{uuid.uuid4().hex[:8]}"
    docs = pdf_folder(sample_data, tmp_path / "docs", ["multicolumn.pdf", "crazyones-pdfa.pdf"])
    overrides = [
        "store.kind=weaviate",
        f"store.uri={WEAVIATE_URL}",
        f"store.collection={collection}",
        f"store.records={tmp_path / 'records.db'}",
    ]
    config = load_config(RagConfig, "configs/rag.yaml", overrides)
    try:
        first = by_name(pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)]))
        assert {r["status"] for r in first.values()} == {"indexed"}
        sources = retrieval.retrieve("What is the capital of Finland?", config, k=3)
        assert sources[0]["source"].endswith("multicolumn.pdf") and "Helsinki" in sources[0]["text"]
        (docs / "crazyones-pdfa.pdf").unlink()
        second = by_name(pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)]))
        assert second["crazyones-pdfa.pdf"]["status"] == "deleted"
    finally:
        retrieval.close_index()
        client = weaviate.connect(config.store)
        client.collections.delete(weaviate.class_name(collection))
        client.close()
