"""A local HTTP server on 127.0.0.1 that misbehaves on purpose, the way real document servers do.

Routes (every request is counted per path in `server.hits`):
    /flaky/NAME.pdf         503 for the first `fail_first` requests, then the PDF
    /hang/NAME.pdf          accepts the connection, then never answers (until the server stops)
    /redirect-to/SCHEME     302 to SCHEME://... (file, ftp, ...): a redirect to another scheme
    /redirect/NAME.pdf      302 to /ok/NAME.pdf on this server (a harmless redirect)
    /ok/NAME.pdf            the PDF
    /empty.pdf              200, application/pdf, zero bytes
    /truncated.pdf          the first half of the PDF
    /endless.pdf            a PDF header then endless bytes, no Content-Length (chunked)
    anything else           404

Used by the fault tests as `with FlakyServer(pdf_bytes) as server: server.url + "/flaky/a.pdf"`;
it runs in a thread of the test process, or as its own process with `python -m tests.doubles.flaky_http`
(prints its URL, serves until killed) when a flow subprocess must reach it.
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FlakyServer:
    def __init__(self, pdf: bytes, fail_first: int = 2, port: int = 0):
        self.pdf, self.fail_first = pdf, fail_first
        self.hits: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _count(self, path: str) -> int:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            return self.hits[path]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read `hits` instead
                pass

            def send(
                self,
                status: int,
                body: bytes = b"",
                content_type: str = "application/pdf",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                path = self.path
                seen = server._count(path)
                if path.startswith("/flaky/"):
                    if seen <= server.fail_first:
                        self.send(503, b"busy, try again", "text/plain")
                    else:
                        self.send(200, server.pdf)
                elif path.startswith("/hang/"):
                    server._stop.wait()  # never answers while the server runs
                elif path.startswith("/redirect-to/"):
                    scheme = path.rsplit("/", 1)[-1]
                    self.send(302, b"", "text/plain", {"Location": f"{scheme}:///etc/passwd"})
                elif path.startswith("/redirect/"):
                    self.send(302, b"", "text/plain", {"Location": "/ok/" + path.rsplit("/", 1)[-1]})
                elif path.startswith("/ok/"):
                    self.send(200, server.pdf)
                elif path == "/empty.pdf":
                    self.send(200, b"")
                elif path == "/truncated.pdf":
                    self.send(200, server.pdf[: len(server.pdf) // 2])
                elif path == "/endless.pdf":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/pdf")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    piece = b"%PDF-1.4\n" + b"0" * 65536
                    try:
                        while not server._stop.is_set():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                else:
                    self.send(404, b"no such file", "text/plain")

        return Handler

    def __enter__(self) -> FlakyServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()  # releases the hanging handlers
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":  # python -m tests.doubles.flaky_http PDF_FILE [FAIL_FIRST]
    with FlakyServer(Path(sys.argv[1]).read_bytes(), int(sys.argv[2]) if len(sys.argv) > 2 else 2) as running:
        print(running.url, flush=True)
        while True:
            time.sleep(3600)
