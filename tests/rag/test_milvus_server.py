"""The same indexing and retrieval code against a real Milvus standalone server (PyPI `milvus`).

The server (tests/fixtures/services.py) is started once per session; rows are flushed before it
stops (a killed server loses unflushed rows).
"""

from __future__ import annotations

import time

from tasks.core.config import load_config
from tasks.rag import retrieval
from tasks.rag.config import RagConfig
from tests.support.rag import by_name, count_vectors, pdf_folder


def test_index_retrieve_and_reindex_on_a_milvus_server(prefect_harness, milvus_server, sample_data, tmp_path):
    from flows.pdf_index import pdf_index

    docs = pdf_folder(sample_data, tmp_path / "docs", ["multicolumn.pdf", "crazyones-pdfa.pdf"])
    overrides = [
        f"store.uri={milvus_server}",
        "store.collection=server_test",
        f"store.records={tmp_path / 'records.db'}",
    ]
    first = by_name(pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)]))
    assert {r["status"] for r in first.values()} == {"indexed"}
    chunks = sum(r["chunks"] for r in first.values())
    assert count_vectors(milvus_server, "server_test") == chunks  # flushed by the flow

    indexed_at = time.monotonic()
    config = load_config(RagConfig, "configs/rag.yaml", overrides)
    sources = retrieval.retrieve("What is the capital of Finland?", config, k=3)
    assert sources[0]["source"].endswith("multicolumn.pdf") and "Helsinki" in sources[0]["text"]

    # Bounded reads see a snapshot at most the server's graceful time (5 s) old: past it, the same
    # answer, without waiting for the server's next time tick.
    bounded = load_config(RagConfig, "configs/rag.yaml", [*overrides, "store.read_consistency=bounded"])
    assert retrieval.open_index(bounded)[0].search_kwargs == {"consistency_level": "Bounded"}
    time.sleep(max(0.0, 6 - (time.monotonic() - indexed_at)))
    sources = retrieval.retrieve("What is the capital of Finland?", bounded, k=3)
    assert sources[0]["source"].endswith("multicolumn.pdf") and "Helsinki" in sources[0]["text"]

    (docs / "crazyones-pdfa.pdf").unlink()
    second = by_name(pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)]))
    assert second["multicolumn.pdf"]["status"] == "unchanged"
    assert second["crazyones-pdfa.pdf"]["status"] == "deleted"
    assert count_vectors(milvus_server, "server_test") == first["multicolumn.pdf"]["chunks"]
