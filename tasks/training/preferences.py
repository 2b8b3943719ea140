"""Preference data: every format people have, brought to one shape, validated, split for evaluation.

The one internal shape is TRL's conversational preference row, so the model's own chat template
renders it:
    {"prompt":   [{"role": "user", "content": ...}, ...],     # every turn before the replies
     "chosen":   [{"role": "assistant", "content": ...}],     # the preferred reply
     "rejected": [{"role": "assistant", "content": ...}]}     # the dispreferred reply

Formats, detected per row:
- explicit `prompt` / `chosen` / `rejected`, each a string or a list of chat messages (a `chosen`
  list that repeats the prompt, as in UltraFeedback-binarized, has the prompt stripped);
- UltraFeedback-style `chosen` / `rejected` message lists that include the prompt: the messages they
  share are the prompt;
- Anthropic HH-RLHF `chosen` / `rejected` transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ..."): the
  prompt is the shared text up to the last shared "\\n\\nAssistant:" (a naive split breaks: some
  replies themselves contain "\\n\\nHuman:"), split into user/assistant turns.

Sources are those of `tasks.training.rows.read_records` (local json/jsonl/parquet/csv, a Hub id), and
`feedback`: the pairs `feedback-export` made from the chat app's judgements, with its split. The offline
demo, `pypi:chatterbot-corpus/LANGUAGE`, builds pairs from the dialogue corpus shipped on PyPI:
the corpus reply to a question is preferred over a reply taken from a conversation on another topic.

Rows whose chosen equals rejected, that have an empty side, or whose transcripts share no prompt
are reported with file and row number (`data.on_bad_rows`: fail before training, or drop).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tasks.core import models
from tasks.core.defaults import FEEDBACK_DATASET, feedback_dataset_dir
from tasks.training.config import DataOptions, ModelOptions
from tasks.training.rows import (
    CHATTERBOT,
    BadRow,
    DataError,
    Message,
    RawRecord,
    SourcedRow,
    fingerprint,
    normalize_records,
    parse_messages,
    read_records,
    refuse_bad_rows,
)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
PreferenceRow = dict[str, list[Message]]


@dataclass(frozen=True)
class PreferenceSummary:
    """What `dpo-finetune` trains and evaluates on, in numbers, and the rows it reported."""

    train_pairs: int
    eval_pairs: int
    formats: dict[str, int]
    bad_rows: int
    too_long: int
    trimmed_prompts: int
    fingerprint: str
    reported: list[str]  # every malformed or too-long row, with its file and row number

    def metrics(self) -> dict[str, float]:
        """The counts MLflow records."""
        return {
            "data_train_pairs": self.train_pairs,
            "data_eval_pairs": self.eval_pairs,
            "data_bad_rows": self.bad_rows,
            "data_too_long": self.too_long,
        }


@dataclass
class PreferenceData:
    train: list[PreferenceRow]
    eval: list[PreferenceRow]
    formats: dict[str, int]  # rows read per detected format
    bad_rows: list[BadRow] = field(default_factory=list)  # malformed: listed, and dropped or fatal
    too_long: list[BadRow] = field(default_factory=list)  # last user turn alone over max_prompt_tokens: dropped
    trimmed_prompts: int = 0  # prompts whose oldest turns were cut to fit max_prompt_tokens
    fingerprint: str = ""

    def summary(self) -> PreferenceSummary:
        return PreferenceSummary(
            train_pairs=len(self.train),
            eval_pairs=len(self.eval),
            formats=dict(self.formats),
            bad_rows=len(self.bad_rows),
            too_long=len(self.too_long),
            trimmed_prompts=self.trimmed_prompts,
            fingerprint=self.fingerprint,
            reported=[str(b) for b in self.bad_rows + self.too_long],
        )


# --- one row of any format -> the internal shape ----------------------------------------------


def _required(record: dict[str, Any], key: str) -> Any:
    value = record.get(key)
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"field '{key}' is missing or empty")
    if not isinstance(value, (str, list)):
        raise ValueError(f"field '{key}' must be a string or a list of messages, got {type(value).__name__}")
    return value


def parse_hh_turns(text: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [user a, assistant b]."""
    messages: list[Message] = []
    rest = text
    if not rest.lstrip("\n").startswith(HUMAN.strip()):
        raise ValueError("transcript does not start with 'Human:'")
    rest = "\n\n" + rest.lstrip("\n")
    while rest:
        role = "user" if rest.startswith(HUMAN) else "assistant"
        rest = rest[len(HUMAN if role == "user" else ASSISTANT) :]
        ends = [i for i in (rest.find(HUMAN), rest.find(ASSISTANT)) if i >= 0]
        end = min(ends) if ends else len(rest)
        messages.append({"role": role, "content": rest[:end].strip()})
        rest = rest[end:]
    return messages


