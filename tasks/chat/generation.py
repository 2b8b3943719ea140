"""Streaming chat generation with transformers: shared by the chat app and the local LangChain model.

`stream_reply` yields the reply as it is generated, from a thread that holds the model's lock, and
stops at the next token when asked to (a stop event, or the consumer closing the generator). The
prompt is `build_prompt`'s: the conversation trimmed to the model's context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from tasks.chat.loading import LoadedModel
from tasks.chat.prompts import build_prompt
from tasks.chat.sampling import SamplingSettings


class GenerationError(RuntimeError):
    """generate() failed inside the generation thread; the cause is chained."""


def _stopping_criterion(stopped: Callable[[], bool]):
    from transformers import StoppingCriteria

    class StopWhenAsked(StoppingCriteria):
        """Ends generate() at the next token once `stopped()` is true."""

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), stopped(), dtype=torch.bool, device=input_ids.device)

    return StopWhenAsked()


def stream_reply(
    loaded: LoadedModel, messages: list[dict], settings: SamplingSettings, stop_event: threading.Event | None = None
) -> Iterator[str]:
    """Yield the reply's text as it is generated.

    Setting `stop_event`, or closing the generator, ends generation at the next token; the
    generation thread is always joined before this generator finishes, so the model's lock is
    free again right away.
    """
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    input_ids, _ = build_prompt(loaded.tokenizer, messages, loaded.context_length, settings.max_new_tokens)
    tokenizer = loaded.tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    closed = threading.Event()  # set when the consumer is done, for whatever reason

    def stopped() -> bool:
        return closed.is_set() or (stop_event is not None and stop_event.is_set())

    prompt = torch.tensor([input_ids], device=loaded.model.device)
    kwargs = dict(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([_stopping_criterion(stopped)]),
        pad_token_id=tokenizer.pad_token_id,
        **settings.generate_kwargs(),
    )
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            # Wait for the model's turn, but give up at once when stopped while waiting.
            while not loaded.lock.acquire(timeout=0.05):
                if stopped():
                    return
            try:
                if not stopped():
                    with torch.inference_mode():
                        loaded.model.generate(**kwargs)
            finally:
                loaded.lock.release()
        except BaseException as error:  # reported to the consumer after the join
            failure.append(error)
        finally:
            streamer.end()  # unblocks the consumer, whether generate ran, stopped or failed

    thread = threading.Thread(target=generate, name=f"generate:{loaded.name}", daemon=True)
    thread.start()
    try:
        for text in streamer:
            if text:
                yield text
            if stopped():
                break
    finally:
        closed.set()
        thread.join()
    if failure:
        raise GenerationError(f"generation with {loaded.name!r} failed: {failure[0]}") from failure[0]


def generate_reply(loaded: LoadedModel, messages: list[dict], settings: SamplingSettings) -> str:
    return "".join(stream_reply(loaded, messages, settings))
