"""RAG state in shared services: the record store (record manager, catalog, keyword index) on a real
PostgreSQL, the vectors on a real Milvus server, indexers in separate processes and on Dask workers.

PostgreSQL (initdb + pg_ctl, tests/fixtures/services.py) runs for the session; each test gets a
database of its own. The Milvus server runs for this module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tasks.core.config import ConfigError, load_config
from tasks.rag import chunking, pdfs, retrieval
from tasks.rag.catalog import Catalog, RecordStoreUnavailable
from tasks.rag.config import PdfIndexConfig, RagConfig
from tests.support.chat import free_port
from tests.support.postgres import PASSWORD
from tests.support.processes import child_env, kill_group, mlflow_runs, run_flow, start_flow, wait_for
from tests.support.rag import GOOD_PDFS, by_name, milvus_rows, pdf_folder

pytestmark = pytest.mark.timeout(900)  # flows in child processes and Dask workers on a loaded 2-core machine

CONFIG = "configs/pdf_index.yaml"


def postgres_overrides(url: str, collection: str, store_uri: str) -> list[str]:
    return [f"store.uri={store_uri}", f"store.collection={collection}", f"store.records={url}"]


def completed(url: str, collection: str) -> list[str]:
    """The documents the shared catalog marks complete, read with a connection of its own."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as db:
            rows = db.execute(
                "SELECT source FROM documents WHERE namespace=%s AND complete=1 ORDER BY source", (collection,)
            )
            return [row[0] for row in rows]
    except psycopg.errors.UndefinedTable:
        return []


def expected_chunk_ids(folder: Path, overrides: list[str]) -> set[str]:
    """What the PDFs in `folder` chunk into, computed here independently of the flow."""
    config = load_config(PdfIndexConfig, CONFIG, overrides)
    ids = set()
    for path in sorted(folder.glob("*.pdf")):
        doc = pdfs.extract_pdf(path.read_bytes(), str(path.resolve()))
        ids |= {c.metadata["chunk_id"] for c in chunking.chunk_document(doc, config.chunk)}
    return ids


def flow_report(log: Path) -> list[dict]:
    output = log.read_text()
    return json.loads(output[output.index("[\n") : output.rindex("]") + 1])


def copies(sample_data: Path, folder: Path, count: int, prefix: str = "") -> Path:
    """`count` copies of each good sample PDF under their own names: distinct sources, same text."""
    folder.mkdir(parents=True)
    for copy in range(count):
        for name in GOOD_PDFS:
            shutil.copy(sample_data / "pdfs" / name, folder / f"{prefix}{copy}-{name}")
    return folder


# --- the record store on PostgreSQL -------------------------------------------------------------


def test_record_manager_and_keyword_index_on_postgres(
    prefect_harness, postgres_server, sample_data, tmp_path, isolated_data_dir
):
    from flows.pdf_index import pdf_index

    url = postgres_server.create_database("records_one")
    docs = pdf_folder(sample_data, tmp_path / "docs", ["multicolumn.pdf", "crazyones-pdfa.pdf", "encrypted.pdf"])
    overrides = postgres_overrides(url, "pg_records", str(tmp_path / "index.db"))
    first = by_name(pdf_index(config=CONFIG, overrides=overrides, sources=[str(docs)]))
    assert {n: r["status"] for n, r in first.items()} == {
        "multicolumn.pdf": "indexed",
        "crazyones-pdfa.pdf": "indexed",
        "encrypted.pdf": "failed",
    }
    assert [Path(s).name for s in completed(url, "pg_records")] == ["crazyones-pdfa.pdf", "multicolumn.pdf"]
    assert not (tmp_path / "index-records.db").exists()  # nothing went to the SQLite default
    logged = mlflow_runs(isolated_data_dir, "pdf-index")[-1].data.params
    assert logged["store.records"] == url.replace(PASSWORD, "***") and PASSWORD not in json.dumps(logged)

    try:
        for mode in ("keyword", "hybrid"):
            config = load_config(RagConfig, "configs/rag.yaml", [*overrides, f"retrieval.mode={mode}"])
            found = retrieval.retrieve("What is the capital of Finland?", config, k=3)
            assert found[0]["source"].endswith("multicolumn.pdf") and "Helsinki" in found[0]["text"], mode
    finally:
        retrieval.close_index()  # the Lite file is reopened by the next run

    (docs / "crazyones-pdfa.pdf").unlink()
    second = by_name(pdf_index(config=CONFIG, overrides=overrides, sources=[str(docs)]))
    assert second["multicolumn.pdf"]["status"] == "unchanged"
    assert second["crazyones-pdfa.pdf"]["status"] == "deleted"
    catalog = Catalog(url.replace("postgresql://", "postgresql+psycopg://"), "pg_records")
    try:
        assert all(
            doc.metadata["source"].endswith("multicolumn.pdf")
            for doc, _ in catalog.keyword_search("crazy ones misfits", 10)
        )
    finally:
        catalog.close()