def split_hh_transcripts(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Two HH transcripts sharing all but the last Assistant turn -> (prompt turns, chosen, rejected)."""
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    if chosen == rejected:
        raise ValueError("chosen equals rejected")
    cut = chosen.rfind(ASSISTANT, 0, shared)  # the final reply starts after the last shared marker
    if cut < 0 or not chosen[:cut].strip():
        raise ValueError("chosen and rejected share no prompt: no common '\\n\\nHuman: ... \\n\\nAssistant:' prefix")
    prompt = parse_hh_turns(chosen[:cut])
    if prompt[-1]["role"] != "user":
        raise ValueError("the shared prompt does not end with a Human turn")
    return prompt, chosen[cut + len(ASSISTANT) :].strip(), rejected[cut + len(ASSISTANT) :].strip()


def _as_reply(value: str | list, key: str, prompt: list[Message]) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    messages = parse_messages(value, key)
    if len(messages) > len(prompt) and messages[: len(prompt)] == prompt:
        messages = messages[len(prompt) :]  # UltraFeedback-binarized repeats the prompt in chosen/rejected
    return messages


def normalize_pair(record: Any) -> tuple[PreferenceRow, str]:
    """(row in the internal shape, detected format); ValueError says what is wrong with the record."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a mapping with chosen/rejected, got {type(record).__name__}")
    chosen, rejected = _required(record, "chosen"), _required(record, "rejected")
    if record.get("prompt") is not None:
        prompt_value = _required(record, "prompt")
        prompt = (
            [{"role": "user", "content": prompt_value}]
            if isinstance(prompt_value, str)
            else parse_messages(prompt_value, "prompt")
        )
        row = {
            "prompt": prompt,
            "chosen": _as_reply(chosen, "chosen", prompt),
            "rejected": _as_reply(rejected, "rejected", prompt),
        }
        fmt = "prompt_chosen_rejected"
    elif isinstance(chosen, list) and isinstance(rejected, list):
        chosen_messages, rejected_messages = parse_messages(chosen, "chosen"), parse_messages(rejected, "rejected")
        if chosen_messages == rejected_messages:
            raise ValueError("chosen equals rejected")
        shared = 0
        while (
            shared < min(len(chosen_messages), len(rejected_messages))
            and chosen_messages[shared] == rejected_messages[shared]
        ):
            shared += 1
        if shared == 0:
            raise ValueError("chosen and rejected share no prompt: their first messages differ")
        row = {
            "prompt": chosen_messages[:shared],
            "chosen": chosen_messages[shared:],
            "rejected": rejected_messages[shared:],
        }
        fmt = "chosen_rejected_messages"
    elif isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen_reply, rejected_reply = split_hh_transcripts(chosen, rejected)
        row = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen_reply}],
            "rejected": [{"role": "assistant", "content": rejected_reply}],
        }
        fmt = "hh_rlhf"
    else:
        raise ValueError(
            "chosen and rejected must both be transcripts (strings) or both message lists, "
            "or come with a 'prompt' field"
        )
    for key in ("chosen", "rejected"):
        if not row[key] or not any(m["content"].strip() for m in row[key]):
            raise ValueError(f"the {key} reply is empty")
    if row["chosen"] == row["rejected"]:
        raise ValueError("chosen equals rejected")
    return row, fmt


# --- the offline demo: pairs built from the chatterbot corpus on PyPI -------------------------


def chatterbot_pairs(source: str, seed: int) -> list[RawRecord]:
    """(file, row, record, error): the corpus reply preferred over an off-topic reply from another file.

    The preference "answer the question that was asked" is one a user wants from any chat model,
    and one the base model does not satisfy by itself: the reference likelihoods prefer the
    corpus reply in only part of the pairs, so what DPO adds is measurable on held-out questions.
    """
    conversations = [
        (origin, number, record) for origin, number, record, error in read_records(source) if error is None
    ]
    rng = random.Random(seed)
    records = []
    for origin, number, record in conversations:
        messages = record["messages"]
        while True:  # a reply from a conversation in another file: another topic
            other_origin, _, other = conversations[rng.randrange(len(conversations))]
            if other_origin != origin and other["messages"][-1]["content"] != messages[-1]["content"]:
                break
        records.append(
            (
                origin,
                number,
                {"prompt": messages[:-1], "chosen": messages[-1:], "rejected": other["messages"][-1:]},
                None,
            )
        )
    return records


# --- reading a whole source, fitting prompts, splitting ---------------------------------------


def read_pairs(
    source: str, split: str = "train", system_prompt: str | None = None, seed: int = 42, data_dir: str | None = None
) -> tuple[list[SourcedRow], list[BadRow], Counter]:
    records = chatterbot_pairs(source, seed) if source.startswith(CHATTERBOT) else read_records(source, split, data_dir)
    read = normalize_records(records, normalize_pair, system_prompt)
    if not read.rows and not read.bad:
        raise DataError(f"{source}: no rows")
    return read.rows, read.bad, read.formats


def prompt_tokens(tokenizer, prompt: list[Message]) -> int:
    return len(models.chat_template_ids(tokenizer, prompt, add_generation_prompt=True))


