"""One chat turn on the server: the user's message in, the reply streamed out as growing histories.

`ChatService.reply` answers with a model from the pool, or from the documents (rag-query) when
the Documents choice is picked; every turn is recorded in its session's generation log, and a
failure (a model that does not load, a prompt that cannot fit, generate() failing) is shown in the
chat as an error box while the app keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

from tasks.chat.choices import DOCUMENTS, Endpoint, endpoint_of
from tasks.chat.config import ChatAppConfig
from tasks.chat.generation import GenerationError, stream_reply
from tasks.chat.history import (
    ERROR_TITLE,
    NOTICE_TITLE,
    SOURCES_TITLE,
    box,
    format_sources,
    model_messages,
    reply_key,
)
from tasks.chat.loading import LoadedModel, ModelLoadError
from tasks.chat.model_pool import ModelPool
from tasks.chat.prompts import PromptTooLongError, build_prompt
from tasks.chat.sampling import SamplingSettings
from tasks.chat.sessions import Sessions

log = logging.getLogger(__name__)

Update = tuple[list[dict], str]  # (the chat history so far, the notice shown under the chat)


class UpdatePacer:
    """Whether a streaming reply is due for its next page update: the first token at once, then at
    most one update every `interval_s` (the final, complete reply is always sent after the loop)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return True


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
    ) -> Iterator[Update]:
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
        endpoint = endpoint_of(choice)
        if endpoint:
            yield from self._endpoint_reply(endpoint, history, system_prompt, settings, session)
            return
        entry: dict[str, Any] = {"model": choice, "settings": dataclasses.asdict(settings), "status": "loading"}
        started = time.monotonic()  # the turn's time includes loading the model
        try:
            loaded = self.pool.get(choice)
        except ModelLoadError as error:
            entry.update(status="load-failed", error=error.reason)
            self.sessions.record(session, entry)
            text = f"Could not load {choice}: {error.reason}. Pick another model; the others still work."
            yield [*history, box(ERROR_TITLE, text)], f"⚠️ {text}"
            return
        yield from self._model_reply(loaded, history, system_prompt, settings, session, entry, started)

    def _model_reply(
        self,
        loaded: LoadedModel,
        history: list[dict],
        system_prompt: str,
        settings: SamplingSettings,
        session: str,
        entry: dict[str, Any],
        started: float,
    ) -> Iterator[Update]:
        messages = model_messages(history, system_prompt)
        try:
            prompt_ids, trimmed = build_prompt(
                loaded.tokenizer, messages, loaded.context_length, settings.max_new_tokens
            )
        except PromptTooLongError as error:
            entry["status"] = "prompt-too-long"
            self.sessions.record(session, entry)
            yield [*history, box(ERROR_TITLE, str(error))], f"⚠️ {error}"
            return
        notice = ""
        if trimmed:
            notice = (
                f"ℹ️ The conversation was longer than {loaded.name}'s context of {loaded.context_length} "
                f"tokens: {trimmed} oldest message(s) were left out or shortened."
            )
            history.append(box(NOTICE_TITLE, notice))
        entry.update(served=loaded.name, prompt_tokens=len(prompt_ids), trimmed_messages=trimmed, status="generating")
        reply = {"role": "assistant", "content": ""}
        history.append(reply)
        first_token_at = None
        with self.sessions.generation(session) as stop:
            stream = stream_reply(loaded, messages, settings, stop_event=stop)
            pace = UpdatePacer(self.config.server.stream_interval_s)
            try:
                for delta in stream:
                    first_token_at = first_token_at or time.monotonic()
                    reply["content"] += delta
                    if pace.due():
                        yield history, notice
                entry["status"] = "stopped" if stop.is_set() else "done"
            except GenerationError as error:
                entry["status"] = "error"
                history.append(box(ERROR_TITLE, str(error)))
                yield history, f"⚠️ {error}"
            except GeneratorExit:  # Gradio closed us: the user pressed Stop or went away
                entry["status"] = "stopped"
                raise
            finally:
                stop.set()
                stream.close()  # joins the generation thread: the model is free when this returns
                entry.update(
                    reply_chars=len(reply["content"]),
                    reply_key=reply_key(reply["content"]),  # how a vote finds the generation it judges
                    reply_tokens=len(loaded.tokenizer.encode(reply["content"], add_special_tokens=False)),
                    time_to_first_token_s=round(first_token_at - started, 3) if first_token_at else None,
                    seconds=round(time.monotonic() - started, 3),
                )
                self.sessions.record(session, entry)
        yield history, notice

    def _endpoint_reply(
        self,
        endpoint: Endpoint,
        history: list[dict],
        system_prompt: str,
        settings: SamplingSettings,
        session: str,
    ) -> Iterator[Update]:
        """Stream the reply from an OpenAI-compatible server; a down server is named, the app keeps serving."""
        from openai import APIError

        from tasks.chat.backends import ChatModelOptions, make_chat_model

        entry: dict[str, Any] = {"model": endpoint.choice, "settings": dataclasses.asdict(settings)}
        started, first_token_at = time.monotonic(), None
        options = ChatModelOptions(
            provider="openai",
            model=endpoint.model,
            base_url=endpoint.base_url,
            api_key_secret=self.config.endpoint_key_secret,
            temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens,
        )
        messages = [(m["role"], m["content"]) for m in model_messages(history, system_prompt)]
        reply = {"role": "assistant", "content": ""}
        with self.sessions.generation(session) as stop:
            # top_k is no OpenAI field; llama.cpp and vLLM read it from the body all the same.
            stream = make_chat_model(options).stream(
                messages, top_p=settings.top_p, extra_body={"top_k": settings.top_k}
            )
            try:
                pace = UpdatePacer(self.config.server.stream_interval_s)
                for chunk in stream:
                    if stop.is_set():
                        break
                    if chunk.text:
                        first_token_at = first_token_at or time.monotonic()
                        reply["content"] += chunk.text
                        if pace.due():
                            yield [*history, reply], ""
                entry["status"] = "stopped" if stop.is_set() else "done"
            except (APIError, OSError) as error:
                entry["status"] = "unreachable" if not first_token_at else "error"
                text = (
                    f"The server at {endpoint.base_url} (model {endpoint.model}) failed: {type(error).__name__}: "
                    f"{error}. Pick another model; the others still work."
                )
                yield [*history, *([reply] if reply["content"] else []), box(ERROR_TITLE, text)], f"⚠️ {text}"
                return
            except GeneratorExit:  # Gradio closed us: the user pressed Stop or went away
                entry["status"] = "stopped"
                raise
            finally:
                stream.close()  # closes the HTTP response: the server ends the request and frees its slot
                entry.update(
                    reply_chars=len(reply["content"]),
                    reply_key=reply_key(reply["content"]),  # how a vote finds the generation it judges
                    time_to_first_token_s=round(first_token_at - started, 3) if first_token_at else None,
                    seconds=round(time.monotonic() - started, 3),
                )
                self.sessions.record(session, entry)
        yield [*history, reply], ""

    def _documents_reply(self, question: str, history: list[dict], session: str) -> Iterator[Update]:
        from tasks.rag import answer_question

        started = time.monotonic()
        try:
            result = answer_question(question, self.rag_config())
        except Exception as error:  # a missing index or a failing LLM: say so, keep serving
            log.exception("documents answer failed")
            self.sessions.record(session, {"model": DOCUMENTS, "status": "error"})
            text = f"Documents mode failed: {type(error).__name__}: {error}"
            yield [*history, box(ERROR_TITLE, text)], f"⚠️ {text}"
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
                box(SOURCES_TITLE, format_sources(sources)),
            ],
            "",
        )
