"""What pdf-index's per-document stages share: a stage reports a bad document (`PdfError`) as a
value, an `Outcome`, so the other documents go on; the three stores a document is written to,
opened and closed together; and the run's result, one `DocumentReport` per document.

The flow (flows/pdf_index.py) decides what runs when.
"""

from __future__ import annotations

import functools
import threading
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


class IndexTarget:
    """Where documents are written: the three stores indexing.py keeps in step.

    The catalog is open from the start; the vector store and the record manager open on first use:
    a run that finds every document unchanged needs neither (nor their libraries, nor, for a
    Milvus Lite file, its server process)."""

    def __init__(self, cfg: PdfIndexConfig, records: str, catalog: Catalog, opened: ExitStack):
        self.catalog = catalog
        self.embeddings: Embeddings = make_embeddings(cfg.embeddings)  # the model itself loads on first use
        self._cfg, self._records, self._opened = cfg, records, opened
        self._store: OpenStore | None = None
        self._record_manager: Any = None
        self._opening = threading.Lock()  # a Dask worker's threads share one target

    @property
    def store(self) -> OpenStore:
        with self._opening:
            if self._store is None:
                self._store = open_store(self._cfg.store, self.embeddings)
                self._opened.callback(self._store.close)
            return self._store

    @property
    def record_manager(self) -> Any:
        with self._opening:
            if self._record_manager is None:
                self._record_manager = make_record_manager(self._records, self._cfg.store.collection)
            return self._record_manager

    def flush(self) -> None:
        """Every write durable (nothing to do when nothing was written)."""
        if self._store is not None:
            self._store.flush()

    def warm_up(self) -> None:
        """Start loading the embedding model now, when a document will need it (never on a no-op run)."""
        if warm_up := getattr(self.embeddings, "warm_up", None):
            warm_up()


@contextmanager
def opened_target(cfg: PdfIndexConfig) -> Iterator[IndexTarget]:
    with ExitStack() as opened:
        # The record store first: it fails fast, naming its URL.
        records = records_url(cfg.store)
        catalog = Catalog(records, cfg.store.collection)
        opened.callback(catalog.close)
        yield IndexTarget(cfg, records, catalog, opened)


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