def fit_prompt(prompt: list[Message], tokenizer, max_tokens: int) -> list[Message] | None:
    """Drop the oldest turns until the rendered prompt fits; None when even its last user turn is too long.

    TRL 1.16 has no max_prompt_length: a prompt that fills max_length leaves no reply tokens and TRL
    drops the pair silently. Cutting whole turns, oldest first, keeps the context the reply answers.
    """
    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = prompt[len(system) :]
    while True:
        if prompt_tokens(tokenizer, system + turns) <= max_tokens:
            return system + turns
        later_users = [i for i, m in enumerate(turns) if m["role"] == "user" and i > 0]
        if not later_users:
            return None
        turns = turns[later_users[0] :]  # start at the next user turn: prompts begin with the user


def _split_by_prompt(
    pairs: list[SourcedRow], eval_fraction: float, seed: int
) -> tuple[list[SourcedRow], list[SourcedRow]]:
    """Hold out whole prompts, so no held-out question was seen in training with another reply."""
    groups: dict[str, list[SourcedRow]] = {}
    for pair in pairs:
        groups.setdefault(json.dumps(pair.row["prompt"], sort_keys=True), []).append(pair)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    want = max(1, round(len(pairs) * eval_fraction))
    held_out: list[SourcedRow] = []
    train: list[SourcedRow] = []
    for key in keys:
        (held_out if len(held_out) < want else train).extend(groups[key])
    random.Random(seed + 1).shuffle(train)
    return train, held_out


def feedback_sources(options: DataOptions) -> DataOptions:
    """`data.train: feedback`: the files feedback-export wrote last, with its own prompt-grouped split
    as the held-out pairs (unless data.eval names other ones)."""
    if options.train != FEEDBACK_DATASET:
        return options
    folder = feedback_dataset_dir()
    train, held_out = folder / "train.jsonl", folder / "eval.jsonl"
    if not train.is_file() or not held_out.is_file():
        raise DataError(
            f"data.train: {FEEDBACK_DATASET}: no exported feedback pairs in {folder}; "
            "run feedback-export first (python -m flows.feedback_export)"
        )
    return dataclasses.replace(options, train=str(train), eval=options.eval or str(held_out))


def load_preferences(options: DataOptions, tokenizer=None, max_prompt_tokens: int | None = None) -> PreferenceData:
    """Train and held-out pairs in the internal shape, prompts fitted to `max_prompt_tokens`.

    The format of each row is detected by itself (`options.format` is for instruction data).
    """
    o = feedback_sources(options)
    train_pairs, bad, formats = read_pairs(o.train, o.split, o.system_prompt, o.seed, o.data_dir)
    if o.eval:
        eval_pairs, eval_bad, eval_formats = read_pairs(o.eval, o.split, o.system_prompt, o.seed, o.data_dir)
        bad += eval_bad
        formats += eval_formats
    else:
        train_pairs, eval_pairs = _split_by_prompt(train_pairs, o.eval_fraction, o.seed)
    refuse_bad_rows(bad, o.on_bad_rows, what="preference row")
    train_pairs = train_pairs[: o.max_train_rows] if o.max_train_rows else train_pairs
    eval_pairs = eval_pairs[: o.max_eval_rows] if o.max_eval_rows else eval_pairs
    too_long: list[BadRow] = []
    trimmed = 0
    if tokenizer is not None and max_prompt_tokens:
        fitted_sets = []
        for pairs in (train_pairs, eval_pairs):
            fitted = []
            for pair in pairs:
                prompt = fit_prompt(pair.row["prompt"], tokenizer, max_prompt_tokens)
                if prompt is None:
                    too_long.append(
                        BadRow(
                            pair.origin,
                            pair.number,
                            f"the last user turn alone is longer than dpo.max_prompt_tokens={max_prompt_tokens}",
                        )
                    )
                    continue
                trimmed += prompt != pair.row["prompt"]
                fitted.append(SourcedRow({**pair.row, "prompt": prompt}, pair.origin, pair.number))
            fitted_sets.append(fitted)
        train_pairs, eval_pairs = fitted_sets
    if not train_pairs or not eval_pairs:
        raise DataError(
            f"{o.train}: {len(train_pairs)} training and {len(eval_pairs)} held-out pairs left; need at least one of each"
        )
    train_rows, eval_rows = [p.row for p in train_pairs], [p.row for p in eval_pairs]
    return PreferenceData(
        train=train_rows,
        eval=eval_rows,
        formats=dict(formats),
        bad_rows=bad,
        too_long=too_long,
        trimmed_prompts=trimmed,
        fingerprint=fingerprint(train_rows + eval_rows),
    )


def load_for_model(model: ModelOptions, options: DataOptions, max_prompt_tokens: int) -> PreferenceData:
    """The pairs `options` name, their prompts measured by `model`'s own tokenizer (chat-template tokens)."""
    tokenizer = models.load_tokenizer(models.resolve_model_path(model.name), model.revision, model.trust_remote_code)
    return load_preferences(options, tokenizer, max_prompt_tokens)
