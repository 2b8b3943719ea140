"""The same indexing and retrieval code against a real Milvus standalone server (PyPI `milvus`).

The server is started on this machine for the module and stopped at its end; rows are flushed
before it stops (a killed server loses unflushed rows). Milvus 2.3's gRPC services listen on all
interfaces whatever their `ip` setting says (that is only the address they advertise); its etcd
is bound to 127.0.0.1 here, and the tests talk to it on 127.0.0.1 only.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from tasks.core.config import load_config
from tasks.rag import retrieval
from tasks.rag.config import RagConfig
from tests.support.rag import by_name, count_vectors, pdf_folder

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")


def wait_until_healthy(server, timeout_s: float) -> None:
    """Poll /healthz; fail at once, with the server's own reason, if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.server_proc.poll() is not None:
            log = Path(server.config.base_data_dir) / "logs" / "milvus-stdout.log"
            errors = [line for line in log.read_text(errors="replace").splitlines() if "[ERROR]" in line]
            pytest.fail(
                "the Milvus server exited while starting (a second Milvus on this machine holds its fixed "
                f"etcd ports 2379/2380?): {errors[-1][:400] if errors else 'see ' + str(log)}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.webservice_port}/healthz", timeout=5) as reply:
                if b"OK" in reply.read():
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the Milvus server did not become healthy within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    try:
        import milvus
    except ImportError:
        pytest.fail("the Milvus server package is not installed: pip install milvus==2.3.5")
    config = milvus.MilvusServerConfig(data_dir=str(tmp_path_factory.mktemp("milvus-server")))
    config.extra_configs = {f"{component}.ip": "127.0.0.1" for component in COMPONENTS}
    # On a loaded 2-core machine the components can miss their etcd lease (30 s) and report
    # "service not ready: Abnormal"; longer leases keep a starved server alive.
    config.extra_configs.update({"common.session.ttl": 120, "queryCoord.heartbeatAvailableInterval": 60000})
    server = milvus.MilvusServer(config, wait_for_started=False)
    server.start()  # Popen runs the milvus binary itself, so stop() ends the real server
    try:
        wait_until_healthy(server, timeout_s=420)  # 5-20 s when idle, minutes on a loaded machine
    except BaseException:
        server.stop()
        raise
    try:
        yield f"http://127.0.0.1:{server.config.get('proxy_port')}"
    finally:
        server.stop()


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

    config = load_config(RagConfig, "configs/rag.yaml", overrides)
    sources = retrieval.retrieve("What is the capital of Finland?", config, k=3)
    assert sources[0]["source"].endswith("multicolumn.pdf") and "Helsinki" in sources[0]["text"]

    (docs / "crazyones-pdfa.pdf").unlink()
    second = by_name(pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)]))
    assert second["multicolumn.pdf"]["status"] == "unchanged"
    assert second["crazyones-pdfa.pdf"]["status"] == "deleted"
    assert count_vectors(milvus_server, "server_test") == first["multicolumn.pdf"]["chunks"]
