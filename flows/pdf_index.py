"""`pdf-index`: index PDFs (files, folders, URLs) for RAG, incrementally: unchanged documents are skipped.

    expand_sources → fetch → extract → chunk (documents concurrently) → embed_and_upsert → delete_missing → report

    python -m flows.pdf_index --source https://example.org/paper.pdf --source ./docs/ [--set chunk.size=800] [--json]
    prefect deployment run pdf-index/nightly-reindex          (with the local stack up; also runs on its cron)

Each document ends as indexed, unchanged, replaced, deleted or failed (with the reason). The run
fails only when no document could be indexed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core import secrets, tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary, table
from tasks.core.steps import step
from tasks.rag import indexing, pdfs, vectorstores
from tasks.rag.indexing import DocumentReport, PdfIndexConfig

FLOW = "pdf-index"
DEFAULT_CONFIG = "configs/pdf_index.yaml"
INDEXED = ("indexed", "unchanged", "replaced")


@dataclass
class Outcome:
    """What one stage did to one document: its value, or why the document cannot go on."""

    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def per_document(fn: Callable) -> Callable[..., Outcome]:
    """A stage that reports a bad document (PdfError) as a value, so the other documents go on."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Outcome:
        started = time.perf_counter()
        try:
            return Outcome(fn(*args, **kwargs), None, time.perf_counter() - started)
        except pdfs.PdfError as error:
            return Outcome(None, str(error), time.perf_counter() - started)

    return run


def _extract(data: bytes, source: str, passwords: dict[str, str], min_chars_per_page: int) -> pdfs.ExtractedPdf:
    return pdfs.extract_pdf(data, source, indexing.password_for(source, passwords), min_chars_per_page)


# Fetching retries inside (with backoff, only what is worth retrying); the other stages are pure.
fetch = step(per_document(pdfs.fetch_pdf), name="fetch")
extract = step(per_document(_extract), name="extract")
chunk = step(per_document(indexing.chunk_document), name="chunk")
# index() embeds only the chunks the record store has not seen: embedding happens inside the upsert.
embed_and_upsert = step(per_document(indexing.upsert_document), name="embed_and_upsert")
delete_missing = step(indexing.delete_document, name="delete_missing")


def report_markdown(reports: list[DocumentReport], config: PdfIndexConfig, seconds: float) -> str:
    counts = {status: sum(r.status == status for r in reports) for status in indexing.STATUSES}
    rows = [[r.source, r.status, r.reason, r.pages, r.chunks, f"{r.seconds:.2f}"] for r in reports]
    return "\n\n".join(
        [
            f"# pdf-index: {len(reports)} documents in {seconds:.1f} s",
            ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "nothing to do",
            f"Index: `{vectorstores.index_location(config.store)}` (collection `{config.store.collection}`), "
            f"record store `{vectorstores.records_path(config.store)}`",
            table(["source", "status", "reason", "pages", "chunks", "seconds"], rows),
        ]
    )


def publish_report(reports: list[DocumentReport], config: PdfIndexConfig, seconds: float) -> None:
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_table_artifact(
        key="pdf-index-report",
        table=[r.as_dict() for r in reports],
        description=f"pdf-index: per-document report ({seconds:.1f} s)",
    )
    publish_summary(FLOW, report_markdown(reports, config, seconds))


def log_to_mlflow(reports: list[DocumentReport], config: PdfIndexConfig, seconds: float) -> None:
    import mlflow

    with tracking.start_run(
        FLOW,
        indexing.redacted(config),
        tags={"store.kind": config.store.kind, "store.collection": config.store.collection},
    ):
        metrics = {f"documents_{status}": sum(r.status == status for r in reports) for status in indexing.STATUSES}
        pages = sum(r.pages for r in reports if r.status in ("indexed", "replaced"))
        metrics.update(
            documents=len(reports),
            seconds=seconds,
            pages_indexed=pages,
            chunks=sum(r.chunks for r in reports if r.status in INDEXED),
            pages_per_s=pages / seconds if seconds > 0 else 0.0,
        )
        tracking.log_metrics(metrics)
        mlflow.log_dict([r.as_dict() for r in reports], "report.json")


