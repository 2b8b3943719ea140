"""`pdf-index`: index PDFs (files, folders, URLs) for RAG, incrementally: unchanged documents are skipped.

    expand_sources → fetch → extract → chunk (documents concurrently) → embed_and_upsert → delete_missing → report

    python -m flows.pdf_index --source https://example.org/paper.pdf --source ./docs/ [--set chunk.size=800] [--json]
    prefect deployment run pdf-index/nightly-reindex          (with the local stack up; also runs on its cron)

Each document ends as indexed, unchanged, replaced, deleted or failed (with the reason). The run
fails only when no document could be indexed.
"""

from __future__ import annotations

import json
import sys

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.core import secrets, tracking
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import publish_summary
from tasks.core.steps import step
from tasks.rag import chunking, indexing, pdfs, pipeline, report
from tasks.rag.config import PdfIndexConfig, redacted
from tasks.rag.indexing import DocumentReport
from tasks.rag.pipeline import IndexRun, per_document

FLOW = "pdf-index"
DEFAULT_CONFIG = "configs/pdf_index.yaml"

# Fetching retries inside (with backoff, only what is worth retrying); the other stages are pure.
STAGES = pipeline.IndexStages(
    fetch=step(per_document(pdfs.fetch_pdf), name="fetch"),
    extract=step(per_document(pipeline.extract_document), name="extract"),
    chunk=step(per_document(chunking.chunk_document), name="chunk"),
    embed_and_upsert=step(per_document(indexing.upsert_document), name="embed_and_upsert"),
    delete_missing=step(indexing.delete_document, name="delete_missing"),
)


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
    documents = pdfs.expand_sources(cfg.sources)
    if not documents:
        raise ValueError(
            f"no sources: pass --source (a PDF, a folder, a glob or an http(s) URL) or set `sources` in {config}"
        )
    run = pipeline.index_documents(documents, cfg, STAGES)
    publish_report(run)
    log_to_mlflow(run, cfg)
    if not run.indexed_any():
        raise RuntimeError(f"no document could be indexed ({run.failures()})")
    return run.as_dicts()


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
