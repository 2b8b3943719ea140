"""Pages into chunks, each citing exactly one page, with ids that stay the same across runs."""

from __future__ import annotations

import bisect
import hashlib
import re

from langchain_core.documents import Document

from tasks.rag.config import ChunkOptions
from tasks.rag.pdfs import ExtractedPdf, Page, Section
from tasks.rag.splitters import make_splitter


def chunk_id(source: str, page: int, index: int) -> str:
    """Stable and readable: `<8 hex of the source>:p<page>:c<index on the page>`."""
    return f"{hashlib.sha256(source.encode()).hexdigest()[:8]}:p{page}:c{index}"


# A heading this close after a chunk's start (a page number or a rule before it) names the chunk's section.
HEADING_LOOKAHEAD = 40


def section_starts(page: Page, sections: list[Section]) -> tuple[list[int], list[Section]]:
    """Where on `page` each section runs from (character offsets, ascending), and the sections: the
    one still open from earlier pages at 0, then each one headed on this page where its heading is
    found in the text (from the end of the page when pypdf's text does not show it)."""
    earlier = [s for s in sections if s.page < page.number]
    offsets, starting = ([0], [earlier[-1]]) if earlier else ([], [])
    for section in (s for s in sections if s.page == page.number):
        words = [re.escape(w) for w in section.heading.split()[:8]]
        after = offsets[-1] + 1 if offsets else 0  # in the outline's order: a repeated title is the next one
        pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
        found = re.compile(pattern, re.IGNORECASE).search(page.text, after) if words else None
        offsets.append(found.start() if found else len(page.text))  # not in the text: from the next page on
        starting.append(section)
    return offsets, starting


def chunk_document(doc: ExtractedPdf, options: ChunkOptions) -> list[Document]:
    """Chunks page by page, so that each one cites exactly one page. With `section_titles`, a
    chunk starts with the title of the outline section it lies in (unless it already shows it):
    the words a reader's question names a passage by, which the passage itself often omits."""
    splitter = make_splitter(options)
    chunks = []
    for page in doc.pages:
        offsets, starting = section_starts(page, doc.sections) if options.section_titles else ([], [])
        cursor = 0
        for index, text in enumerate(t.strip() for t in splitter.split_text(page.text)):
            if not text:
                continue
            found = page.text.find(text, cursor)
            cursor = found if found >= 0 else cursor
            at = bisect.bisect_right(offsets, cursor + HEADING_LOOKAHEAD) - 1
            if at >= 0 and starting[at].heading.lower() not in text[:200].lower():
                text = f"{starting[at].title}\n{text}"
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
