"""The chat prompt that fits: a conversation rendered with the model's chat template, trimmed to its context.

Long conversations lose their oldest turns first, and a last message that alone is too long loses
its start; `build_prompt` reports how many messages it dropped or cut, so that a UI can say so.
"""

from __future__ import annotations

ROLES = ("system", "user", "assistant")


class PromptTooLongError(ValueError):
    """Even the system message alone does not leave room for the reply."""


def _render(tokenizer, messages: list[dict]) -> list[int]:
    from tasks.core.models import chat_template_ids  # imports torch: only once a prompt is built

    try:
        return chat_template_ids(tokenizer, messages)
    except Exception as error:  # jinja2's TemplateError: e.g. a template without a system role
        raise ValueError(f"the model's chat template rejected the conversation: {error}") from error


def _truncate_last_message(tokenizer, head: list[dict], last: dict, budget: int) -> list[int]:
    """Keep the end of the last message (where the question usually is) so the prompt fits."""
    overhead = len(_render(tokenizer, [*head, {**last, "content": ""}]))
    if overhead > budget:
        raise PromptTooLongError(
            f"the system message and chat template alone take {overhead} tokens; only {budget} are "
            "left for the prompt (context length minus max_new_tokens): shorten the system message "
            "or lower max_new_tokens"
        )
    content_ids = tokenizer.encode(last["content"], add_special_tokens=False)
    keep = budget - overhead
    # Re-tokenizing decoded text can merge differently: shrink until the rendered prompt fits.
    while True:
        text = tokenizer.decode(
            content_ids[max(0, len(content_ids) - keep) :] if keep > 0 else [], skip_special_tokens=True
        )
        ids = _render(tokenizer, [*head, {**last, "content": text}])
        if len(ids) <= budget or keep <= 0:
            return ids
        keep -= max(1, len(ids) - budget)


def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise ValueError("messages: empty conversation, nothing to answer")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or message.get("role") not in ROLES
        ):
            raise ValueError(
                f"messages[{index}]: expected {{'role': system|user|assistant, 'content': str}}, got {message!r}"
            )


def build_prompt(tokenizer, messages: list[dict], context_length: int, max_new_tokens: int) -> tuple[list[int], int]:
    """Token ids of the chat prompt that fits `context_length - max_new_tokens`, and how many
    turns (messages) were dropped or truncated to make it fit.

    Leading system messages are always kept. Oldest turns go first, a user message together with
    the assistant reply after it; the last message is never dropped, only cut from its start.
    """
    _check_messages(messages)
    budget = context_length - max_new_tokens
    if budget <= 0:
        raise PromptTooLongError(
            f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in a context of {context_length} tokens"
        )
    n_system = 0
    while n_system < len(messages) - 1 and messages[n_system]["role"] == "system":
        n_system += 1
    system, turns = list(messages[:n_system]), list(messages[n_system:])
    dropped = 0
    while True:
        ids = _render(tokenizer, system + turns)
        if len(ids) <= budget:
            return ids, dropped
        if len(turns) == 1:
            return _truncate_last_message(tokenizer, system, turns[0], budget), dropped + 1
        # A user turn goes with the assistant reply that follows it; never drop the last message.
        width = 2 if turns[0]["role"] == "user" and turns[1]["role"] == "assistant" and len(turns) > 2 else 1
        turns = turns[width:]
        dropped += width
