"""Text splitters by `chunk.splitter`: one function per kind, one line per kind in `SPLITTERS`.

A splitter turns a page's text into pieces of at most `chunk.size` characters, neighbours sharing
`chunk.overlap`. Adding one is a function from `ChunkOptions` to a LangChain `TextSplitter` and
its line below; `chunk.splitter` accepts every kind named here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_text_splitters import TextSplitter

    from tasks.rag.config import ChunkOptions


def recursive(options: ChunkOptions) -> TextSplitter:
    """Paragraphs, then lines, then sentence ends, then words: cuts where the text's structure does."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(
        separators=["\n\n", "\n", ". ", "; ", ", ", " ", ""],
        chunk_size=options.size,
        chunk_overlap=options.overlap,
        keep_separator="end",
    )


def character(options: ChunkOptions) -> TextSplitter:
    """Cuts at one separator only (`chunk.separator`); at LangChain's default, a blank line, a PDF page stays whole."""
    from langchain_text_splitters import CharacterTextSplitter

    return CharacterTextSplitter(separator=options.separator, chunk_size=options.size, chunk_overlap=options.overlap)


SPLITTERS: dict[str, Callable[[ChunkOptions], TextSplitter]] = {
    "recursive": recursive,
    "character": character,
}
DEFAULT_SPLITTER = "recursive"


def make_splitter(options: ChunkOptions) -> TextSplitter:
    return SPLITTERS[options.splitter](options)
