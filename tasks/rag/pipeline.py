"""What pdf-index's per-document stages share: a stage reports a bad document (`PdfError`) as a
value, an `Outcome`, so the other documents go on; the three stores a document is written to,
opened and closed together; and the run's result, one `DocumentReport` per document.

The flow (flows/pdf_index.py) decides what runs when.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.rag.catalog import Catalog, shown_url
from tasks.rag.config import IndexOptions, PdfIndexConfig, password_for
from tasks.rag.embeddings import make_embeddings
from tasks.rag.indexing import (
    INDEXED,
    STATUSES,
    DocumentReport,
    make_record_manager,
)
from tasks.rag.pdfs import ExtractedPdf, PdfError, display_name, extract_pdf
from tasks.rag.stores import OpenStore, index_location, open_store, records_url

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings


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


def extract_document(data: bytes, source: str, passwords: dict[str, str], options: IndexOptions) -> ExtractedPdf:
    return extract_pdf(
        data, source, password_for(source, passwords), options.min_chars_per_page, options.extract_processes
    )


@dataclass
class IndexTarget:
    """Where documents are written: the three stores indexing.py keeps in step."""

    store: OpenStore
    record_manager: Any
    catalog: Catalog
    embeddings: Embeddings | None = None

    def warm_up(self) -> None:
        """Start loading the embedding model now, when a document will need it (never on a no-op run)."""
        if warm_up := getattr(self.embeddings, "warm_up", None):
            warm_up()


@contextmanager
def opened_target(cfg: PdfIndexConfig) -> Iterator[IndexTarget]:
    with ExitStack() as opened:
        # The record store first: it fails fast, naming its URL, before the embedding model loads.
        records = records_url(cfg.store)
        catalog = Catalog(records, cfg.store.collection)
        opened.callback(catalog.close)
        embeddings = make_embeddings(cfg.embeddings)
        store = open_store(cfg.store, embeddings)
        opened.callback(store.close)
        yield IndexTarget(store, make_record_manager(records, cfg.store.collection), catalog, embeddings)


@dataclass
class IndexRun:
    """What one pdf-index run did, document by document, and where the index is."""

    reports: list[DocumentReport]
    seconds: float
    location: str  # the index, as its store kind names it
    collection: str
    records: str  # the record store's URL, password masked

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


def index_run(reports: list[DocumentReport], seconds: float, cfg: PdfIndexConfig) -> IndexRun:
    return IndexRun(
        reports, seconds, index_location(cfg.store), cfg.store.collection, shown_url(records_url(cfg.store))
    )
