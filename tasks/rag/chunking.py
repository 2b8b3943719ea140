"""Pages into chunks, each citing exactly one page, with ids that stay the same across runs."""

from __future__ import annotations

import hashlib

from langchain_core.documents import Document

from tasks.rag.config import ChunkOptions
from tasks.rag.pdfs import ExtractedPdf
from tasks.rag.splitters import make_splitter


def chunk_id(source: str, page: int, index: int) -> str:
    """Stable and readable: `<8 hex of the source>:p<page>:c<index on the page>`."""
    return f"{hashlib.sha256(source.encode()).hexdigest()[:8]}:p{page}:c{index}"


def chunk_document(doc: ExtractedPdf, options: ChunkOptions) -> list[Document]:
    """Chunks page by page, so that each one cites exactly one page."""
    splitter = make_splitter(options)
    chunks = []
    for page in doc.pages:
        for index, text in enumerate(t.strip() for t in splitter.split_text(page.text)):
            if not text:
                continue
            chunks.append(
                Document(
                    page_content=text,
                    metadata={
                        "source": doc.source,
                        "page": page.number,
                        "title": doc.title,
                        "chunk_id": chunk_id(doc.source, page.number, index),
                    },
                )
            )
    return chunks
