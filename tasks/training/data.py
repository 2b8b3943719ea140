"""Instruction data: read rows from anywhere, bring every format to one shape, report bad rows.

The one internal shape is TRL's conversational prompt/completion:
    {"prompt": [{"role": ..., "content": ...}, ...], "completion": [{"role": "assistant", "content": ...}]}
so the model's own chat template renders it and the loss covers the completion only.

Sources: a local .json/.jsonl/.parquet/.csv file, a Hub dataset id (through `datasets`), or
`pypi:chatterbot-corpus/LANGUAGE` (dialogue pairs shipped in a PyPI package: the offline demo).
Every malformed row is reported with its file and row number; by default nothing trains until the
data is clean (`on_bad_rows: drop` reports and drops them instead).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, str]
Row = dict[str, list[Message]]

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


class DataError(ValueError):
    """The data cannot be used at all (missing file, unknown format, bad rows under on_bad_rows=fail)."""


@dataclass(frozen=True)
class BadRow:
    source: str
    row: int  # 1-based, as a person counts lines or records
    reason: str

    def __str__(self) -> str:
        return f"{self.source} row {self.row}: {self.reason}"


@dataclass
class SftData:
    train: list[Row]
    eval: list[Row]
    format: str
    bad_rows: list[BadRow] = field(default_factory=list)
    fingerprint: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "train_rows": len(self.train),
            "eval_rows": len(self.eval),
            "format": self.format,
            "bad_rows": len(self.bad_rows),
            "fingerprint": self.fingerprint,
        }


# --- reading raw records ----------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw.decode("utf-8")), None
            except UnicodeDecodeError as error:
                yield number, None, f"invalid UTF-8 at byte {error.start}"
            except json.JSONDecodeError as error:
                yield number, None, f"invalid JSON ({error.msg})"


def _read_json(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        records = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: invalid UTF-8 at byte {error.start}") from None
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON lines saved with a .json suffix
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}: invalid JSON at line {error.lineno} ({error.msg})") from None
    if isinstance(records, dict):  # {"train": [...]} or {"data": [...]}
        lists = [v for v in records.values() if isinstance(v, list)]
        records = lists[0] if len(lists) == 1 else None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records")
    for number, record in enumerate(records, start=1):
        yield number, record, None


def _read_with_datasets(
    kind: str, path: str, split: str = "train", data_dir: str | None = None
) -> Iterator[tuple[int, Any, str | None]]:
    import datasets

    loaded = (
        datasets.load_dataset(kind, data_files=path, split=split)
        if kind
        else datasets.load_dataset(path, split=split, data_dir=data_dir)
    )
    for number, record in enumerate(loaded, start=1):
        yield number, record, None


def _read_chatterbot(language: str) -> Iterator[tuple[str, int, Any, str | None]]:
    import yaml

    found = importlib.util.find_spec("chatterbot_corpus")
    if found is None or not found.submodule_search_locations:
        raise DataError(
            "data.train: the PyPI package chatterbot-corpus is not installed (pip install --no-deps chatterbot-corpus)"
        )
    folder = Path(next(iter(found.submodule_search_locations))) / "data" / language
    if not folder.is_dir():
        raise DataError(f"data.train: chatterbot-corpus has no language {language!r}")
    for path in sorted(folder.glob("*.yml")):
        conversations = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []
        for number, turns in enumerate(conversations, start=1):
            # A corpus conversation is a list of alternating utterances: user, bot, user, bot...
            if isinstance(turns, list) and len(turns) >= 2:
                turns = turns[: len(turns) - len(turns) % 2]
                record = {
                    "messages": [
                        {"role": "user" if i % 2 == 0 else "assistant", "content": str(t)} for i, t in enumerate(turns)
                    ]
                }
                yield str(path.name), number, record, None
            else:
                yield str(path.name), number, None, "conversation has fewer than two turns"


def read_records(
    source: str, split: str = "train", data_dir: str | None = None
) -> Iterator[tuple[str, int, Any, str | None]]:
    """(source file, row number, record or None, read error or None) for every record.

    `split` and `data_dir` (a folder inside the dataset repo) apply to Hub dataset ids only.
    """
    if source.startswith("pypi:chatterbot-corpus"):
        _, _, language = source.partition("/")
        yield from _read_chatterbot(language or "english")
        return
    path = Path(source).expanduser()
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    readers = {".jsonl": _read_jsonl, ".json": _read_json}
    if path.exists():
        if suffix in readers:
            rows = readers[suffix](path)
        elif suffix in (".parquet", ".csv"):
            rows = _read_with_datasets(suffix.lstrip("."), str(path))
        elif suffix in (".jsonl.gz", ".json.gz"):
            rows = _read_with_datasets("json", str(path))
        else:
            raise DataError(f"{source}: unsupported file type {suffix!r} (json, jsonl, parquet, csv)")
        for number, record, error in rows:
            yield path.name, number, record, error
        return
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise DataError(f"data file not found: {source}")
    for number, record, error in _read_with_datasets("", source, split, data_dir):  # a Hub dataset id
        yield source, number, record, error


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


def parse_messages(value: Any, key: str) -> list[Message]:
    """A list of {role, content} messages, checked; ValueError names what is wrong."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field '{key}' must be a non-empty list of messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f"{key}[{i}] must be a mapping with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"{key}[{i}] has an unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{key}[{i}] has empty or non-string content")
        out.append({"role": role, "content": content})
    return out


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
    """Every good row of `source` in the internal shape, every bad one reported, and the format."""
    rows: list[Row] = []
    bad: list[BadRow] = []
    for origin, number, record, error in read_records(source, split, data_dir):
        if error is None and fmt == "auto" and isinstance(record, dict):
            fmt = detect_format(record)
        if error is None:
            try:
                row = normalize(record, fmt if fmt != "auto" else "alpaca")
            except ValueError as problem:
                error = str(problem)
        if error is not None:
            bad.append(BadRow(origin, number, error))
            continue
        if system_prompt and row["prompt"][0]["role"] != "system":
            row["prompt"].insert(0, {"role": "system", "content": system_prompt})
        rows.append(row)
    if fmt == "auto":
        raise DataError(f"{source}: no readable rows")
    return rows, bad, fmt


