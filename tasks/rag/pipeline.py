"""pdf-index's per-document pipeline: fetch → extract → chunk (documents concurrently) →
embed_and_upsert (one writer) → delete_missing.

A stage reports a bad document (`PdfError`) as a value, an `Outcome`, so the other documents go on;
every document ends with one `DocumentReport`. The stages are the flow's Prefect tasks
(`IndexStages`), so each shows in the Prefect UI; this module decides what runs when.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import unmapped

from tasks.rag.catalog import Catalog
from tasks.rag.config import PdfIndexConfig, password_for
from tasks.rag.embeddings import make_embeddings
from tasks.rag.indexing import (
    INDEXED,
    STATUSES,
    DocumentReport,
    fingerprint,
    is_unchanged,
    make_record_manager,
)
from tasks.rag.pdfs import ExtractedPdf, PdfError, display_name, extract_pdf
from tasks.rag.stores import OpenStore, index_location, open_store, records_path


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
        except PdfError as error:
            return Outcome(None, str(error), time.perf_counter() - started)

    return run


def extract_document(data: bytes, source: str, passwords: dict[str, str], min_chars_per_page: int) -> ExtractedPdf:
    return extract_pdf(data, source, password_for(source, passwords), min_chars_per_page)


@dataclass(frozen=True)
class IndexStages:
    """The stages as the flow runs them: Prefect tasks around these plain functions."""

    fetch: Any  # per_document(pdfs.fetch_pdf)
    extract: Any  # per_document(extract_document)
    chunk: Any  # per_document(chunking.chunk_document)
    embed_and_upsert: Any  # per_document(indexing.upsert_document): index() embeds only chunks it has not seen
    delete_missing: Any  # indexing.delete_document


@dataclass
class IndexTarget:
    """Where documents are written: the three stores indexing.py keeps in step."""

    store: OpenStore
    record_manager: Any
    catalog: Catalog


@contextmanager
def opened_target(cfg: PdfIndexConfig) -> Iterator[IndexTarget]:
    store = open_store(cfg.store, make_embeddings(cfg.embeddings))
    try:
        records = records_path(cfg.store)
        catalog = Catalog(records, cfg.store.collection)
        try:
            yield IndexTarget(store, make_record_manager(records, cfg.store.collection), catalog)
        finally:
            catalog.close()
    finally:
        store.close()


@dataclass
class IndexRun:
    """What one pdf-index run did, document by document, and where the index is."""

    reports: list[DocumentReport]
    seconds: float
    location: str  # the index, as its store kind names it
    collection: str
    records: Path  # the record store

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.reports)

    def indexed_any(self) -> bool:
        return any(r.status in INDEXED for r in self.reports)

    def failures(self) -> str:
        return "; ".join(f"{display_name(r.source)}: {r.reason}" for r in self.reports if r.status == "failed")

    def metrics(self) -> dict[str, float]:
        pages = sum(r.pages for r in self.reports if r.status in ("indexed", "replaced"))
        return {
            **{f"documents_{status}": self.count(status) for status in STATUSES},
            "documents": len(self.reports),
            "seconds": self.seconds,
            "pages_indexed": pages,
            "chunks": sum(r.chunks for r in self.reports if r.status in INDEXED),
            "pages_per_s": pages / self.seconds if self.seconds > 0 else 0.0,
        }

    def as_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.reports]


def index_documents(documents: list[str], cfg: PdfIndexConfig, stages: IndexStages) -> IndexRun:
    """Index the documents; delete those indexed before that are gone (when any document is indexed)."""
    started = time.perf_counter()
    with opened_target(cfg) as target:
        reports = _index_each(documents, cfg, stages, target)
        if cfg.index.delete_missing and any(r.status in INDEXED for r in reports):
            for source in sorted(set(target.catalog.sources()) - set(documents)):
                reports.append(_timed(stages.delete_missing, source, target))
        target.store.flush()
    return IndexRun(
        reports, time.perf_counter() - started, index_location(cfg.store), cfg.store.collection, records_path(cfg.store)
    )


def _timed(delete_missing, source: str, target: IndexTarget) -> DocumentReport:
    started = time.perf_counter()
    report = delete_missing(source, target.store.vectors, target.record_manager, target.catalog)
    report.seconds = time.perf_counter() - started
    return report


def _index_each(
    documents: list[str], cfg: PdfIndexConfig, stages: IndexStages, target: IndexTarget
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
    fetched = dict(zip(documents, stages.fetch.map(documents, unmapped(cfg.fetch)).result()))
    to_extract = []
    for source, outcome in fetched.items():
        if failed(source, outcome):
            continue
        new_fingerprint = fingerprint(hashlib.sha256(outcome.value).hexdigest(), cfg.chunk, cfg.embeddings)
        if entry := is_unchanged(target.catalog, source, new_fingerprint):
            reports[source] = DocumentReport(source, "unchanged", "", entry.pages, entry.chunks, seconds[source])
        else:
            to_extract.append((source, new_fingerprint))
    sources = [source for source, _ in to_extract]
    extracted = stages.extract.map(
        [fetched[s].value for s in sources], sources, unmapped(cfg.passwords), unmapped(cfg.index.min_chars_per_page)
    ).result()
    fetched.clear()  # the PDFs' bytes are not needed any more
    ready = [(s, fp, o) for (s, fp), o in zip(to_extract, extracted) if not failed(s, o)]
    chunked = stages.chunk.map([o.value for _, _, o in ready], unmapped(cfg.chunk)).result()
    # One writer: the store and the record manager are updated one document at a time.
    for (source, new_fingerprint, doc), chunks in zip(ready, chunked):
        if failed(source, chunks):
            continue
        upserted = stages.embed_and_upsert(
            doc.value, chunks.value, new_fingerprint, target.store.vectors, target.record_manager, target.catalog
        )
        if failed(source, upserted):
            continue
        report = upserted.value
        report.seconds = seconds[source]
        reports[source] = report
    return [reports[source] for source in documents]