def test_an_unreachable_record_store_is_named_without_its_password(postgres_server):
    url = f"postgresql+psycopg://ftllm:{PASSWORD}@127.0.0.1:{free_port()}/records"
    with pytest.raises(RecordStoreUnavailable) as raised:
        Catalog(url, "any")
    message = str(raised.value)
    assert "postgresql+psycopg://ftllm:***@127.0.0.1" in message and "cannot be reached" in message
    assert PASSWORD not in message

    wrong = postgres_server.url().replace(PASSWORD, "not-the-password")
    with pytest.raises(RecordStoreUnavailable, match="authentication failed") as raised:
        Catalog(wrong.replace("postgresql://", "postgresql+psycopg://"), "any")
    assert "not-the-password" not in str(raised.value)

    with pytest.raises(ConfigError, match=r"store.records: expected a file path or a .*mysql:// URL"):
        load_config(PdfIndexConfig, CONFIG, ["store.records=mysql://db/records"])


def test_a_dask_runner_needs_a_server_store():
    with pytest.raises(ConfigError, match="index.runner: dask workers write to the store themselves"):
        load_config(PdfIndexConfig, CONFIG, ["index.runner=dask"])
    with pytest.raises(ConfigError, match="index.address: expected tcp://host:port"):
        load_config(PdfIndexConfig, CONFIG, ["index.address=127.0.0.1:8786"])


def test_an_unreachable_dask_scheduler_fails_the_run_at_start(prefect_harness, sample_data, tmp_path):
    from flows.pdf_index import pdf_index

    address = f"tcp://127.0.0.1:{free_port()}"
    overrides = ["store.uri=http://127.0.0.1:19530", "index.runner=dask", f"index.address={address}"]
    docs = pdf_folder(sample_data, tmp_path / "docs", ["multicolumn.pdf"])
    with pytest.raises(ConnectionError, match=f"index.address: the Dask scheduler {address} cannot be reached"):
        pdf_index(config=CONFIG, overrides=overrides, sources=[str(docs)])


# --- two indexers, one Milvus server, one PostgreSQL ------------------------------------------


