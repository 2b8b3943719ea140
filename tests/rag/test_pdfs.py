"""Fetching and extracting PDFs: the sample PDFs (tests/data/pdfs, generated bad ones), a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.rag import pdfs
from tasks.rag.pdfs import FetchOptions, PdfError

FAST = FetchOptions(timeout_s=2.0, retries=2, backoff_s=0.05, max_mb=1.0)


@pytest.fixture(scope="module")
def pdf_dir(sample_data):
    return sample_data / "pdfs"


@pytest.fixture(scope="module")
def pdf_server(pdf_dir):
    """Serves a real PDF and the ways a download goes wrong; counts requests per path."""
    paper = (pdf_dir / "pdflatex-4-pages.pdf").read_bytes()
    html = b"<!DOCTYPE html><html><body>Not found, but 200 anyway</body></html>"
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def send(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
                pass

        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/paper.pdf":
                self.send(200, paper, "application/pdf")
            elif self.path == "/html.pdf":
                self.send(200, html, "text/html; charset=utf-8")
            elif self.path == "/disguised.pdf":  # HTML served with a PDF content type
                self.send(200, html, "application/pdf")
            elif self.path == "/big.pdf":
                self.send(200, b"%PDF-1.4\n" + b"0" * 100, "application/pdf", length=5_000_000)
            elif self.path == "/flaky.pdf":  # fails twice, then works: retries with backoff
                if hits[self.path] <= 2:
                    self.send(503, b"busy", "text/plain")
                else:
                    self.send(200, paper, "application/pdf")
            elif self.path == "/down.pdf":
                self.send(503, b"busy", "text/plain")
            elif self.path == "/slow.pdf":
                time.sleep(3)
                self.send(200, paper, "application/pdf")
            else:
                self.send(404, b"no such file", "text/plain")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.hits = hits
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


# --- sources ----------------------------------------------------------------------------------


def test_expand_sources_lists_folder_pdfs_globs_and_keeps_urls(pdf_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("not a pdf")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.PDF").write_bytes((pdf_dir / "habibi.pdf").read_bytes())
    expanded = pdfs.expand_sources(
        [
            str(tmp_path),
            str(pdf_dir / "multi*.pdf"),
            "https://example.org/x.pdf",
            str(pdf_dir / "multicolumn.pdf"),
            "ftp://example.org/y.pdf",
            "missing.pdf",
        ],
        base=tmp_path,
    )
    assert expanded == [
        str((tmp_path / "sub" / "a.PDF").resolve()),
        str((pdf_dir / "multicolumn.pdf").resolve()),
        "https://example.org/x.pdf",
        "ftp://example.org/y.pdf",
        str(tmp_path / "missing.pdf"),
    ]


def test_display_name_of_paths_and_urls():
    assert pdfs.display_name("/a/b/paper.pdf") == "paper.pdf"
    assert pdfs.display_name("https://example.org/files/paper.pdf?download=1") == "paper.pdf"


# --- fetch ------------------------------------------------------------------------------------


def test_fetch_local_file_and_its_errors(pdf_dir, tmp_path):
    assert pdfs.fetch_pdf(str(pdf_dir / "habibi.pdf"), FAST).startswith(b"%PDF-")
    with pytest.raises(PdfError, match="file not found"):
        pdfs.fetch_pdf(str(tmp_path / "nope.pdf"), FAST)
    (tmp_path / "page.pdf").write_text("<html><body>hello</body></html>")
    with pytest.raises(PdfError, match="HTML, not a PDF"):
        pdfs.fetch_pdf(str(tmp_path / "page.pdf"), FAST)
    (tmp_path / "empty.pdf").write_bytes(b"")
    with pytest.raises(PdfError, match="empty file"):
        pdfs.fetch_pdf(str(tmp_path / "empty.pdf"), FAST)


def test_only_http_and_local_paths_are_fetched():
    with pytest.raises(PdfError, match="unsupported source scheme 'ftp'"):
        pdfs.fetch_pdf("ftp://example.org/paper.pdf", FAST)
    with pytest.raises(PdfError, match="unsupported source scheme 'file'"):
        pdfs.fetch_pdf("file:///etc/passwd", FAST)


def test_download_a_pdf(pdf_server, pdf_dir):
    data = pdfs.fetch_pdf(f"{pdf_server.url}/paper.pdf", FAST)
    assert data == (pdf_dir / "pdflatex-4-pages.pdf").read_bytes()


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/missing.pdf", "HTTP 404 Not Found"),
        ("/html.pdf", "served as text/html, not a PDF"),
        ("/disguised.pdf", "HTML, not a PDF"),
        ("/big.pdf", "too large: 5.0 MB announced, limit fetch.max_mb=1"),
    ],
)
def test_download_failures_have_specific_reasons(pdf_server, path, reason):
    with pytest.raises(PdfError) as error:
        pdfs.fetch_pdf(f"{pdf_server.url}{path}", FAST)
    assert reason in str(error.value)


def test_404_is_not_retried_but_503_is_with_backoff(pdf_server):
    with pytest.raises(PdfError):
        pdfs.fetch_pdf(f"{pdf_server.url}/gone.pdf", FAST)
    assert pdf_server.hits["/gone.pdf"] == 1
    assert pdfs.fetch_pdf(f"{pdf_server.url}/flaky.pdf", FAST).startswith(b"%PDF-")
    assert pdf_server.hits["/flaky.pdf"] == 3
    with pytest.raises(PdfError, match=r"HTTP 503 .*gave up after 3 attempts"):
        pdfs.fetch_pdf(f"{pdf_server.url}/down.pdf", FAST)


def test_download_times_out(pdf_server):
    started = time.monotonic()
    with pytest.raises(PdfError, match=r"timed out after 0.5 s .*gave up after 1 attempts"):
        pdfs.fetch_pdf(f"{pdf_server.url}/slow.pdf", FetchOptions(timeout_s=0.5, retries=0))
    assert time.monotonic() - started < 2.5


def test_connection_refused_is_reported(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PdfError, match="download failed: ConnectError"):
        pdfs.fetch_pdf(f"http://127.0.0.1:{port}/x.pdf", FetchOptions(timeout_s=1, retries=1, backoff_s=0.01))


# --- extract ----------------------------------------------------------------------------------


def test_extract_pages_title_and_hash(pdf_dir):
    data = (pdf_dir / "multicolumn.pdf").read_bytes()
    doc = pdfs.extract_pdf(data, "multicolumn.pdf")
    assert doc.page_count == 3 and [p.number for p in doc.pages] == [1, 2, 3]
    assert "Helsinki" in doc.pages[2].text
    assert doc.title == "multicolumn.pdf"  # no title in its metadata: the file name stands in
    titled = pdfs.extract_pdf((pdf_dir / "google-doc-document.pdf").read_bytes(), "g.pdf")
    assert titled.title == "PDF Example Document"
    assert len(doc.sha256) == 64


def test_encrypted_pdf_needs_its_password(pdf_dir):
    data = (pdf_dir / "encrypted.pdf").read_bytes()
    with pytest.raises(PdfError, match="encrypted: a password is needed"):
        pdfs.extract_pdf(data, "x.pdf")
    with pytest.raises(PdfError, match="encrypted: the password given does not open it"):
        pdfs.extract_pdf(data, "x.pdf", password="wrong")
    doc = pdfs.extract_pdf(data, "x.pdf", password="openpassword")
    assert "Lorem ipsum" in doc.pages[0].text


def test_scanned_pdf_has_no_text_layer(pdf_dir):
    with pytest.raises(PdfError, match="no text layer: 40 characters of text on 6 pages"):
        pdfs.extract_pdf((pdf_dir / "images-only.pdf").read_bytes(), "scan.pdf")
    short = pdfs.extract_pdf((pdf_dir / "habibi.pdf").read_bytes(), "habibi.pdf")  # little text, but text
    assert "habibi" in short.pages[0].text


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_truncated_pdf_is_reported_as_corrupt(pdf_dir, cut):
    data = (pdf_dir / "pdflatex-4-pages.pdf").read_bytes()
    with pytest.raises(PdfError, match="corrupt or truncated PDF"):
        pdfs.extract_pdf(data[: int(len(data) * cut)], "cut.pdf")


def test_clean_text_joins_ligatures_and_split_words():
    assert (
        pdfs.clean_text("De\ufb01nition der Topo-\nlogie\x00x  und\n\n\n\nmehr")
        == "Definition der Topologie-x und\n\nmehr"
    )
