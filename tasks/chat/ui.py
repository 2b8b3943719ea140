"""The chat app's page: a Gradio chatbot over the models this project trains.

`build_app(config)` returns a `gr.Blocks` app (serve it with `tasks.chat.server.launch`). What a
user gets:
- a chat with history, Submit / Enter, the reply streamed as it is generated, Stop (which ends the
  generation thread on the server too) and Clear;
- a model picker: the base model(s) from config, the adapter versions in the MLflow Model
  Registry, any publish URI typed in, and "Documents" (answers from `rag-query`, with the cited
  pages under the reply);
- compare mode: the same prompt and settings sent to a second choice, streamed side by side;
- "Advanced options": system prompt and the sampling sliders (tasks/chat/sampling.py), which reach
  `generate` unchanged;
- the disclaimer and the privacy-policy link; a per-session generation log;
- feedback (`feedback.enabled`): thumbs on every reply, "left / tie / right" picks in compare mode,
  "Clear my ratings", and the judgements per model version (tasks/chat/feedback/).

The API: /chat and /compare take the message, the history, the model, the system prompt, then one
value per sampling setting in declared order; /stop stops the caller's replies.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator

import gradio as gr

from tasks.chat.choices import DOCUMENTS, labelled_choices, model_choices
from tasks.chat.config import ChatAppConfig
from tasks.chat.feedback import ui as feedback_ui
from tasks.chat.feedback.collect import FeedbackCollector
from tasks.chat.history import STORED_KEY, restored, stored
from tasks.chat.sampling import SETTINGS, SamplingSettings
from tasks.chat.service import ChatService
from tasks.publishing import ADAPTER_SCHEMES


def sampling_event(handler: Callable[..., Iterator], leading: dict[str, type]) -> Callable[..., Iterator]:
    """`handler(*leading values, settings, request)` as a Gradio event function whose inputs are
    the `leading` components, then one slider per sampling setting.

    Gradio names the API's parameters after the event function's signature and hands the request
    to the parameter annotated gr.Request, so that signature is spelled out from the declaration.
    """

    def event(*args):
        *values, request = args
        settings = SamplingSettings.from_values(values[len(leading) :])
        yield from handler(*values[: len(leading)], settings, request)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    annotations = {**leading, **{spec.name: spec.type for spec in SETTINGS}, "request": gr.Request}
    event.__signature__ = inspect.Signature([inspect.Parameter(n, kind, annotation=a) for n, a in annotations.items()])
    event.__annotations__ = annotations
    event.__name__, event.__doc__ = handler.__name__, handler.__doc__
    return event


def sliders(start: SamplingSettings) -> list[gr.Slider]:
    """One slider per sampling setting, starting at `start`'s values."""
    return [
        gr.Slider(
            spec.minimum,
            spec.maximum,
            value=getattr(start, spec.name),
            step=spec.step,
            label=spec.label,
            elem_id=spec.elem_id,
        )
        for spec in SETTINGS
    ]