# Four threads: downloads overlap; pypdf itself holds the GIL, so local files gain little (measured).
@flow(name=FLOW, log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=4))
def pdf_index(
    config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, sources: list[str] | None = None
) -> list[dict]:
    """Index the sources (`sources` replaces the config's list); returns the per-document report."""
    cfg = load_config(PdfIndexConfig, config, overrides)
    if sources:
        cfg.sources = list(sources)
    secrets.install_redaction(*[v for v in cfg.passwords.values() if not v.startswith("env:")])
    started = time.perf_counter()
    documents = pdfs.expand_sources(cfg.sources)
    if not documents:
        raise ValueError(
            f"no sources: pass --source (a PDF, a folder, a glob or an http(s) URL) or set `sources` in {config}"
        )
    embeddings = indexing.make_embeddings(cfg.embeddings)
    vector_store = vectorstores.make_vector_store(cfg.store, embeddings)
    records = vectorstores.records_path(cfg.store)
    record_manager = indexing.make_record_manager(records, cfg.store.collection)
    catalog = indexing.Catalog(records, cfg.store.collection)
    try:
        reports = _index_documents(documents, cfg, vector_store, record_manager, catalog)
        if cfg.index.delete_missing and any(r.status in INDEXED for r in reports):
            for source in sorted(set(catalog.sources()) - set(documents)):
                reports.append(_timed(delete_missing, source, vector_store, record_manager, catalog))
        vectorstores.persist(vector_store)
    finally:
        catalog.close()
        vectorstores.close(vector_store, cfg.store)
    seconds = time.perf_counter() - started
    publish_report(reports, cfg, seconds)
    log_to_mlflow(reports, cfg, seconds)
    if not any(r.status in INDEXED for r in reports):
        reasons = "; ".join(f"{pdfs.display_name(r.source)}: {r.reason}" for r in reports if r.status == "failed")
        raise RuntimeError(f"no document could be indexed ({reasons})")
    return [r.as_dict() for r in reports]


def _timed(stage, *args: Any) -> DocumentReport:
    started = time.perf_counter()
    report = stage(*args)
    report.seconds = time.perf_counter() - started
    return report


def _index_documents(
    documents: list[str], cfg: PdfIndexConfig, vector_store, record_manager, catalog: indexing.Catalog
) -> list[DocumentReport]:
    reports: dict[str, DocumentReport] = {}
    seconds = {source: 0.0 for source in documents}

    def failed(source: str, outcome: Outcome) -> bool:
        seconds[source] += outcome.seconds
        if outcome.error is None:
            return False
        reports[source] = DocumentReport(source, "failed", outcome.error, seconds=seconds[source])
        return True

    # Fetch, extract and chunk every document concurrently; one stage after the other.
    fetched = dict(zip(documents, fetch.map(documents, unmapped(cfg.fetch)).result()))
    to_extract = []
    for source, outcome in fetched.items():
        if failed(source, outcome):
            continue
        new_fingerprint = indexing.fingerprint(hashlib.sha256(outcome.value).hexdigest(), cfg.chunk, cfg.embeddings)
        if entry := indexing.is_unchanged(catalog, source, new_fingerprint):
            reports[source] = DocumentReport(source, "unchanged", "", entry.pages, entry.chunks, seconds[source])
        else:
            to_extract.append((source, new_fingerprint))
    sources = [source for source, _ in to_extract]
    extracted = extract.map(
        [fetched[s].value for s in sources], sources, unmapped(cfg.passwords), unmapped(cfg.index.min_chars_per_page)
    ).result()
    fetched.clear()  # the PDFs' bytes are not needed any more
    ready = [(s, fp, o) for (s, fp), o in zip(to_extract, extracted) if not failed(s, o)]
    chunked = chunk.map([o.value for _, _, o in ready], unmapped(cfg.chunk)).result()
    # One writer: the store and the record manager are updated one document at a time.
    for (source, new_fingerprint, doc), chunks in zip(ready, chunked):
        if failed(source, chunks):
            continue
        upserted = embed_and_upsert(doc.value, chunks.value, new_fingerprint, vector_store, record_manager, catalog)
        if failed(source, upserted):
            continue
        report = upserted.value
        report.seconds = seconds[source]
        reports[source] = report
    return [reports[source] for source in documents]


def print_report(reports: list[dict]) -> None:
    width = max([len(pdfs.display_name(r["source"])) for r in reports] + [8])
    for r in reports:
        reason = f"  ({r['reason']})" if r["reason"] else ""
        print(
            f"{pdfs.display_name(r['source']):{width}}  {r['status']:9}  {r['pages']:4} pages  "
            f"{r['chunks']:5} chunks  {r['seconds']:7.2f} s{reason}"
        )


def add_arguments(parser) -> None:
    parser.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        metavar="PDF|FOLDER|GLOB|URL",
        help="what to index (repeatable); replaces the config's sources",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def show(reports: list[dict], args) -> None:
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print_report(reports)


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        pdf_index,
        PdfIndexConfig,
        DEFAULT_CONFIG,
        argv,
        description=__doc__.splitlines()[0],
        add_arguments=add_arguments,
        flow_kwargs=lambda args, parser: {"sources": args.sources or None},
        show=show,
    )


if __name__ == "__main__":
    sys.exit(main())
