"""Service faults injected for real: a Milvus server restarted in the middle of a query session, and
a failed flow run whose state and reason the Prefect server (what its UI shows) and the run's summary
artifact both carry. Retries are configured on the tasks that do I/O, and only I/O errors retry.

(An unreachable MLflow server at the start of a run is in tests/training/test_faults_training.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tasks.core.config import load_config
from tasks.rag import chunking, embeddings, indexing, pdfs, retrieval, stores
from tasks.rag.catalog import Catalog
from tasks.rag.config import PdfIndexConfig, RagConfig
from tests.support.processes import ROOT, child_env, run_flow, wait_for
from tests.support.rag import count_vectors

pytestmark = pytest.mark.timeout(500)

# Leases of the server's components: a starved server on 2 loaded cores missed the default 30 s
# (tests/rag/test_milvus_server.py uses 120); a crashed one cannot restart before they expire.
SESSION_TTL_S = 60
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")


@pytest.fixture
def milvus_server(tmp_path):
    """A real Milvus standalone server (PyPI `milvus`) on this machine, as tests/rag/test_milvus_server.py starts it."""
    import milvus

    config = milvus.MilvusServerConfig(data_dir=str(tmp_path / "milvus-data"))
    config.extra_configs = {f"{component}.ip": "127.0.0.1" for component in COMPONENTS}
    config.extra_configs.update({"common.session.ttl": SESSION_TTL_S, "queryCoord.heartbeatAvailableInterval": 60000})
    server = milvus.MilvusServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def index_one_pdf(path, overrides: list[str]) -> int:
    """Index one PDF with the flow's own functions; returns its chunk count."""
    config = load_config(PdfIndexConfig, "configs/pdf_index.yaml", overrides)
    source = str(path.resolve())
    doc = pdfs.extract_pdf(path.read_bytes(), source)
    chunks = chunking.chunk_document(doc, config.chunk)
    store = stores.open_store(config.store, embeddings.make_embeddings(config.embeddings))
    records = stores.records_url(config.store)
    catalog = Catalog(records, config.store.collection)
    fingerprint = indexing.fingerprint(doc.sha256, config.chunk, config.embeddings)
    report = indexing.upsert_document(
        doc, chunks, fingerprint, store.vectors, indexing.make_record_manager(records, config.store.collection), catalog
    )
    store.flush()  # flushed: this is what must survive the restart
    catalog.close()
    assert report.status == "indexed"
    return len(chunks)


def crash_and_restart(server, session_ttl_s: int = SESSION_TTL_S) -> None:
    """SIGKILL the server process, then start it again on the same data and ports.

    A killed Milvus leaves its coordinators' sessions in etcd, and a restart fails ("Register
    failed ... CompareAndSwap") until those leases expire: wait them out first. (A SIGTERM is no
    quicker: under load the server ignored it for over two minutes.)
    """
    server.server_proc.kill()
    server.server_proc.wait(30)
    server.server_proc = None
    for handle in server.proc_fds.values():
        handle.close()
    server.proc_fds.clear()
    time.sleep(session_ttl_s + 5)
    server.start()


def answers(sources: list[dict]) -> list[tuple[str, int, str]]:
    return [(s["source"], s["page"], s["text"]) for s in sources]


@pytest.mark.slow
def test_queries_resume_after_the_milvus_server_restarts(milvus_server, sample_data, tmp_path):
    url = f"http://127.0.0.1:{milvus_server.config.get('proxy_port')}"
    overrides = [f"store.uri={url}", "store.collection=restart_test", f"store.records={tmp_path / 'records.db'}"]
    chunks = index_one_pdf(sample_data / "pdfs" / "multicolumn.pdf", overrides)
    config = load_config(RagConfig, "configs/rag.yaml", overrides)
    question = "What is the capital of Finland?"
    before = retrieval.retrieve(question, config, k=3)  # the session's store and client are cached from here on
    assert "Helsinki" in before[0]["text"]

    crash_and_restart(milvus_server)
    assert f"http://127.0.0.1:{milvus_server.config.get('proxy_port')}" == url  # the same address as before

    def query_again():
        try:
            return retrieval.retrieve(question, config, k=3)
        except Exception:
            return None

    started = time.monotonic()
    after = wait_for(query_again, 240, "a query to succeed after the restart", interval=2)
    assert answers(after) == answers(before)  # the same session, the same answer
    assert count_vectors(url, "restart_test") == chunks  # nothing flushed was lost
    print(f"\nmilvus restart: queries answered again {time.monotonic() - started:.1f} s after the server was back")


