"""The chat app: a Gradio chatbot over the models this project trains.

`build_app(config)` returns a `gr.Blocks` app; `launch(app, config)` serves it on 127.0.0.1 (by
default) and returns its URL. What a user gets:
- a chat with history, Submit / Enter, the reply streamed as it is generated, Stop (which ends the
  generation thread on the server too) and Clear;
- a model picker: the base model(s) from config, the adapters in the MLflow Model Registry
  (`mlflow://NAME/VERSION`), any publish URI typed in, and "Documents" (answers from `rag-query`,
  with the cited pages under the reply);
- compare mode: the same prompt and settings sent to a second choice, streamed side by side;
- "Advanced options": system prompt and the sampling sliders, which reach `generate` unchanged;
- the disclaimer and the privacy-policy link; a per-session generation log.

History lives in each browser session's Chatbot value, so two users never see each other's
conversation; the server keeps per session only the stop switches of running generations and a
short generation log. Notices (trimmed context, a model that failed to load) are shown in the chat
as titled boxes that never go back into the model's prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from tasks.chat.generation import (
    GenerationError,
    LoadedModel,
    ModelLoadError,
    PromptTooLongError,
    SamplingSettings,
    build_prompt,
    load_chat_model,
    stream_reply,
)
from tasks.core.config import ConfigError, option, require
from tasks.core.defaults import SMOLLM2_PYPI
from tasks.publishing import is_adapter_uri, registered_adapter_uris

log = logging.getLogger(__name__)

DOCUMENTS = "Documents"  # the picker's value for answers from rag-query
NOTICE_TITLE = "Notice"  # titled chat boxes: shown to the user, never sent to the model
ERROR_TITLE = "Error"
SOURCES_TITLE = "Sources"


# --- configuration ----------------------------------------------------------------------------


@dataclass
class ServerOptions:
    host: str = option("127.0.0.1", help="interface to bind; 127.0.0.1 keeps the app on this machine")
    port: int = option(7860, help="TCP port of the app")
    concurrency_limit: int = option(
        2, help="replies generated at once across all users (each model still generates one reply at a time)"
    )
    max_queue: int = option(64, help="requests waiting for a free slot; beyond that a user is told the queue is full")
    username_env: str = option(
        "FTLLM_CHAT_USERNAME",
        help="environment variable holding the login user name (login is on when it and the password are set)",
    )
    password_env: str = option("FTLLM_CHAT_PASSWORD", help="environment variable holding the login password")
    auth_secret: str | None = option(
        None, help='Prefect Secret block holding {"username": ..., "password": ...}; used instead of the environment'
    )

    def __post_init__(self) -> None:
        require(bool(self.host.strip()), "server.host", "must not be empty")
        require(0 < self.port < 65536, "server.port", f"must be in 1..65535, got {self.port}")
        require(
            self.concurrency_limit >= 1, "server.concurrency_limit", f"must be at least 1, got {self.concurrency_limit}"
        )
        require(self.max_queue >= 1, "server.max_queue", f"must be at least 1, got {self.max_queue}")


@dataclass
class SamplingOptions:
    """The sliders' starting values; SamplingSettings checks the same ranges at generation time."""

    # SmolLM2's model card suggests 0.2: at 0.7 the 135M model drifts (into French, for one).
    temperature: float = option(0.2, help="sampling temperature; 0 = greedy")
    top_p: float = option(0.9, help="nucleus sampling: smallest set of tokens with this total probability")
    top_k: int = option(50, help="sample among the k most likely tokens; 0 = no limit")
    repetition_penalty: float = option(1.1, help="penalty on tokens already in the text; 1 = none")
    max_new_tokens: int = option(256, help="longest reply, in tokens")

    def __post_init__(self) -> None:
        require(0.0 <= self.temperature <= 2.0, "sampling.temperature", f"must be in [0, 2], got {self.temperature}")
        require(0.0 < self.top_p <= 1.0, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        require(0 <= self.top_k <= 200, "sampling.top_k", f"must be in [0, 200], got {self.top_k}")
        require(
            0.5 <= self.repetition_penalty <= 2.0,
            "sampling.repetition_penalty",
            f"must be in [0.5, 2], got {self.repetition_penalty}",
        )
        require(
            1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            "sampling.max_new_tokens",
            f"must be in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens}",
        )

    def settings(self) -> SamplingSettings:
        return SamplingSettings(**dataclasses.asdict(self))


MAX_NEW_TOKENS = 2048


@dataclass
class ChatAppConfig:
    """`chat-app`: a Gradio chatbot over the base model, published adapters and the documents."""

    server: ServerOptions = field(default_factory=ServerOptions)
    models: list[str] = option(
        [SMOLLM2_PYPI],
        help="choices offered in the model picker (the first is "
        "the default): model names (Hub id, folder, pypi:PACKAGE/FILE.gguf) or "
        "adapter publish URIs (hf://, mlflow://, file://)",
    )
    list_registry: bool = option(
        True,
        help="also offer every adapter version in the MLflow Model Registry "
        "(mlflow://NAME/VERSION), refreshed on each page load",
    )
    registry_versions: int = option(3, help="newest versions offered per registered model")
    documents: str | None = option(
        None,
        help="RAG config file (e.g. configs/rag.yaml): adds the "
        "'Documents' choice, answered by rag-query with cited pages",
    )
    preload: bool = option(True, help="load the default model before serving, so the first reply is fast")
    max_loaded_models: int = option(3, help="models kept in memory at once; the least recently used goes")
    system_prompt: str = option(
        "",
        help="system message before every conversation (editable in the app); "
        "empty: the chat template's own default (SmolLM2 answers best with it)",
    )
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    title: str = option("finetuning-llm chat", help="page title and heading")
    disclaimer: str = option(
        "Answers are generated by a small language model and may be wrong, biased or made up. "
        "Do not rely on them for decisions, and do not enter personal or confidential data.",
        help="shown under the chat",
    )
    privacy_policy_url: str = option("https://example.org/privacy", help="linked as 'Privacy policy' under the chat")

    def __post_init__(self) -> None:
        require(
            bool(self.models) and all(m.strip() for m in self.models),
            "models",
            "must list at least one model choice, none empty",
        )
        require(self.registry_versions >= 1, "registry_versions", f"must be at least 1, got {self.registry_versions}")
        require(self.max_loaded_models >= 1, "max_loaded_models", f"must be at least 1, got {self.max_loaded_models}")
        require(
            self.documents is None or Path(self.documents).is_file(),
            "documents",
            f"RAG config file not found: {self.documents} (e.g. configs/rag.yaml)",
        )
        require(
            self.privacy_policy_url.startswith(("https://", "http://", "/")),
            "privacy_policy_url",
            f"must be an http(s) URL or a path, got {self.privacy_policy_url!r}",
        )


def resolve_auth(server: ServerOptions) -> tuple[str, str] | None:
    """(username, password) for the login page, or None when no login is configured.

    The secret is read here, at launch, and only handed to Gradio: it never enters the config,
    the logs or an artifact.
    """
    if server.auth_secret:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(server.auth_secret).get()
        except ValueError as error:
            raise ConfigError(
                f"server.auth_secret: no Prefect Secret block named {server.auth_secret!r} ({error})"
            ) from None
        if not (isinstance(value, dict) and value.get("username") and value.get("password")):
            raise ConfigError(
                f"server.auth_secret: the Secret block {server.auth_secret!r} must hold a JSON "
                "object with non-empty 'username' and 'password'"
            )
        return str(value["username"]), str(value["password"])
    username, password = os.environ.get(server.username_env), os.environ.get(server.password_env)
    if bool(username) != bool(password):
        missing = server.password_env if username else server.username_env
        raise ConfigError(
            f"server: login needs both {server.username_env} and {server.password_env}; {missing} is not set"
        )
    return (username, password) if username and password else None


# --- model choices ----------------------------------------------------------------------------


def model_choices(config: ChatAppConfig) -> list[str]:
    """What the picker offers: config models, registry adapters, then Documents (when configured)."""
    choices = list(dict.fromkeys(config.models))
    if config.list_registry:
        try:
            choices.extend(c for c in registered_adapter_uris(config.registry_versions) if c not in choices)
        except Exception as error:  # a down tracking server must not keep the app from serving
            log.warning("could not list adapters from the MLflow registry: %s", error)
    if config.documents:
        choices.append(DOCUMENTS)
    return choices


def choice_label(choice: str) -> str:
    if choice == DOCUMENTS:
        return "Documents (answers from your PDFs, with cited pages)"
    if is_adapter_uri(choice):
        return f"adapter: {choice}"
    return f"model: {choice}"


class ModelPool:
    """Models loaded on first use and kept (up to `max_loaded`); a failed load is reported, not kept.

    Loading is serialized per choice, so ten users picking the same adapter load it once.
    """

    def __init__(self, max_loaded: int = 3, placement=None):
        self.max_loaded = max_loaded
        self.placement = placement
        self._loaded: dict[str, LoadedModel] = {}
        self._lru: list[str] = []
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, choice: str) -> LoadedModel:
        choice = choice.strip()
        with self._guard:
            load_lock = self._loading.setdefault(choice, threading.Lock())
        with load_lock:
            with self._guard:
                if choice in self._loaded:
                    self._touch(choice)
                    return self._loaded[choice]
            loaded = load_chat_model(choice, self.placement)  # raises ModelLoadError
            with self._guard:
                self._loaded[choice] = loaded
                self._touch(choice)
                while len(self._lru) > self.max_loaded:
                    # A reply still streaming from the evicted model keeps its own reference.
                    self._loaded.pop(self._lru.pop(0), None)
            return loaded

    def loaded(self) -> dict[str, LoadedModel]:
        with self._guard:
            return dict(self._loaded)

    def _touch(self, choice: str) -> None:
        if choice in self._lru:
            self._lru.remove(choice)
        self._lru.append(choice)


