"""Fetch PDFs (http(s) URLs, local files, folders, globs) and extract their text page by page.

Every failure a user can cause (a 404, HTML served as a PDF, an oversized download, a corrupt or
truncated file, an encrypted PDF without its password, a scanned PDF with no text layer) raises
`PdfError` with a reason that says what is wrong with which source, so the indexer can report it
and go on with the other documents.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tasks.core.config import option, require

# Servers label PDFs in several ways; HTML, JSON or text never is one.
PDF_CONTENT_TYPES = {
    "application/pdf",
    "application/x-pdf",
    "application/octet-stream",
    "binary/octet-stream",
    "application/download",
    "application/force-download",
}
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class PdfError(Exception):
    """A source that cannot be indexed; str(error) is the reason shown in the report."""


@dataclass
class FetchOptions:
    timeout_s: float = option(30.0, help="seconds to wait for a server (connect and each read)")
    retries: int = option(3, help="extra attempts after a timeout, a connection error or a 5xx/429 answer")
    backoff_s: float = option(1.0, help="wait before the first retry; doubles with each further one")
    max_mb: float = option(100.0, help="largest download accepted, in MB (checked while streaming)")

    def __post_init__(self) -> None:
        require(self.timeout_s > 0, "fetch.timeout_s", f"must be positive, got {self.timeout_s}")
        require(self.retries >= 0, "fetch.retries", f"must be >= 0, got {self.retries}")
        require(self.backoff_s >= 0, "fetch.backoff_s", f"must be >= 0, got {self.backoff_s}")
        require(self.max_mb > 0, "fetch.max_mb", f"must be positive, got {self.max_mb}")


@dataclass
class Page:
    number: int  # 1-based, as a reader cites it
    text: str


@dataclass
class Section:
    page: int  # 1-based page its heading is on
    title: str  # with its parent section's title in front: "2 ASN.1 structure handling > Naming"

    @property
    def heading(self) -> str:
        """The section's own title, as its heading on the page shows it: "Naming"."""
        return self.title.rsplit(" > ", 1)[-1]


@dataclass
class ExtractedPdf:
    source: str
    title: str
    pages: list[Page]  # pages with text only
    page_count: int  # all pages, with or without text
    sha256: str  # of the file's bytes: what "unchanged" means
    sections: list[Section] = field(default_factory=list)  # the PDF's outline (bookmarks), in page order


# --- sources ----------------------------------------------------------------------------------


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def display_name(source: str) -> str:
    """`paper.pdf` for a path or a URL: the name citations use."""
    path = urlparse(source).path if is_url(source) else source
    return Path(path).name or source


def expand_sources(sources: list[str], base: Path | None = None) -> list[str]:
    """URLs as given; folders (recursively) and glob patterns as the sorted absolute paths of their PDFs.

    A plain path that does not exist is kept, so that fetching it reports "file not found".
    Anything else with a scheme (ftp:, file:, s3:) is kept and rejected by `fetch_pdf`.
    """
    base = base or Path.cwd()
    expanded: list[str] = []
    for source in sources:
        source = source.strip()
        if not source:
            continue
        if is_url(source) or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", source):
            expanded.append(source)
            continue
        path = Path(os.path.expanduser(source))
        path = path if path.is_absolute() else base / path
        if path.is_dir():
            expanded.extend(
                str(p.resolve()) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() == ".pdf"
            )
        elif glob.has_magic(str(path)):
            expanded.extend(
                str(Path(p).resolve()) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()
            )
        else:
            expanded.append(str(path.resolve()))
    return list(dict.fromkeys(expanded))  # a file named twice is indexed once


# --- fetch ------------------------------------------------------------------------------------


def fetch_pdf(source: str, options: FetchOptions) -> bytes:
    """The bytes of a PDF from an http(s) URL or a local file; PdfError says why not."""
    if is_url(source):
        data = _download(source, options)
    elif "://" in source:
        raise PdfError(f"unsupported source scheme '{source.split('://')[0]}': only http(s) URLs and local paths")
    else:
        path = Path(source)
        if not path.exists():
            raise PdfError(f"file not found: {source}")
        if not path.is_file():
            raise PdfError(f"not a file: {source}")
        data = path.read_bytes()
    _check_pdf_header(data, source)
    return data


