"""One document, every stage, in a worker of a cluster: what `index.runner: dask` runs per document.

A Dask worker fetches, extracts, chunks and embeds a document and writes it straight into the
shared store, record manager and catalog (a Milvus server, PostgreSQL), so the work spreads over
the cluster and nothing funnels through the flow's process. Each worker process opens the target
(and loads the embedding model) once and keeps it for every document it gets.

A worker killed mid-document leaves that document marked incomplete in the catalog (`begin`
comes first); the next run, or Dask's retry of the task on another worker, redoes it, and the
upserts make the retry harmless (see indexing.py).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict
from urllib.parse import urlparse

from tasks.rag import chunking, indexing, pdfs
from tasks.rag.config import PdfIndexConfig
from tasks.rag.indexing import DocumentReport
from tasks.rag.pdfs import PdfError
from tasks.rag.pipeline import IndexTarget, extract_document, opened_target

_TARGETS: dict[str, IndexTarget] = {}
_OPENING = threading.Lock()
_KEEP_OPEN = ExitStack()
atexit.register(_KEEP_OPEN.close)  # connections closed when the worker process ends


def worker_target(cfg: PdfIndexConfig) -> IndexTarget:
    """This process's open target for the config's store and record store."""
    key = json.dumps([asdict(cfg.store), asdict(cfg.embeddings)], sort_keys=True)
    with _OPENING:  # a worker may run several threads; they share one target
        if key not in _TARGETS:
            _TARGETS[key] = _KEEP_OPEN.enter_context(opened_target(cfg))
        return _TARGETS[key]


def index_document(source: str, cfg: PdfIndexConfig) -> DocumentReport:
    """Fetch → fingerprint (unchanged: done) → extract → chunk → embed and upsert, for one document."""
    started = time.perf_counter()
    target = worker_target(cfg)
    try:
        data = pdfs.fetch_pdf(source, cfg.fetch)
        new_fingerprint = indexing.fingerprint(hashlib.sha256(data).hexdigest(), cfg.chunk, cfg.embeddings)
        if entry := indexing.is_unchanged(target.catalog, source, new_fingerprint):
            report = DocumentReport(source, "unchanged", "", entry.pages, entry.chunks)
        else:
            # One process per document already, and a Dask worker (a daemon process) may not start more.
            doc = extract_document(data, source, cfg.passwords, dataclasses.replace(cfg.index, extract_processes=1))
            chunks = chunking.chunk_document(doc, cfg.chunk)
            report = indexing.upsert_document(
                doc, chunks, new_fingerprint, target.store.vectors, target.record_manager, target.catalog
            )
    except PdfError as error:
        report = DocumentReport(source, "failed", str(error))
    report.seconds = time.perf_counter() - started
    return report


def check_scheduler(address: str, timeout_s: float = 10.0) -> None:
    """Fail at start, naming the address, when no Dask scheduler answers there."""
    url = urlparse(address)
    try:
        with socket.create_connection((url.hostname, url.port or 8786), timeout=timeout_s):
            pass
    except OSError as error:
        raise ConnectionError(
            f"index.address: the Dask scheduler {url.scheme}://{url.hostname}:{url.port or 8786} cannot be "
            f"reached ({error.strerror or error}); is it running?"
        ) from None