# --- per-session state on the server ------------------------------------------------------------


@dataclass
class _Session:
    running: dict[int, tuple[threading.Event, threading.Event]] = field(default_factory=dict)  # stop, done
    generations: deque = field(default_factory=lambda: deque(maxlen=20))


class Sessions:
    """Per browser session (Gradio's session hash): the stop switches of its running replies and
    a log of its last generations. The conversation itself stays in the browser session."""

    def __init__(self):
        self._sessions: dict[str, _Session] = {}
        self._guard = threading.Lock()
        self._ids = itertools.count(1)

    def _get(self, session: str) -> _Session:
        return self._sessions.setdefault(session, _Session())

    @contextlib.contextmanager
    def generation(self, session: str) -> Iterator[threading.Event]:
        """A stop switch for one reply; registered while the reply runs."""
        stop, done = threading.Event(), threading.Event()
        with self._guard:
            key = next(self._ids)
            self._get(session).running[key] = (stop, done)
        try:
            yield stop
        finally:
            done.set()
            with self._guard:
                self._get(session).running.pop(key, None)

    def stop(self, session: str, wait_s: float = 10.0) -> int:
        """Stop every reply of the session and wait until their generation threads ended."""
        with self._guard:
            running = list(self._get(session).running.values())
        for stop, _ in running:
            stop.set()
        deadline = time.monotonic() + wait_s
        for _, done in running:
            done.wait(max(0.0, deadline - time.monotonic()))
        return len(running)

    def record(self, session: str, entry: dict) -> None:
        with self._guard:
            self._get(session).generations.append(entry)

    def log(self, session: str) -> list[dict]:
        with self._guard:
            return list(self._get(session).generations)

    def running_count(self, session: str) -> int:
        with self._guard:
            return len(self._get(session).running)

    def forget(self, session: str) -> None:
        with self._guard:
            self._sessions.pop(session, None)