def _check_pdf_header(data: bytes, source: str) -> None:
    if not data:
        raise PdfError("empty file (0 bytes)")
    head = data[:1024]
    if b"%PDF-" not in head:  # the header may follow a few junk bytes; readers accept that
        sniff = head[:40].decode("utf-8", "replace").strip()
        kind = "HTML" if re.search(rb"<(!doctype|html|head|body)", head, re.I) else "not a PDF"
        raise PdfError(f"{kind}, not a PDF: the content starts with {sniff!r}")


def _download(url: str, options: FetchOptions) -> bytes:
    import httpx

    attempt, delay = 0, options.backoff_s
    while True:
        try:
            return _download_once(url, options)
        except _Retryable as error:
            if attempt >= options.retries:
                raise PdfError(f"{error} (gave up after {attempt + 1} attempts)") from None
        except httpx.UnsupportedProtocol as error:  # the URL was http(s): only a redirect lands here
            raise PdfError(f"redirected to a non-http(s) URL, refused ({error})") from None
        except httpx.HTTPError as error:  # connection refused, DNS, protocol errors: worth a retry
            if attempt >= options.retries:
                raise PdfError(
                    f"download failed: {type(error).__name__}: {error} (gave up after {attempt + 1} attempts)"
                ) from None
        attempt += 1
        time.sleep(delay)
        delay *= 2


class _Retryable(Exception):
    pass