@pytest.mark.slow
def test_two_indexers_in_separate_processes_share_one_index(
    prefect_server, postgres_server, milvus_server, sample_data, tmp_path
):
    url = postgres_server.create_database("records_two")
    overrides = postgres_overrides(url, "shared_two", milvus_server)
    first = pdf_folder(sample_data, tmp_path / "first", ["multicolumn.pdf", "pdflatex-4-pages.pdf"])
    second = pdf_folder(sample_data, tmp_path / "second", ["crazyones-pdfa.pdf", "habibi.pdf"])
    sets = [f"--set={o}" for o in overrides]
    processes = [
        start_flow(
            "pdf_index",
            # Each run indexes only its own sources; deleting the other's would be wrong here.
            ["--config", CONFIG, "--source", str(folder), "--json", *sets, "--set=index.delete_missing=false"],
            child_env(prefect_server, tmp_path / f"data-{folder.name}"),
            tmp_path / f"{folder.name}.log",
        )
        for folder in (first, second)
    ]
    try:
        for process, folder in zip(processes, (first, second)):
            assert process.wait(600) == 0, (tmp_path / f"{folder.name}.log").read_text()[-3000:]
    finally:
        for process in processes:
            kill_group(process)
    for folder in (first, second):
        assert {r["status"] for r in flow_report(tmp_path / f"{folder.name}.log")} == {"indexed"}

    rows = milvus_rows(milvus_server, "shared_two")
    ids = [row["chunk_id"] for row in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_chunk_ids(first, overrides) | expected_chunk_ids(second, overrides)
    config = load_config(RagConfig, "configs/rag.yaml", overrides)
    try:
        helsinki = retrieval.retrieve("What is the capital of Finland?", config, k=3)
        crazy = retrieval.retrieve("Here's to the crazy ones, the misfits, the rebels", config, k=3)
    finally:
        retrieval.close_index()
    assert helsinki[0]["source"].endswith("first/multicolumn.pdf")  # indexed by the first process
    assert crazy[0]["source"].endswith("second/crazyones-pdfa.pdf")  # and by the second


@pytest.mark.slow
def test_a_killed_indexer_leaves_no_duplicates_on_the_shared_services(
    prefect_server, postgres_server, milvus_server, sample_data, tmp_path
):
    url = postgres_server.create_database("records_killed")
    overrides = postgres_overrides(url, "shared_killed", milvus_server)
    docs = copies(sample_data, tmp_path / "docs", 3)
    argv = ["--config", CONFIG, "--source", str(docs), "--json", *[f"--set={o}" for o in overrides]]
    env = child_env(prefect_server, tmp_path / "data")
    process = start_flow("pdf_index", argv, env, tmp_path / "killed.log")
    try:
        wait_for(lambda: len(completed(url, "shared_killed")) >= 3 or process.poll() is not None, 400, "3 documents")
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        kill_group(process)
    done_at_kill = len(completed(url, "shared_killed"))
    assert 3 <= done_at_kill < 15, done_at_kill

    assert run_flow("pdf_index", argv, env, tmp_path / "rerun.log", timeout=600) == 0, (
        tmp_path / "rerun.log"
    ).read_text()[-3000:]
    statuses = [r["status"] for r in flow_report(tmp_path / "rerun.log")]
    assert statuses.count("unchanged") >= done_at_kill - 1 and set(statuses) <= {"unchanged", "indexed"}
    ids = [row["chunk_id"] for row in milvus_rows(milvus_server, "shared_killed")]
    assert len(ids) == len(set(ids)), "duplicate chunks in the store"
    assert set(ids) == expected_chunk_ids(docs, overrides), "orphaned or missing chunks"


# --- fanned out on Dask ----------------------------------------------------------------------


def statuses_and_chunks(log: Path) -> dict[str, tuple[str, int]]:
    return {Path(r["source"]).name: (r["status"], r["chunks"]) for r in flow_report(log)}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two Dask runs: each worker process loads torch and the embedding model
def test_dask_workers_index_like_the_serial_run_and_a_killed_worker_loses_nothing(
    prefect_server, postgres_server, milvus_server, sample_data, tmp_path
):
    import psutil

    docs = pdf_folder(sample_data, tmp_path / "docs")  # good and bad PDFs: failures must match too
    env = child_env(prefect_server, tmp_path / "data")
    serial = ["--config", CONFIG, "--source", str(docs), "--json", f"--set=store.uri={tmp_path / 'serial.db'}"]
    assert run_flow("pdf_index", serial, env, tmp_path / "serial.log", timeout=600) == 0
    url = postgres_server.create_database("records_dask")
    overrides = [*postgres_overrides(url, "shared_dask", milvus_server), "index.runner=dask", "index.workers=2"]
    fanned = ["--config", CONFIG, "--source", str(docs), "--json", *[f"--set={o}" for o in overrides]]
    assert run_flow("pdf_index", fanned, env, tmp_path / "dask.log", timeout=600) == 0, (
        tmp_path / "dask.log"
    ).read_text()[-3000:]
    assert statuses_and_chunks(tmp_path / "dask.log") == statuses_and_chunks(tmp_path / "serial.log")

    # A worker SIGKILLed mid-run: Dask reruns its task on the worker left (or the restarted one);
    # the document it was writing is redone from its incomplete catalog mark, so none is lost.
    many = copies(sample_data, tmp_path / "many", 2)
    overrides[1] = "store.collection=shared_dask_kill"
    fanned = ["--config", CONFIG, "--source", str(many), "--json", *[f"--set={o}" for o in overrides]]
    process = start_flow("pdf_index", fanned, env, tmp_path / "killed.log")
    try:
        wait_for(lambda: len(completed(url, "shared_dask_kill")) >= 2 or process.poll() is not None, 600, "2 documents")
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        children = psutil.Process(process.pid).children(recursive=True)
        workers = [p for p in children if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) >= 2, [p.cmdline() for p in children]
        workers[-1].kill()
        assert process.wait(900) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        kill_group(process)
    assert "was killed by signal 9" in (tmp_path / "killed.log").read_text()
    statuses = {status for status, _ in statuses_and_chunks(tmp_path / "killed.log").values()}
    assert statuses <= {"unchanged", "indexed"}, statuses
    assert len(completed(url, "shared_dask_kill")) == 10
    ids = [row["chunk_id"] for row in milvus_rows(milvus_server, "shared_dask_kill")]
    assert len(ids) == len(set(ids)), "duplicate chunks in the store"
    assert set(ids) == expected_chunk_ids(many, overrides), "lost or orphaned chunks"


# --- from a Milvus Lite file to the server ----------------------------------------------------


@pytest.mark.slow
def test_migrating_a_lite_index_to_the_server(prefect_harness, milvus_server, sample_data, tmp_path, capsys):
    import subprocess
    import sys

    from flows.pdf_index import pdf_index
    from tasks.rag import migrate

    docs = pdf_folder(sample_data, tmp_path / "docs", ["multicolumn.pdf", "crazyones-pdfa.pdf"])
    lite = tmp_path / "index.db"
    indexed = by_name(pdf_index(config=CONFIG, overrides=[f"store.uri={lite}"], sources=[str(docs)]))
    chunks = sum(r["chunks"] for r in indexed.values())
    argv = ["--lite", str(lite), "--server", milvus_server]  # same collection name: the record store goes on

    # A Lite file serves one process: a second one is told so, and nothing is copied.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pymilvus import MilvusClient; c = MilvusClient({str(lite)!r}); "
            "print('holding', flush=True); import time; time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert migrate.main(argv) == 2
        assert "another process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait(30)

    assert migrate.main(argv) == 0
    assert f"copied {chunks} rows" in capsys.readouterr().out
    assert len(milvus_rows(milvus_server, "pdf_chunks")) == chunks
    # Same ids, same record store: the server index answers and a reindex finds nothing to do.
    overrides = [
        f"store.uri={milvus_server}",
        f"store.records={tmp_path / 'index-records.db'}",
    ]
    config = load_config(RagConfig, "configs/rag.yaml", overrides)
    try:
        found = retrieval.retrieve("What is the capital of Finland?", config, k=3)
    finally:
        retrieval.close_index()
    assert found[0]["source"].endswith("multicolumn.pdf") and "Helsinki" in found[0]["text"]
    again = by_name(pdf_index(config=CONFIG, overrides=overrides, sources=[str(docs)]))
    assert {r["status"] for r in again.values()} == {"unchanged"}

    assert migrate.main(argv) == 2  # the collection holds rows now
    assert (
        f"collection 'pdf_chunks' on {milvus_server} already holds {chunks} rows; pass --replace"
        in capsys.readouterr().err
    )
    assert migrate.main([*argv, "--replace"]) == 0
    assert len(milvus_rows(milvus_server, "pdf_chunks")) == chunks