# --- one chat turn ------------------------------------------------------------------------------


def message_text(content: Any) -> str:
    """The text of a Chatbot message: Gradio 6 hands content over as a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    return ""


def model_messages(history: list[dict], system_prompt: str) -> list[dict]:
    """The conversation as the model sees it: the system prompt, then the turns without notices."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for message in history:
        if (message.get("metadata") or {}).get("title"):
            continue  # notices, errors and cited sources are for the user only
        if message.get("role") in ("user", "assistant"):
            messages.append({"role": message["role"], "content": message_text(message.get("content"))})
    return messages


def _box(title: str, text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": title}}


def format_sources(sources: list[dict]) -> str:
    lines = []
    for source in sources:
        name = os.path.basename(str(source.get("source", "?")))
        page = source.get("page")
        where = f"{name}, page {page}" if page is not None else name
        score = source.get("score")
        lines.append(f"- {where}" + (f" (score {score:.2f})" if isinstance(score, (int, float)) else ""))
    return "\n".join(lines) or "- (no sources)"


class ChatService:
    """The app's server side: one reply at a time per call, streamed as updated histories."""

    def __init__(self, config: ChatAppConfig, pool: ModelPool | None = None):
        self.config = config
        self.pool = pool or ModelPool(config.max_loaded_models)
        self.sessions = Sessions()
        self._rag_config = None

    def rag_config(self):
        if self._rag_config is None:
            from tasks.core.config import load_config
            from tasks.rag import RagConfig

            self._rag_config = load_config(RagConfig, self.config.documents)
        return self._rag_config

    def reply(
        self,
        message: str,
        history: list[dict],
        choice: str,
        system_prompt: str,
        settings: SamplingSettings,
        session: str,
    ) -> Iterator[tuple[list[dict], str]]:
        """Yield (history, notice) as the reply to `message` grows; empty input is ignored."""
        history = list(history or [])
        if not (message or "").strip():
            yield history, ""
            return
        choice = (choice or "").strip() or self.config.models[0]
        history.append({"role": "user", "content": message})
        yield history, ""
        if choice == DOCUMENTS:
            yield from self._documents_reply(message, history, session)
            return
        entry: dict[str, Any] = {"model": choice, "settings": dataclasses.asdict(settings), "status": "loading"}
        started = time.monotonic()
        try:
            loaded = self.pool.get(choice)
        except ModelLoadError as error:
            entry["status"] = "load-failed"
            self.sessions.record(session, entry)
            text = f"Could not load {choice}: {error.reason}. Pick another model; the others still work."
            yield [*history, _box(ERROR_TITLE, text)], f"⚠️ {text}"
            return
        messages = model_messages(history, system_prompt)
        try:
            prompt_ids, trimmed = build_prompt(
                loaded.tokenizer, messages, loaded.context_length, settings.max_new_tokens
            )
        except PromptTooLongError as error:
            entry["status"] = "prompt-too-long"
            self.sessions.record(session, entry)
            yield [*history, _box(ERROR_TITLE, str(error))], f"⚠️ {error}"
            return
        notice = ""
        if trimmed:
            notice = (
                f"ℹ️ The conversation was longer than {choice}'s context of {loaded.context_length} "
                f"tokens: {trimmed} oldest message(s) were left out or shortened."
            )
            history.append(_box(NOTICE_TITLE, notice))
        entry.update(prompt_tokens=len(prompt_ids), trimmed_messages=trimmed, status="generating")
        reply = {"role": "assistant", "content": ""}
        history.append(reply)
        first_token_at = None
        with self.sessions.generation(session) as stop:
            stream = stream_reply(loaded, messages, settings, stop_event=stop)
            try:
                for delta in stream:
                    first_token_at = first_token_at or time.monotonic()
                    reply["content"] += delta
                    yield history, notice
                entry["status"] = "stopped" if stop.is_set() else "done"
            except GenerationError as error:
                entry["status"] = "error"
                history.append(_box(ERROR_TITLE, str(error)))
                yield history, f"⚠️ {error}"
            except GeneratorExit:  # Gradio closed us: the user pressed Stop or went away
                entry["status"] = "stopped"
                raise
            finally:
                stop.set()
                stream.close()  # joins the generation thread: the model is free when this returns
                entry.update(
                    reply_chars=len(reply["content"]),
                    reply_tokens=len(loaded.tokenizer.encode(reply["content"], add_special_tokens=False)),
                    time_to_first_token_s=round(first_token_at - started, 3) if first_token_at else None,
                    seconds=round(time.monotonic() - started, 3),
                )
                self.sessions.record(session, entry)
        yield history, notice

    def _documents_reply(self, question: str, history: list[dict], session: str):
        from tasks.rag import answer_question

        started = time.monotonic()
        try:
            result = answer_question(question, self.rag_config())
        except Exception as error:  # a missing index or a failing LLM: say so, keep serving
            log.exception("documents answer failed")
            self.sessions.record(session, {"model": DOCUMENTS, "status": "error"})
            text = f"Documents mode failed: {type(error).__name__}: {error}"
            yield [*history, _box(ERROR_TITLE, text)], f"⚠️ {text}"
            return
        sources = result.get("sources", [])
        self.sessions.record(
            session,
            {
                "model": DOCUMENTS,
                "status": "done",
                "sources": len(sources),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        yield (
            [
                *history,
                {"role": "assistant", "content": result.get("answer", "")},
                _box(SOURCES_TITLE, format_sources(sources)),
            ],
            "",
        )


# --- the Gradio app -----------------------------------------------------------------------------


def build_app(config: ChatAppConfig, service: ChatService | None = None, choices: list[str] | None = None):
    """The Blocks app. `service` is passed in by callers that want to preload models or look at
    sessions; `choices` by callers that listed the picker's choices already."""
    service = service or ChatService(config)
    choices = choices if choices is not None else model_choices(config)
    labelled = [(choice_label(c), c) for c in choices]
    default = config.models[0]
    compare_default = next((c for c in choices if c != default and c != DOCUMENTS), default)
    s = config.sampling

    with gr.Blocks(title=config.title, fill_height=False) as app:
        gr.Markdown(f"# {config.title}")
        with gr.Row():
            model_a = gr.Dropdown(
                labelled,
                value=default,
                label="Model",
                allow_custom_value=True,
                info="a model, an adapter, or type a publish URI (hf://, mlflow://, file://)",
                elem_id="model-a",
                scale=3,
            )
            compare = gr.Checkbox(False, label="Compare with a second model", elem_id="compare", scale=1)
            model_b = gr.Dropdown(
                labelled,
                value=compare_default,
                label="Second model",
                allow_custom_value=True,
                visible=False,
                elem_id="model-b",
                scale=3,
            )
        with gr.Row():
            with gr.Column():
                chat_a = gr.Chatbot(label="Chat", elem_id="chat-a", height=420, buttons=["copy"])
                notice_a = gr.Markdown(elem_id="notice-a")
            with gr.Column(visible=False) as column_b:
                chat_b = gr.Chatbot(label="Second model", elem_id="chat-b", height=420, buttons=["copy"])
                notice_b = gr.Markdown(elem_id="notice-b")
        with gr.Row():
            textbox = gr.Textbox(
                placeholder="Type a message and press Enter",
                show_label=False,
                elem_id="message",
                scale=6,
                autofocus=True,
            )
            submit = gr.Button("Submit", variant="primary", elem_id="submit", scale=1)
            stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
            clear = gr.Button("Clear", elem_id="clear", scale=1)
        with gr.Accordion("Advanced options", open=False, elem_id="advanced"):
            system_prompt = gr.Textbox(
                config.system_prompt,
                label="System prompt",
                lines=2,
                elem_id="system-prompt",
                placeholder="empty: the model's own default system prompt",
            )
            temperature = gr.Slider(
                0.0, 2.0, value=s.temperature, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature"
            )
            top_p = gr.Slider(0.05, 1.0, value=s.top_p, step=0.05, label="Top-p", elem_id="top-p")
            top_k = gr.Slider(0, 200, value=s.top_k, step=1, label="Top-k (0 = off)", elem_id="top-k")
            repetition_penalty = gr.Slider(
                0.5,
                2.0,
                value=s.repetition_penalty,
                step=0.05,
                label="Repetition penalty",
                elem_id="repetition-penalty",
            )
            max_new_tokens = gr.Slider(
                1, MAX_NEW_TOKENS, value=s.max_new_tokens, step=1, label="Max new tokens", elem_id="max-new-tokens"
            )
        with gr.Accordion("Generation log (this session)", open=False, elem_id="generation-log-box"):
            generation_log = gr.Textbox(
                "[]", show_label=False, lines=6, max_lines=24, interactive=False, elem_id="generation-log"
            )
        gr.Markdown(f"{config.disclaimer}\n\n[Privacy policy]({config.privacy_policy_url})", elem_id="disclaimer")

        # The submitted message, kept after the textbox is cleared; a component (not gr.State) so
        # that it is the first parameter of the /chat API.
        pending = gr.Textbox(visible=False, label="message")
        sliders = [temperature, top_p, top_k, repetition_penalty, max_new_tokens]

        def chat(
            message: str,
            history: list[dict],
            model: str,
            system: str,
            temperature: float,
            top_p: float,
            top_k: int,
            repetition_penalty: float,
            max_new_tokens: int,
            request: gr.Request,
        ):
            """Answer `message` after `history` with `model`; yields (history, notice)."""
            settings = SamplingSettings(
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=int(top_k),
                repetition_penalty=float(repetition_penalty),
                max_new_tokens=int(max_new_tokens),
            )
            yield from service.reply(message, history, model, system, settings, request.session_hash)

        def compare_chat(
            enabled: bool,
            message: str,
            history: list[dict],
            model: str,
            system: str,
            temperature: float,
            top_p: float,
            top_k: int,
            repetition_penalty: float,
            max_new_tokens: int,
            request: gr.Request,
        ):
            """The second model's reply in compare mode; nothing when compare mode is off."""
            if not enabled:
                yield gr.skip(), gr.skip()
                return
            yield from chat(
                message, history, model, system, temperature, top_p, top_k, repetition_penalty, max_new_tokens, request
            )

        def take_message(message: str):
            return "", message

        def stop_replies(request: gr.Request) -> str:
            """Stop this session's replies; returns its generation log (JSON) once their threads ended."""
            service.sessions.stop(request.session_hash)
            return show_log(request)

        def show_log(request: gr.Request) -> str:
            return json.dumps(service.sessions.log(request.session_hash), indent=1)

        def refresh_choices():
            fresh = [(choice_label(c), c) for c in model_choices(config)]
            return gr.update(choices=fresh), gr.update(choices=fresh)

        taken = gr.on(
            [textbox.submit, submit.click],
            take_message,
            [textbox],
            [textbox, pending],
            api_visibility="private",
            concurrency_limit=None,
        )
        answer_a = taken.then(
            chat,
            [pending, chat_a, model_a, system_prompt, *sliders],
            [chat_a, notice_a],
            api_name="chat",
            concurrency_id="generate",
        )
        answer_b = taken.then(
            compare_chat,
            [compare, pending, chat_b, model_b, system_prompt, *sliders],
            [chat_b, notice_b],
            api_name="compare",
            concurrency_id="generate",
        )
        for answer in (answer_a, answer_b):  # whichever panel finishes last shows the complete log
            answer.then(show_log, None, generation_log, api_visibility="private", concurrency_limit=None)
        stop.click(
            stop_replies, None, generation_log, cancels=[answer_a, answer_b], api_name="stop", concurrency_limit=None
        )
        clear.click(
            lambda: ([], [], "", ""),
            None,
            [chat_a, chat_b, notice_a, notice_b],
            api_visibility="private",
            concurrency_limit=None,
        )
        compare.change(
            lambda on: (gr.update(visible=on), gr.update(visible=on)),
            compare,
            [model_b, column_b],
            api_visibility="private",
            concurrency_limit=None,
        )
        if config.list_registry:
            app.load(refresh_choices, None, [model_a, model_b], api_visibility="private", concurrency_limit=None)

        def forget_session(request: gr.Request):
            service.sessions.forget(request.session_hash)

        app.unload(forget_session)
    app.queue(max_size=config.server.max_queue, default_concurrency_limit=config.server.concurrency_limit)
    app.chat_service = service  # for the flow's preload and for tests that inspect the server side
    return app


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server itself will: connections of a previous run in TIME_WAIT do not block the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"server.port: {host}:{port} is not free ({error.strerror}); stop what runs "
                f"there or pick another port with --set server.port=N"
            ) from None


def launch(app, config: ChatAppConfig) -> str:
    """Serve the app in background threads; returns its URL. share stays off: no public tunnel."""
    from tasks.core.secrets import install_redaction

    check_port_free(config.server.host, config.server.port)
    auth = resolve_auth(config.server)
    if auth:
        install_redaction(auth[1])  # the password never reaches a log, even from a library
    app.launch(
        server_name=config.server.host,
        server_port=config.server.port,
        share=False,
        auth=auth,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        footer_links=["api"],
    )
    return f"http://{config.server.host}:{config.server.port}/"


def serve_until_stopped(app, seconds: float | None = None) -> None:
    """Block while the app serves: forever (until the process is stopped or cancelled) or `seconds`."""
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while app.is_running and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
    finally:
        app.close()  # frees the port at once, also when a cancellation interrupts the wait