def _download_once(url: str, options: FetchOptions) -> bytes:
    import httpx

    limit = int(options.max_mb * 1_000_000)
    timeout = httpx.Timeout(options.timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5) as client:
        try:
            with client.stream("GET", url, headers={"Accept": "application/pdf"}) as response:
                if response.status_code in RETRYABLE_STATUS:
                    raise _Retryable(f"HTTP {response.status_code} {response.reason_phrase}")
                if response.status_code >= 400:
                    raise PdfError(f"HTTP {response.status_code} {response.reason_phrase}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type and content_type not in PDF_CONTENT_TYPES:
                    raise PdfError(f"served as {content_type}, not a PDF")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise PdfError(
                        f"too large: {int(declared) / 1e6:.1f} MB announced, limit fetch.max_mb={options.max_mb:g}"
                    )
                body = io.BytesIO()
                for piece in response.iter_bytes():
                    body.write(piece)
                    if body.tell() > limit:  # a server may send more than it announced
                        raise PdfError(f"too large: over fetch.max_mb={options.max_mb:g} MB")
                return body.getvalue()
        except httpx.TimeoutException as error:
            raise _Retryable(f"timed out after {options.timeout_s:g} s ({type(error).__name__})") from None


# --- extract ----------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Text as a reader sees it: no NUL/control characters, words split at line ends re-joined."""
    text = unicodedata.normalize("NFKC", text)  # ligatures: "Deﬁnition" -> "Definition"
    text = text.replace("\x00", "-")  # pypdf's stand-in for glyphs it cannot map (TeX's minus sign)
    text = re.sub(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", " ", text)
    text = re.sub(r"(\w)-\n([a-zäöüß])", r"\1\2", text)  # "Topo-\nlogie" -> "Topologie"
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# Fewer pages than this per extra process, and the processes' start costs more than it saves.
PAGES_PER_PROCESS = 16


def _open(data: bytes, password: str | None):
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        if not password:
            raise PdfError("encrypted: a password is needed (set passwords.<file name>: env:VARIABLE)")
        if not reader.decrypt(password):
            raise PdfError("encrypted: the password given does not open it")
    return reader


def _page_texts(data: bytes, password: str | None, first: int, stop: int, reader=None) -> list[str]:
    """The cleaned text of pages [first, stop); in a worker process the file is opened again there."""
    reader = reader or _open(data, password)
    return [clean_text(reader.pages[i].extract_text() or "") for i in range(first, stop)]


def _texts_in_processes(data: bytes, password: str | None, page_count: int, processes: int) -> list[str]:
    """pypdf is pure Python and holds the GIL: only processes extract pages side by side.

    Each range of pages goes to a new interpreter (`python -m tasks.rag.pdfs`, the PDF and the
    password on its stdin, never its command line), not to a fork: the indexer runs threads (other
    documents' extraction, the embedding model's load) that may be importing a module at the moment
    of a fork, and a forked child that then needs it (pypdf imports fontTools on first use) waits
    for that import forever. A range whose worker fails is extracted here: the same text, slower."""
    from concurrent.futures import ThreadPoolExecutor

    bounds = [page_count * i // processes for i in range(processes + 1)]
    with ThreadPoolExecutor(processes) as pool:
        parts = [pool.submit(_texts_in_worker, data, password, a, b) for a, b in itertools.pairwise(bounds)]
        texts = [part.result() for part in parts]
    return [
        text
        for (first, stop), part in zip(itertools.pairwise(bounds), texts, strict=True)
        for text in (part if part is not None else _page_texts(data, password, first, stop))
    ]


def _texts_in_worker(data: bytes, password: str | None, first: int, stop: int) -> list[str] | None:
    """Pages [first, stop) extracted by a worker interpreter; None when it fails."""
    import json
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])  # the project, for `-m tasks.rag.pdfs`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    header = json.dumps({"first": first, "stop": stop, "password": password}).encode() + b"\n"
    done = subprocess.run(
        [sys.executable, "-m", "tasks.rag.pdfs"], input=header + data, capture_output=True, env=env, check=False
    )
    if done.returncode != 0:
        return None
    texts = json.loads(done.stdout)
    return texts if isinstance(texts, list) and len(texts) == stop - first else None


def _serve_pages() -> None:
    """The worker: a JSON header line and the PDF's bytes on stdin; the pages' texts, as JSON, on stdout."""
    import json
    import sys

    header = json.loads(sys.stdin.buffer.readline())
    texts = _page_texts(sys.stdin.buffer.read(), header["password"], header["first"], header["stop"])
    sys.stdout.write(json.dumps(texts))


def extract_pdf(
    data: bytes, source: str, password: str | None = None, min_chars_per_page: int = 10, processes: int = 1
) -> ExtractedPdf:
    """Every page's text with pypdf; PdfError for encrypted, corrupt, truncated or text-less files.

    `processes` > 1 splits a long document's pages between that many worker processes (the same
    text, page for page)."""
    from pypdf.errors import FileNotDecryptedError, PdfReadError, PdfStreamError

    try:
        reader = _open(data, password)
        page_count = len(reader.pages)
        processes = max(1, min(processes, page_count // PAGES_PER_PROCESS))
        if processes > 1:
            texts = _texts_in_processes(data, password, page_count, processes)
        else:
            texts = _page_texts(data, password, 0, page_count, reader)
        pages = [Page(number, text) for number, text in enumerate(texts, start=1) if text]
        title = _title(reader) or display_name(source)
        sections = _sections(reader)
    except PdfError:
        raise
    except FileNotDecryptedError:
        raise PdfError("encrypted: a password is needed (set passwords.<file name>: env:VARIABLE)") from None
    except (
        PdfReadError,
        PdfStreamError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OSError,
        RecursionError,
        AssertionError,
        IndexError,
    ) as error:
        # pypdf raises many types for broken files; all mean the same thing to a user.
        raise PdfError(f"corrupt or truncated PDF: {type(error).__name__}: {error}") from None
    if page_count == 0:
        raise PdfError("corrupt or truncated PDF: no pages found")
    chars = sum(len(page.text) for page in pages)
    if chars < min_chars_per_page * page_count:
        raise PdfError(
            f"no text layer: {chars} characters of text on {page_count} pages "
            "(a scanned or image-only PDF; run OCR on it first)"
        )
    return ExtractedPdf(
        source=source,
        title=title,
        pages=pages,
        page_count=page_count,
        sha256=hashlib.sha256(data).hexdigest(),
        sections=sections,
    )


def _sections(reader) -> list[Section]:
    """The outline's entries in page order, each titled with its parent's title in front (two levels:
    enough to say where a passage is, short enough to prefix a chunk); [] without a usable outline."""
    sections: list[Section] = []

    def walk(entries, parent: str) -> None:
        last = parent
        for entry in entries:
            if isinstance(entry, list):  # the children of the entry before it
                walk(entry, last)
                continue
            page = reader.get_destination_page_number(entry)
            title = " ".join(clean_text(str(entry.title or "")).split())
            if page is None or page < 0 or not title:
                continue
            last = title
            sections.append(Section(page + 1, f"{parent} > {title}" if parent else title))

    try:
        walk(reader.outline, "")
    except Exception:  # a malformed outline costs the titles, never the document
        return []
    return sorted(sections, key=lambda section: section.page)  # stable: the outline's order within a page


def _title(reader) -> str:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # a malformed info dictionary should not cost the document
        return ""
    return clean_text(str(title)) if title else ""


if __name__ == "__main__":
    _serve_pages()
