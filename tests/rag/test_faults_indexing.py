"""Indexing faults injected for real: sources that misbehave over HTTP (tests/doubles/flaky_http.py), and a
`pdf-index` process SIGKILLed half-way through, then rerun.

The flow runs as a child process against a real Prefect server; the index is a Milvus Lite file
whose rows are counted with a client of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tasks.core.config import load_config
from tasks.rag import chunking, pdfs
from tasks.rag.config import PdfIndexConfig
from tasks.rag.pdfs import FetchOptions, PdfError
from tests.doubles.flaky_http import FlakyServer
from tests.support.processes import child_env, kill_group, run_flow, start_flow, wait_for
from tests.support.rag import GOOD_PDFS, milvus_rows

pytestmark = pytest.mark.timeout(600)  # flows in child processes on a loaded 2-core machine

CONFIG = "configs/pdf_index.yaml"
FAST = FetchOptions(timeout_s=1.0, retries=2, backoff_s=0.05, max_mb=1.0)


@pytest.fixture(scope="module")
def paper(sample_data) -> bytes:
    return (sample_data / "pdfs" / "pdflatex-4-pages.pdf").read_bytes()


@pytest.fixture
def flaky(paper):
    with FlakyServer(paper, fail_first=2) as server:
        yield server


# --- single fetches against the misbehaving server --------------------------------------------


def test_a_source_that_fails_twice_is_retried_and_fetched(flaky, paper):
    assert pdfs.fetch_pdf(f"{flaky.url}/flaky/a.pdf", FAST) == paper
    assert flaky.hits["/flaky/a.pdf"] == 3  # two 503s, then the PDF


def test_a_source_that_never_answers_times_out(flaky):
    started = time.monotonic()
    with pytest.raises(PdfError, match=r"timed out after 1 s \(ReadTimeout\) \(gave up after 3 attempts\)"):
        pdfs.fetch_pdf(f"{flaky.url}/hang/a.pdf", FAST)
    assert flaky.hits["/hang/a.pdf"] == 3
    assert time.monotonic() - started < 10  # 3 x 1 s + backoff: bounded, however long the server hangs


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_a_redirect_to_another_scheme_is_refused_at_once(flaky, scheme):
    with pytest.raises(PdfError, match=f"redirected to a non-http\\(s\\) URL, refused .*'{scheme}://'"):
        pdfs.fetch_pdf(f"{flaky.url}/redirect-to/{scheme}", FAST)
    assert flaky.hits[f"/redirect-to/{scheme}"] == 1  # not retried: it would be refused again


def test_a_redirect_within_http_is_followed(flaky, paper):
    assert pdfs.fetch_pdf(f"{flaky.url}/redirect/b.pdf", FAST) == paper


def test_zero_bytes_served_as_a_pdf(flaky):
    with pytest.raises(PdfError, match=r"empty file \(0 bytes\)"):
        pdfs.fetch_pdf(f"{flaky.url}/empty.pdf", FAST)


def test_an_endless_download_stops_at_the_size_limit(flaky):
    started = time.monotonic()
    with pytest.raises(PdfError, match=r"too large: over fetch.max_mb=1 MB"):
        pdfs.fetch_pdf(f"{flaky.url}/endless.pdf", FAST)  # no Content-Length: counted while streaming
    assert time.monotonic() - started < 10


def test_a_truncated_download_is_reported_as_corrupt(flaky):
    data = pdfs.fetch_pdf(f"{flaky.url}/truncated.pdf", FAST)
    with pytest.raises(PdfError, match="corrupt or truncated PDF"):
        pdfs.extract_pdf(data, f"{flaky.url}/truncated.pdf")


# --- the flow ---------------------------------------------------------------------------------


def expected_chunk_ids(folder: Path, overrides: list[str]) -> dict[str, set[str]]:
    """What the current sources chunk into, computed here independently of the flow."""
    config = load_config(PdfIndexConfig, CONFIG, overrides)
    expected = {}
    for path in sorted(folder.glob("*.pdf")):
        source = str(path.resolve())
        chunks = chunking.chunk_document(pdfs.extract_pdf(path.read_bytes(), source), config.chunk)
        expected[source] = {c.metadata["chunk_id"] for c in chunks}
    return expected


def completed(records: Path) -> int:
    if not records.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{records}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM documents WHERE complete=1").fetchone()[0]
    except sqlite3.Error:  # the table does not exist yet, or the writer holds a lock
        return 0


@pytest.mark.slow
def test_killed_indexing_leaves_exactly_the_current_sources_after_a_rerun(prefect_server, sample_data, tmp_path):
    # 15 small documents (the 5 small sample PDFs, 3 copies each under their own names): written
    # one document at a time, so a SIGKILL lands between and inside documents' upserts.
    docs = tmp_path / "docs"
    docs.mkdir()
    for copy in range(3):
        for name in GOOD_PDFS:
            shutil.copy(sample_data / "pdfs" / name, docs / f"{copy}-{name}")
    index_file = tmp_path / "index.db"
    overrides = [f"store.uri={index_file}"]
    records = index_file.with_name("index-records.db")
    argv = ["--config", CONFIG, "--source", str(docs), "--json", *[f"--set={o}" for o in overrides]]
    env = child_env(prefect_server, tmp_path / "data")

    process = start_flow("pdf_index", argv, env, tmp_path / "killed.log")
    try:
        wait_for(lambda: completed(records) >= 3 or process.poll() is not None, 300, "3 indexed documents")
        assert process.poll() is None, (
            f"pdf-index ended before the kill: {(tmp_path / 'killed.log').read_text()[-3000:]}"
        )
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        kill_group(process)
    done_at_kill = completed(records)
    assert 3 <= done_at_kill < 15, done_at_kill

    # Between the runs, two documents leave the sources: one indexed before the kill, one not.
    with sqlite3.connect(records) as db:
        indexed = [row[0] for row in db.execute("SELECT source FROM documents WHERE complete=1 ORDER BY source")]
    gone_indexed = Path(indexed[0])
    gone_pending = next(p for p in sorted(docs.glob("*.pdf")) if str(p.resolve()) not in indexed)
    gone_indexed.unlink()
    gone_pending.unlink()

    assert run_flow("pdf_index", argv, env, tmp_path / "rerun.log") == 0, (tmp_path / "rerun.log").read_text()[-4000:]
    output = (tmp_path / "rerun.log").read_text()
    report = json.loads(output[output.index("[\n") : output.rindex("]") + 1])
    statuses = {Path(r["source"]).name: r["status"] for r in report}
    assert statuses[gone_indexed.name] == "deleted"
    assert sum(s == "unchanged" for s in statuses.values()) >= done_at_kill - 1
    assert all(s in ("unchanged", "indexed", "deleted") for s in statuses.values()), statuses

    expected = expected_chunk_ids(docs, overrides)
    rows = milvus_rows(str(index_file))
    ids = [row["chunk_id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate chunks in the store"
    assert set(ids) == set().union(*expected.values()), "orphaned or missing chunks"
    assert {row["source"] for row in rows} == set(expected)
    print(
        f"\npdf-index: killed after {done_at_kill}/15 documents; rerun left {len(ids)} chunks = "
        f"exactly the chunks of the {len(expected)} current sources"
    )


@pytest.mark.slow
def test_flaky_and_hanging_sources_in_one_run(prefect_server, sample_data, flaky, tmp_path):
    local = tmp_path / "local.pdf"
    shutil.copy(sample_data / "pdfs" / "crazyones-pdfa.pdf", local)
    sources = [f"{flaky.url}/flaky/paper.pdf", f"{flaky.url}/hang/slow.pdf", str(local)]
    argv = [
        "--config",
        CONFIG,
        "--json",
        *[f"--source={s}" for s in sources],
        f"--set=store.uri={tmp_path / 'index.db'}",
        "--set=fetch.timeout_s=1",
        "--set=fetch.retries=2",
        "--set=fetch.backoff_s=0.1",
    ]
    code = run_flow("pdf_index", argv, child_env(prefect_server, tmp_path / "data"), tmp_path / "run.log")
    output = (tmp_path / "run.log").read_text()
    assert code == 0, output[-3000:]
    report = {r["source"]: r for r in json.loads(output[output.index("[\n") : output.rindex("]") + 1])}
    assert report[sources[0]]["status"] == "indexed" and report[sources[0]]["chunks"] > 0
    assert flaky.hits["/flaky/paper.pdf"] == 3
    assert report[sources[1]]["status"] == "failed"
    assert report[sources[1]]["reason"] == "timed out after 1 s (ReadTimeout) (gave up after 3 attempts)"
    assert report[str(local.resolve())]["status"] == "indexed"
    assert {row["source"] for row in milvus_rows(str(tmp_path / "index.db"))} == {sources[0], str(local.resolve())}
