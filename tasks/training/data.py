"""Instruction data: every format brought to one shape, split for evaluation, tokenized.

The one internal shape is TRL's conversational prompt/completion:
    {"prompt": [{"role": ..., "content": ...}, ...], "completion": [{"role": "assistant", "content": ...}]}
so the model's own chat template renders it and the loss covers the completion only.

Rows come from `tasks.training.rows` (local files, a Hub dataset id, or the chatterbot corpus on
PyPI: the offline demo). Every malformed row is reported with its file and row number; by default
nothing trains until the data is clean (`on_bad_rows: drop` reports and drops them instead).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tasks.core.models import chat_template_ids
from tasks.training.config import DataOptions
from tasks.training.rows import (
    BadRow,
    DataError,
    Message,
    Row,
    fingerprint,
    normalize_records,
    parse_messages,
    read_records,
    refuse_bad_rows,
)

FORMATS = ("alpaca", "prompt_completion", "messages", "sharegpt")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}


@dataclass(frozen=True)
class SftSummary:
    """What `lora-finetune` trains and evaluates on, in numbers."""

    train_rows: int
    eval_rows: int
    format: str
    bad_rows: int
    fingerprint: str


@dataclass
class SftData:
    train: list[Row]
    eval: list[Row]
    format: str
    bad_rows: list[BadRow] = field(default_factory=list)
    fingerprint: str = ""

    def summary(self) -> SftSummary:
        return SftSummary(len(self.train), len(self.eval), self.format, len(self.bad_rows), self.fingerprint)


# --- one shape for every format ---------------------------------------------------------------


def detect_format(record: dict[str, Any]) -> str:
    keys = set(record)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    raise DataError(
        f"cannot detect the row format from columns {sorted(keys)}; expected one of: "
        "instruction/input/output (alpaca), prompt/completion, messages, conversations (sharegpt)"
    )


def _text(record: dict[str, Any], key: str, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise ValueError(f"missing field '{key}'")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"field '{key}' is empty")
    return value


def _split_last_assistant(messages: list[Message], key: str) -> Row:
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"field '{key}' must end with an assistant message")
    if len(messages) < 2:
        raise ValueError(f"field '{key}' needs at least one message before the assistant's reply")
    return {"prompt": messages[:-1], "completion": [messages[-1]]}


def normalize(record: Any, fmt: str) -> Row:
    """One record of format `fmt` as a prompt/completion row; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a mapping, got {type(record).__name__}")
    if fmt == "alpaca":
        instruction, extra = _text(record, "instruction"), _text(record, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return {
            "prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": _text(record, "output")}],
        }
    if fmt == "prompt_completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, list) or isinstance(completion, list):
            return {"prompt": parse_messages(prompt, "prompt"), "completion": parse_messages(completion, "completion")}
        return {
            "prompt": [{"role": "user", "content": _text(record, "prompt")}],
            "completion": [{"role": "assistant", "content": _text(record, "completion")}],
        }
    if fmt == "messages":
        return _split_last_assistant(parse_messages(record.get("messages"), "messages"), "messages")
    if fmt == "sharegpt":
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ValueError("field 'conversations' must be a non-empty list")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ROLES:
                raise ValueError(f"conversations[{i}] needs 'from' in {sorted(SHAREGPT_ROLES)}")
            messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")})
        return _split_last_assistant(parse_messages(messages, "conversations"), "conversations")
    raise DataError(f"data.format: unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def read_rows(
    source: str,
    fmt: str = "auto",
    split: str = "train",
    system_prompt: str | None = None,
    data_dir: str | None = None,
) -> tuple[list[Row], list[BadRow], str]:
    """Every good row of `source` in the internal shape, every bad one reported, and the format.

    With fmt=auto the first record that is a mapping decides the format of them all.
    """
    detected = fmt

    def to_row(record: Any) -> tuple[Row, str]:
        nonlocal detected
        if detected == "auto" and isinstance(record, dict):
            detected = detect_format(record)
        return normalize(record, detected if detected != "auto" else "alpaca"), detected

    read = normalize_records(read_records(source, split, data_dir), to_row, system_prompt)
    if detected == "auto":
        raise DataError(f"{source}: no readable rows")
    return [r.row for r in read.rows], read.bad, detected


def load_sft_data(options: DataOptions) -> SftData:
    """Train and held-out rows in the internal shape; bad rows fail the load or are dropped."""
    o = options
    train_rows, bad, fmt = read_rows(o.train, o.format, o.split, o.system_prompt, o.data_dir)
    if o.eval:
        eval_rows, eval_bad, _ = read_rows(o.eval, o.format, o.split, o.system_prompt, o.data_dir)
        bad += eval_bad
    else:
        shuffled = train_rows[:]
        random.Random(o.seed).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * o.eval_fraction))
        eval_rows, train_rows = shuffled[:n_eval], shuffled[n_eval:]
    refuse_bad_rows(bad, o.on_bad_rows)
    if o.max_train_rows:
        train_rows = train_rows[: o.max_train_rows]
    if o.max_eval_rows:
        eval_rows = eval_rows[: o.max_eval_rows]
    if not train_rows or not eval_rows:
        raise DataError(
            f"{o.train}: {len(train_rows)} training and {len(eval_rows)} held-out rows; need at least one each"
        )
    return SftData(
        train=train_rows, eval=eval_rows, format=fmt, bad_rows=bad, fingerprint=fingerprint(train_rows + eval_rows)
    )


# --- tokenization -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSummary:
    rows: int
    truncated: int
    dropped: int
    tokens: int


@dataclass
class Tokenized:
    examples: list[dict[str, list[int]]]  # input_ids + completion_mask, what the trainer consumes
    truncated: int  # rows cut to max_length (completion kept in part)
    dropped: int  # rows whose prompt alone fills max_length: nothing left to learn from
    tokens: int

    def summary(self) -> TokenSummary:
        return TokenSummary(len(self.examples), self.truncated, self.dropped, self.tokens)


def tokenize_rows(rows: list[Row], tokenizer, max_length: int) -> Tokenized:
    """Render each row with the model's chat template; mask the prompt out of the loss."""
    examples, truncated, dropped, tokens = [], 0, 0, 0
    for row in rows:
        prompt_ids = chat_template_ids(tokenizer, row["prompt"], add_generation_prompt=True)
        full_ids = chat_template_ids(tokenizer, row["prompt"] + row["completion"], add_generation_prompt=False)
        # Where the two renderings diverge is where the completion starts (templates may differ slightly).
        prompt_len = next(
            (i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(len(prompt_ids), len(full_ids))
        )
        if prompt_len >= max_length - 1:
            dropped += 1
            continue
        if len(full_ids) > max_length:
            truncated += 1
            full_ids = full_ids[:max_length]
        mask = [0] * prompt_len + [1] * (len(full_ids) - prompt_len)
        examples.append({"input_ids": full_ids, "completion_mask": mask})
        tokens += len(full_ids)
    return Tokenized(examples, truncated, dropped, tokens)