def _prefect_state_and_artifact(env: dict, flow_name: str) -> dict:
    code = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowFilter, FlowFilterName
async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[sys.argv[1]])))
        run = max(runs, key=lambda r: r.created)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[sys.argv[1] + "-summary"])))
        mine = [a for a in artifacts if a.flow_run_id == run.id]
        print(json.dumps({"state": run.state.type.value, "message": run.state.message,
                          "artifact": mine[-1].data if mine else None}))
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", code, flow_name], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_failed_run_shows_its_state_and_reason_in_prefect_and_its_summary(
    prefect_server,
    tiny_model_dir,
    tmp_path,
):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"instruction": f"Say {i}", "output": f"{i}."}) + "\n" for i in range(20))
        + json.dumps({"instruction": "no output"})
        + "\n"
    )
    env = child_env(prefect_server, tmp_path / "data")
    argv = [
        "--config",
        "configs/lora_demo.yaml",
        f"--set=model.name={tiny_model_dir}",
        f"--set=data.train={rows}",
        "--set=data.on_bad_rows=fail",
        "--set=train.max_steps=2",
        f"--set=publish.uri=file://{tmp_path / 'out'}",
    ]
    assert run_flow("lora_finetune", argv, env, tmp_path / "run.log") == 1
    reason = "rows.jsonl row 21: missing field 'output'"
    assert reason in (tmp_path / "run.log").read_text()

    seen = _prefect_state_and_artifact(env, "lora-finetune")
    assert seen["state"] == "FAILED"
    assert "DataError" in seen["message"] and "1 malformed row(s)" in seen["message"]
    assert seen["artifact"].startswith("# lora-finetune: FAILED")
    assert "**Reason:** DataError: 1 malformed row(s)" in seen["artifact"] and reason in seen["artifact"]
    assert not (tmp_path / "out").exists()


def test_retries_are_configured_where_the_work_is_io():
    from flows import dpo_finetune, lora_finetune, shared_steps
    from tasks.core.reporting import retry_on_io

    # Both training flows publish and verify through flows/shared_steps.py.
    io_tasks = [
        lora_finetune.load_dataset,
        lora_finetune.load_base_model,
        dpo_finetune.load_preferences,
        dpo_finetune.load_policy,
        shared_steps.push_to_hub,
        shared_steps.reload_and_verify,
    ]
    for io_task in io_tasks:
        assert io_task.retries >= 2 and io_task.retry_condition_fn is retry_on_io, io_task.name
    # Compute is never retried: a second try of a failed training step would fail the same way.
    assert lora_finetune.train.retries == 0 and dpo_finetune.train_dpo.retries == 0


@pytest.mark.parametrize(
    "error, retried",
    [
        (ConnectionError("connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError("No space left on device"), True),
        (ValueError("lora.r: must be a positive integer"), False),
        (KeyError("output"), False),
    ],
)
def test_only_io_errors_are_retried(error, retried):
    from prefect.states import Failed

    from tasks.core.config import ConfigError
    from tasks.core.reporting import retry_on_io

    assert retry_on_io(None, None, Failed(data=error)) is retried  # the state a failed task run ends in
    assert retry_on_io(None, None, Failed(data=ConfigError("train.max_steps: expected an integer"))) is False