def fingerprint(rows: list[Row]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


def load_sft_data(
    train: str,
    eval: str | None = None,
    format: str = "auto",
    split: str = "train",
    eval_fraction: float = 0.1,
    max_train_rows: int | None = None,
    max_eval_rows: int | None = None,
    on_bad_rows: str = "fail",
    system_prompt: str | None = None,
    seed: int = 42,
    data_dir: str | None = None,
) -> SftData:
    """Train and held-out rows in the internal shape; bad rows fail the load or are dropped."""
    train_rows, bad, fmt = read_rows(train, format, split, system_prompt, data_dir)
    if eval:
        eval_rows, eval_bad, _ = read_rows(eval, format, split, system_prompt, data_dir)
        bad += eval_bad
    else:
        shuffled = train_rows[:]
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * eval_fraction))
        eval_rows, train_rows = shuffled[:n_eval], shuffled[n_eval:]
    if bad and on_bad_rows == "fail":
        listing = "\n".join(f"  {b}" for b in bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        raise DataError(f"{len(bad)} malformed row(s); fix them or set data.on_bad_rows=drop:\n{listing}")
    if max_train_rows:
        train_rows = train_rows[:max_train_rows]
    if max_eval_rows:
        eval_rows = eval_rows[:max_eval_rows]
    if not train_rows or not eval_rows:
        raise DataError(
            f"{train}: {len(train_rows)} training and {len(eval_rows)} held-out rows; need at least one each"
        )
    return SftData(
        train=train_rows, eval=eval_rows, format=fmt, bad_rows=bad, fingerprint=fingerprint(train_rows + eval_rows)
    )


# --- tokenization -----------------------------------------------------------------------------


@dataclass
class Tokenized:
    examples: list[dict[str, list[int]]]  # input_ids + completion_mask, what the trainer consumes
    truncated: int  # rows cut to max_length (completion kept in part)
    dropped: int  # rows whose prompt alone fills max_length: nothing left to learn from
    tokens: int

    def summary(self) -> dict[str, int]:
        return {"rows": len(self.examples), "truncated": self.truncated, "dropped": self.dropped, "tokens": self.tokens}


def _template_ids(tokenizer, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    # transformers 5 returns a dict from apply_chat_template unless return_dict=False.
    return list(
        tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
    )


def tokenize_rows(rows: list[Row], tokenizer, max_length: int) -> Tokenized:
    """Render each row with the model's chat template; mask the prompt out of the loss."""
    examples, truncated, dropped, tokens = [], 0, 0, 0
    for row in rows:
        prompt_ids = _template_ids(tokenizer, row["prompt"], add_generation_prompt=True)
        full_ids = _template_ids(tokenizer, row["prompt"] + row["completion"], add_generation_prompt=False)
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
