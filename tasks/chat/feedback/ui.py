"""The chat page's feedback controls: thumbs on every reply (Gradio's `like` event), the compare-mode
pick buttons, "Clear my ratings", the storage notice and the per-version statistics."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from tasks.chat.feedback.collect import FeedbackCollector

PICKS = (
    ("left", "⬅️ Left is better", "pick-left"),
    ("tie", "Tie", "pick-tie"),
    ("right", "Right is better ➡️", "pick-right"),
)


@dataclass
class FeedbackControls:
    pick_row: gr.Row
    picks: dict[str, gr.Button]
    clear: gr.Button
    message: gr.Markdown
    stats: gr.Textbox | None = None  # added by add_stats, inside the generation-log panel


def add_controls() -> FeedbackControls:
    """The pick buttons (shown in compare mode), Clear my ratings and the message line, where they are called."""
    with gr.Row(visible=False, elem_id="pick-row") as pick_row:
        picks = {verdict: gr.Button(label, elem_id=elem_id, size="sm") for verdict, label, elem_id in PICKS}
    with gr.Row():
        message = gr.Markdown(elem_id="feedback-message")
        clear = gr.Button("Clear my ratings", elem_id="clear-ratings", size="sm", scale=0)
    return FeedbackControls(pick_row, picks, clear, message)


def add_stats(controls: FeedbackControls) -> None:
    """The per-version statistics box, where it is called (the generation-log panel)."""
    controls.stats = gr.Textbox(
        "{}",
        label="Judgements per model version (all users): thumbs, compare wins/losses/ties, win rate",
        lines=4,
        max_lines=16,
        interactive=False,
        elem_id="feedback-stats",
    )


def wire(controls: FeedbackControls, collector: FeedbackCollector, chats, models, system_prompt, compare):
    """Connect the controls: `chats` and `models` are the (left, right) Chatbots and model pickers.
    Returns the function that renders the statistics (for the page load)."""
    private = {"api_visibility": "private", "concurrency_limit": None}

    def show_stats() -> str:
        return json.dumps(collector.stats(), indent=1, ensure_ascii=False)

    def rater(history, model, system, data: gr.LikeData, request: gr.Request):
        return collector.rate(history, data.index, data.liked, model, system, request.session_hash)

    for chat, model in zip(chats, models):
        chat.like(rater, [chat, model, system_prompt], controls.message, **private).then(
            show_stats, None, controls.stats, **private
        )
    for verdict, button in controls.picks.items():

        def pick(history_a, history_b, model_a, model_b, system, request: gr.Request, verdict=verdict):
            return collector.pick(verdict, history_a, history_b, model_a, model_b, system, request.session_hash)

        button.click(pick, [*chats, *models, system_prompt], controls.message, **private).then(
            show_stats, None, controls.stats, **private
        )

    def clear(request: gr.Request):
        return collector.clear(request.session_hash)

    controls.clear.click(clear, None, controls.message, **private).then(show_stats, None, controls.stats, **private)
    compare.change(lambda on: gr.update(visible=on), compare, controls.pick_row, **private)
    return show_stats
