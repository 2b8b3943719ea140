"""`pdf-index`: index PDFs (files, folders, URLs) for RAG, incrementally: unchanged documents are skipped.

    expand_sources → fetch → extract → chunk (documents concurrently) → embed_and_upsert → delete_missing → report
    index.runner=dask: expand_sources → index_document (each on a Dask worker) → delete_missing → report

    python -m flows.pdf_index --source https://example.org/paper.pdf --source ./docs/ [--set chunk.size=800] [--json]
    prefect deployment run pdf-index/nightly-reindex          (with the local stack up; also runs on its cron)

Each document ends as indexed, unchanged, replaced, deleted or failed (with the reason). The run
fails only when no document could be indexed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core import secrets, tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary
from tasks.core.steps import step
from tasks.rag import chunking, fanout, indexing, pdfs, pipeline, report
from tasks.rag.config import PdfIndexConfig, redacted, url_password
from tasks.rag.indexing import INDEXED, DocumentReport
from tasks.rag.pipeline import IndexRun, IndexTarget, Outcome, per_document

FLOW = "pdf-index"
DEFAULT_CONFIG = "configs/pdf_index.yaml"

# Fetching retries inside (with backoff, only what is worth retrying); the other stages are pure.
fetch = step(per_document(pdfs.fetch_pdf), name="fetch")
extract = step(per_document(pipeline.extract_document), name="extract")
chunk = step(per_document(chunking.chunk_document), name="chunk")
# index() embeds only the chunks the record store has not seen: embedding happens inside the upsert.
embed_and_upsert = step(per_document(indexing.upsert_document), name="embed_and_upsert")
delete_missing = step(indexing.delete_document, name="delete_missing")
# index.runner=dask: one task per document, every stage on a worker (Dask reruns it if its worker dies).
index_document = step(fanout.index_document, name="index_document")


def publish_report(run: IndexRun) -> None:
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_table_artifact(
        key="pdf-index-report",
        table=run.as_dicts(),
        description=f"pdf-index: per-document report ({run.seconds:.1f} s)",
    )
    publish_summary(FLOW, report.index_markdown(run))


def log_to_mlflow(run: IndexRun, config: PdfIndexConfig) -> None:
    import mlflow

    tags = {"store.kind": config.store.kind, "store.collection": config.store.collection}
    with tracking.start_run(FLOW, redacted(config), tags=tags):
        tracking.log_metrics(run.metrics())
        mlflow.log_dict(run.as_dicts(), "report.json")


# Four threads: downloads overlap; pypdf itself holds the GIL, so local files gain little.
@flow(name=FLOW, log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=4))
def pdf_index(
    config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, sources: list[str] | None = None
) -> list[dict]:
    """Index the sources (`sources` replaces the config's list); returns the per-document report."""
    cfg = load_config(PdfIndexConfig, config, overrides)
    if sources:
        cfg.sources = list(sources)
    secrets.install_redaction(
        *[v for v in cfg.passwords.values() if not v.startswith("env:")], url_password(cfg.store.records) or ""
    )
    documents = pdfs.expand_sources(cfg.sources)
    if not documents:
        raise ValueError(
            f"no sources: pass --source (a PDF, a folder, a glob or an http(s) URL) or set `sources` in {config}"
        )
    if cfg.index.address:
        fanout.check_scheduler(cfg.index.address)
    started = time.perf_counter()
    with pipeline.opened_target(cfg) as target:
        reports = (
            index_each(documents, cfg, target) if cfg.index.runner == "local" else index_on_cluster(documents, cfg)
        )
        if cfg.index.delete_missing and any(r.status in INDEXED for r in reports):
            for source in sorted(set(target.catalog.sources()) - set(documents)):
                reports.append(timed_delete(source, target))
        target.flush()  # durable before the run reports success
    run = pipeline.index_run(reports, time.perf_counter() - started, cfg)
    publish_report(run)
    log_to_mlflow(run, cfg)
    if not run.indexed_any():
        raise RuntimeError(f"no document could be indexed ({run.failures()})")
    return run.as_dicts()


def timed_delete(source: str, target: IndexTarget) -> DocumentReport:
    started = time.perf_counter()
    report = delete_missing(source, target.store.vectors, target.record_manager, target.catalog)
    report.seconds = time.perf_counter() - started
    return report


def index_each(documents: list[str], cfg: PdfIndexConfig, target: IndexTarget) -> list[DocumentReport]:
    """Fetch, extract and chunk every document concurrently, one stage after the other; then write
    them one at a time (the store and the record manager have one writer)."""
    reports: dict[str, DocumentReport] = {}
    seconds = {source: 0.0 for source in documents}

    def failed(source: str, outcome: Outcome) -> bool:
        seconds[source] += outcome.seconds
        if outcome.error is None:
            return False
        reports[source] = DocumentReport(source, "failed", outcome.error, seconds=seconds[source])
        return True

    fetched = dict(zip(documents, fetch.map(documents, unmapped(cfg.fetch)).result()))
    to_extract = []
    for source, outcome in fetched.items():
        if failed(source, outcome):
            continue
        new_fingerprint = indexing.fingerprint(hashlib.sha256(outcome.value).hexdigest(), cfg.chunk, cfg.embeddings)
        if entry := indexing.is_unchanged(target.catalog, source, new_fingerprint):
            reports[source] = DocumentReport(source, "unchanged", "", entry.pages, entry.chunks, seconds[source])
        else:
            to_extract.append((source, new_fingerprint))
    sources = [source for source, _ in to_extract]
    if sources and cfg.index.extract_processes > 1:
        # The model loads while other processes extract the pages (in this process both would
        # wait for the same interpreter lock).
        target.warm_up()
    extracted = extract.map(
        [fetched[s].value for s in sources], sources, unmapped(cfg.passwords), unmapped(cfg.index)
    ).result()
    fetched.clear()  # the PDFs' bytes are not needed any more
    ready = [(s, fp, o) for (s, fp), o in zip(to_extract, extracted) if not failed(s, o)]
    chunked = chunk.map([o.value for _, _, o in ready], unmapped(cfg.chunk)).result()
    for (source, new_fingerprint, doc), chunks in zip(ready, chunked):
        if failed(source, chunks):
            continue
        upserted = embed_and_upsert(
            doc.value, chunks.value, new_fingerprint, target.store.vectors, target.record_manager, target.catalog
        )
        if failed(source, upserted):
            continue
        report = upserted.value
        report.seconds = seconds[source]
        reports[source] = report
    return [reports[source] for source in documents]


def index_on_cluster(documents: list[str], cfg: PdfIndexConfig) -> list[DocumentReport]:
    """Every document on a Dask worker, all its stages there (tasks/rag/fanout.py)."""
    from prefect_dask import DaskTaskRunner

    if cfg.index.address:
        runner = DaskTaskRunner(address=cfg.index.address)
    else:
        # Processes, one thread each: pypdf and tokenizing hold the GIL.
        workers = {"n_workers": cfg.index.workers, "threads_per_worker": 1, "processes": True}
        runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=workers)
    with runner:
        futures = runner.map(index_document, {"source": documents, "cfg": unmapped(cfg)})
        return [future.result() for future in futures]


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
        report.print_index([DocumentReport(**r) for r in reports])


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        pdf_index,
        PdfIndexConfig,
        DEFAULT_CONFIG,
        argv,
        add_arguments=add_arguments,
        flow_kwargs=lambda args, parser: {"sources": args.sources or None},
        show=show,
    )


if __name__ == "__main__":
    sys.exit(main())