def build_app(
    config: ChatAppConfig,
    service: ChatService | None = None,
    choices: list[str] | None = None,
    feedback: FeedbackCollector | None = None,
):
    """The Blocks app. `service` is passed in by callers that want to preload models or look at
    sessions; `choices` by callers that listed the picker's choices already; `feedback` by callers
    that choose its store or how a choice resolves to a version."""
    service = service or ChatService(config)
    collecting = config.feedback.enabled
    feedback = feedback or (FeedbackCollector(config.feedback, service.sessions) if collecting else None)
    thumbs = ("Like", "Dislike") if collecting else None
    choices = choices if choices is not None else model_choices(config)
    labelled = labelled_choices(choices)
    default = choices[0] if choices else config.models[0]
    compare_default = next((c for c in choices if c != default and c != DOCUMENTS), default)

    with gr.Blocks(title=config.title, fill_height=False) as app:
        gr.Markdown(f"# {config.title}")
        with gr.Row():
            model_a = gr.Dropdown(
                labelled,
                value=default,
                label="Model",
                allow_custom_value=True,
                info=f"a model, an adapter, or type a publish URI ({ADAPTER_SCHEMES})",
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
                chat_a = gr.Chatbot(
                    label="Chat", elem_id="chat-a", height=420, buttons=["copy"], feedback_options=thumbs
                )
                notice_a = gr.Markdown(elem_id="notice-a")
            with gr.Column(visible=False) as column_b:
                chat_b = gr.Chatbot(
                    label="Second model", elem_id="chat-b", height=420, buttons=["copy"], feedback_options=thumbs
                )
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
        controls = feedback_ui.add_controls() if collecting else None
        with gr.Accordion("Advanced options", open=False, elem_id="advanced"):
            system_prompt = gr.Textbox(
                config.system_prompt,
                label="System prompt",
                lines=2,
                elem_id="system-prompt",
                placeholder="empty: the model's own default system prompt",
            )
            sampling = sliders(config.sampling)
        with gr.Accordion("Generation log (this session)", open=False, elem_id="generation-log-box"):
            generation_log = gr.Textbox(
                "[]", show_label=False, lines=6, max_lines=24, interactive=False, elem_id="generation-log"
            )
            if controls:
                feedback_ui.add_stats(controls)
        notice = f"\n\n{config.feedback.notice}" if collecting else ""
        gr.Markdown(
            f"{config.disclaimer}{notice}\n\n[Privacy policy]({config.privacy_policy_url})", elem_id="disclaimer"
        )

        # The conversation in the browser's storage: a reload, or another replica, picks it up.
        saved = gr.BrowserState(
            stored([]), storage_key=STORED_KEY, secret=os.environ.get(config.server.state_secret_env) or None
        )

        # The submitted message, kept after the textbox is cleared; a component (not gr.State) so
        # that it is the first parameter of the /chat API.
        pending = gr.Textbox(visible=False, label="message")
        # The names and types of the /chat API's parameters that come before the sampling settings.
        turn = {"message": str, "history": list[dict], "model": str, "system": str}

        def chat(
            message: str, history: list[dict], model: str, system: str, settings: SamplingSettings, request: gr.Request
        ):
            """Answer `message` after `history` with `model`; yields (history, notice)."""
            yield from service.reply(message, history, model, system, settings, request.session_hash)

        def compare_chat(
            enabled: bool,
            message: str,
            history: list[dict],
            model: str,
            system: str,
            settings: SamplingSettings,
            request: gr.Request,
        ):
            """The second model's reply in compare mode; nothing when compare mode is off."""
            if not enabled:
                yield gr.skip(), gr.skip()
                return
            yield from chat(message, history, model, system, settings, request)

        def take_message(message: str):
            return "", message

        def stop_replies(request: gr.Request) -> str:
            """Stop this session's replies; returns its generation log (JSON) once their threads ended."""
            service.sessions.stop(request.session_hash)
            return show_log(request)

        def show_log(request: gr.Request) -> str:
            return json.dumps(service.sessions.log(request.session_hash), indent=1)

        def refresh_choices():
            fresh = labelled_choices(model_choices(config))
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
            sampling_event(chat, turn),
            [pending, chat_a, model_a, system_prompt, *sampling],
            [chat_a, notice_a],
            api_name="chat",
            concurrency_id="generate",
        )
        answer_b = taken.then(
            sampling_event(compare_chat, {"enabled": bool, **turn}),
            [compare, pending, chat_b, model_b, system_prompt, *sampling],
            [chat_b, notice_b],
            api_name="compare",
            concurrency_id="generate",
        )
        for answer in (answer_a, answer_b):  # whichever panel finishes last shows the complete log
            answer.then(show_log, None, generation_log, api_visibility="private", concurrency_limit=None)
        # Saved also after a stopped reply: the browser keeps what the user saw.
        answer_a.then(stored, chat_a, saved, api_visibility="private", concurrency_limit=None)
        stop.click(stored, chat_a, saved, api_visibility="private", concurrency_limit=None)
        stop.click(
            stop_replies, None, generation_log, cancels=[answer_a, answer_b], api_name="stop", concurrency_limit=None
        )
        clear.click(
            lambda: ([], [], "", "", stored([])),
            None,
            [chat_a, chat_b, notice_a, notice_b, saved],
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
        app.load(restored, saved, chat_a, api_visibility="private", concurrency_limit=None)
        if controls:
            show_stats = feedback_ui.wire(
                controls, feedback, (chat_a, chat_b), (model_a, model_b), system_prompt, compare
            )
            app.load(show_stats, None, controls.stats, api_visibility="private", concurrency_limit=None)
        if config.list_registry:
            app.load(refresh_choices, None, [model_a, model_b], api_visibility="private", concurrency_limit=None)

        def forget_session(request: gr.Request):
            service.sessions.forget(request.session_hash)

        app.unload(forget_session)
    app.queue(max_size=config.server.max_queue, default_concurrency_limit=config.server.concurrency_limit)
    app.chat_service = service  # for the flow's preload and for tests that inspect the server side
    app.feedback = feedback
    return app
