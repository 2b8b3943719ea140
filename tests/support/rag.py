"""Helpers for the RAG tests: a folder of real PDFs to index, and what the index holds."""

from __future__ import annotations

import shutil
from pathlib import Path

# Small real documents (the 117-page GeoTopo script is left to the benchmarks: it takes minutes).
GOOD_PDFS = ("multicolumn.pdf", "pdflatex-4-pages.pdf", "crazyones-pdfa.pdf", "google-doc-document.pdf", "habibi.pdf")
BAD_PDFS = {
    "images-only.pdf": "no text layer",
    "encrypted.pdf": "encrypted: a password is needed",
}


def pdf_folder(sample_data: Path, target: Path, names=GOOD_PDFS + tuple(BAD_PDFS)) -> Path:
    """Copies (not links: tests change and delete them) of the sample PDFs (tests/data/pdfs, generated bad ones)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(sample_data / "pdfs" / name, target / name)
    return target


def store_overrides(folder: Path) -> list[str]:
    """An index of its own for a test: Milvus Lite file and record store in `folder`."""
    return [f"store.uri={folder / 'index.db'}"]


def by_name(reports: list[dict]) -> dict[str, dict]:
    return {Path(r["source"]).name: r for r in reports}


def milvus_rows(uri: str, collection: str = "pdf_chunks") -> list[dict]:
    """Every row of a Milvus collection (source, chunk_id), read with a client of its own."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        if not client.has_collection(collection):
            return []
        client.load_collection(collection)  # a fresh client finds the collection released
        return client.query(
            collection,
            filter='chunk_id != ""',
            output_fields=["source", "chunk_id"],
            limit=16000,
            consistency_level="Strong",
        )
    finally:
        client.close()


def count_vectors(uri: str, collection: str = "pdf_chunks") -> int:
    """Rows in a Milvus collection, read with a client of its own."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        if not client.has_collection(collection):
            return 0
        result = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(result[0]["count(*)"])
    finally:
        client.close()
