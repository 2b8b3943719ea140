"""Reading training rows, the one way both kinds of data use (instruction rows and preference pairs).

Sources: a local .json/.jsonl/.parquet/.csv file (also .json.gz/.jsonl.gz), a Hub dataset id
(through `datasets`), or `pypi:chatterbot-corpus/LANGUAGE` (dialogues shipped in a PyPI package:
the offline demo). `read_records` yields every raw record with its file and 1-based row number;
`normalize_records` turns them into rows with a format's own normalizer and reports every bad one
with its file and row number; `refuse_bad_rows` stops the run on them unless
`data.on_bad_rows=drop`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, str]
Row = dict[str, list[Message]]  # a conversation in parts: {"prompt": [...], "completion" or "chosen"/"rejected": [...]}
RawRecord = tuple[str, int, Any, str | None]  # (source file, row number, record or None, read error or None)

CHATTERBOT = "pypi:chatterbot-corpus"


class DataError(ValueError):
    """The data cannot be used at all (missing file, unknown format, bad rows under on_bad_rows=fail)."""


@dataclass(frozen=True)
class BadRow:
    source: str
    row: int  # 1-based, as a person counts lines or records
    reason: str

    def __str__(self) -> str:
        return f"{self.source} row {self.row}: {self.reason}"


# --- raw records ------------------------------------------------------------------------------


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


def _read_chatterbot(language: str) -> Iterator[RawRecord]:
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


def read_records(source: str, split: str = "train", data_dir: str | None = None) -> Iterator[RawRecord]:
    """(source file, row number, record or None, read error or None) for every record."""
    if source.startswith(CHATTERBOT):
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


# --- records to rows --------------------------------------------------------------------------


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


@dataclass
class SourcedRow:
    """A good row and where it came from (so a later check can still name its file and row)."""

    row: Row
    origin: str
    number: int


@dataclass
class ReadRows:
    rows: list[SourcedRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)  # good rows per detected format


def normalize_records(
    records: Iterable[RawRecord], normalize: Callable[[Any], tuple[Row, str]], system_prompt: str | None = None
) -> ReadRows:
    """Every record through `normalize` (its row and format, or a ValueError that says what is wrong).

    A record that could not be read or normalized is reported with its file and row number; a
    DataError (the data as a whole is unusable) stops the read. `system_prompt` goes before every
    prompt that has none.
    """
    read = ReadRows()
    for origin, number, record, error in records:
        if error is None:
            try:
                row, fmt = normalize(record)
            except DataError:
                raise
            except ValueError as problem:
                error = str(problem)
        if error is not None:
            read.bad.append(BadRow(origin, number, error))
            continue
        read.formats[fmt] += 1
        if system_prompt and row["prompt"][0]["role"] != "system":
            row["prompt"].insert(0, {"role": "system", "content": system_prompt})
        read.rows.append(SourcedRow(row, origin, number))
    return read


def refuse_bad_rows(bad: list[BadRow], on_bad_rows: str, what: str = "row") -> None:
    """With `data.on_bad_rows=fail`, nothing trains until the data is clean: list the bad rows."""
    if bad and on_bad_rows == "fail":
        listing = "\n".join(f"  {b}" for b in bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        raise DataError(f"{len(bad)} malformed {what}(s); fix them or set data.on_bad_rows=drop:\n{listing}")


def fingerprint(rows: list[Row]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]
