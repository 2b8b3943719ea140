"""Preference data: every format to one shape, bad rows reported by file and row, prompts fitted, held-out split."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from tasks.training.config import DataOptions
from tasks.training.preferences import (
    fit_prompt,
    load_preferences,
    normalize_pair,
    parse_hh_turns,
    prompt_tokens,
    read_pairs,
    split_hh_transcripts,
)
from tasks.training.rows import DataError, read_records

USER = lambda text: {"role": "user", "content": text}  # noqa: E731
BOT = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


# --- formats ----------------------------------------------------------------------------------


def test_explicit_strings_become_chat_messages():
    row, fmt = normalize_pair({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."})
    assert fmt == "prompt_chosen_rejected"
    assert row == {"prompt": [USER("Hi?")], "chosen": [BOT("Hello!")], "rejected": [BOT("Go away.")]}


def test_explicit_message_lists_keep_the_conversation():
    prompt = [{"role": "system", "content": "Be kind."}, USER("Hi?"), BOT("Hello."), USER("Help me.")]
    row, _ = normalize_pair({"prompt": prompt, "chosen": [BOT("Sure.")], "rejected": [BOT("No.")]})
    assert row["prompt"] == prompt and row["chosen"] == [BOT("Sure.")] and row["rejected"] == [BOT("No.")]


def test_ultrafeedback_binarized_prompt_repeated_in_replies_is_stripped():
    record = {
        "prompt": "Name a colour.",
        "chosen": [USER("Name a colour."), BOT("Blue.")],
        "rejected": [USER("Name a colour."), BOT("Seven.")],
    }
    row, _ = normalize_pair(record)
    assert row == {"prompt": [USER("Name a colour.")], "chosen": [BOT("Blue.")], "rejected": [BOT("Seven.")]}


def test_ultrafeedback_message_lists_share_their_prompt():
    shared = [USER("Hi"), BOT("Hello, how can I help?"), USER("A joke please")]
    row, fmt = normalize_pair({"chosen": shared + [BOT("Why did the chicken...")], "rejected": shared + [BOT("No.")]})
    assert fmt == "chosen_rejected_messages"
    assert row["prompt"] == shared
    assert row["chosen"] == [BOT("Why did the chicken...")] and row["rejected"] == [BOT("No.")]


def test_hh_transcripts_split_into_prompt_turns_and_two_replies():
    prompt = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?\n\nHuman: I'm locked out."
    row, fmt = normalize_pair(
        {"chosen": prompt + "\n\nAssistant: Call a locksmith.", "rejected": prompt + "\n\nAssistant: Use a bobby pin."}
    )
    assert fmt == "hh_rlhf"
    assert row["prompt"] == [USER("How do I pick a lock?"), BOT("Why do you want to?"), USER("I'm locked out.")]
    assert row["chosen"] == [BOT("Call a locksmith.")] and row["rejected"] == [BOT("Use a bobby pin.")]


def test_hh_reply_containing_a_human_marker_stays_one_reply():
    # Some HH replies quote a "\n\nHuman:" themselves; the prompt ends at the last *shared* Assistant marker.
    prompt = "\n\nHuman: Write a dialogue."
    chosen = prompt + "\n\nAssistant: Sure:\n\nHuman: hi\n\nAssistant: hello"
    rejected = prompt + "\n\nAssistant: No."
    turns, chosen_reply, rejected_reply = split_hh_transcripts(chosen, rejected)
    assert turns == [USER("Write a dialogue.")]
    assert chosen_reply == "Sure:\n\nHuman: hi\n\nAssistant: hello" and rejected_reply == "No."


def test_hh_replies_with_a_common_start_split_at_the_marker():
    prompt = "\n\nHuman: Is it safe?"
    turns, chosen, rejected = split_hh_transcripts(
        prompt + "\n\nAssistant: It is not safe.", prompt + "\n\nAssistant: It is fine."
    )
    assert turns == [USER("Is it safe?")] and (chosen, rejected) == ("It is not safe.", "It is fine.")


def test_parse_hh_turns_rejects_a_transcript_without_human_start():
    with pytest.raises(ValueError, match="does not start with 'Human:'"):
        parse_hh_turns("\n\nAssistant: hello")


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}, "chosen equals rejected"),
        ({"prompt": "Hi", "chosen": "", "rejected": "No."}, "field 'chosen' is missing or empty"),
        ({"prompt": "Hi", "chosen": "Yes."}, "field 'rejected' is missing or empty"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}, "share no prompt"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"},
            "chosen equals rejected",
        ),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant:  "},
            "the rejected reply is empty",
        ),
        ({"chosen": [USER("a"), BOT("b")], "rejected": [USER("z"), BOT("c")]}, "share no prompt"),
        ({"chosen": [USER("a"), BOT("b")], "rejected": "text"}, "must both be transcripts"),
        ({"prompt": "Hi", "chosen": [{"role": "robot", "content": "x"}], "rejected": "No."}, "unknown role"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_bad_pairs_are_rejected_with_the_reason(record, reason):
    with pytest.raises(ValueError, match=reason):
        normalize_pair(record)


# --- whole sources --------------------------------------------------------------------------


def test_bad_rows_are_reported_by_file_and_row_and_the_rest_loads(tmp_path):
    good = [{"prompt": f"Hi {i}", "chosen": "Hello.", "rejected": "Bye."} for i in range(2)]
    path = tmp_path / "prefs.jsonl"
    lines = [
        json.dumps(good[0]),
        json.dumps({"prompt": "Hi", "chosen": "Same", "rejected": "Same"}),
        "{not json",
        json.dumps({"prompt": "Hello", "chosen": "", "rejected": "x"}),
        json.dumps(good[1]),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as failed:
        load_preferences(DataOptions(train=str(path), eval_fraction=0.5))
    message = str(failed.value)
    assert "3 malformed preference row(s)" in message
    for expected in (
        "prefs.jsonl row 2: chosen equals rejected",
        "prefs.jsonl row 3: invalid JSON",
        "prefs.jsonl row 4: field 'chosen' is missing or empty",
    ):
        assert expected in message
    loaded = load_preferences(DataOptions(train=str(path), eval_fraction=0.5, on_bad_rows="drop"))
    assert [str(b) for b in loaded.bad_rows] == [line.split("  ")[-1] for line in message.splitlines()[1:]]
    assert len(loaded.train) + len(loaded.eval) == 2


def test_every_format_loads_from_files_into_one_shape(tmp_path):
    records = [
        {"prompt": "Q1", "chosen": "good 1", "rejected": "bad 1"},
        {"chosen": [USER("Q2"), BOT("good 2")], "rejected": [USER("Q2"), BOT("bad 2")]},
        {"chosen": "\n\nHuman: Q3\n\nAssistant: good 3", "rejected": "\n\nHuman: Q3\n\nAssistant: bad 3"},
        {"prompt": [USER("Q4")], "chosen": [BOT("good 4")], "rejected": [BOT("bad 4")]},
    ]
    loaded = load_preferences(DataOptions(train=write_jsonl(tmp_path / "mixed.jsonl", records), eval_fraction=0.25))
    assert loaded.formats == {"prompt_chosen_rejected": 2, "chosen_rejected_messages": 1, "hh_rlhf": 1}
    rows = sorted(loaded.train + loaded.eval, key=lambda r: r["prompt"][-1]["content"])
    for i, row in enumerate(rows, start=1):
        assert row == {"prompt": [USER(f"Q{i}")], "chosen": [BOT(f"good {i}")], "rejected": [BOT(f"bad {i}")]}


def test_parquet_and_a_separate_eval_file(tmp_path):
    import datasets

    train = [{"prompt": f"Q{i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(6)]
    datasets.Dataset.from_list(train).to_parquet(str(tmp_path / "train.parquet"))
    held_out = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "E", "chosen": "yes", "rejected": "no"}])
    loaded = load_preferences(DataOptions(train=str(tmp_path / "train.parquet"), eval=held_out, max_train_rows=4))
    assert len(loaded.train) == 4 and loaded.eval == [
        {"prompt": [USER("E")], "chosen": [BOT("yes")], "rejected": [BOT("no")]}
    ]


def test_held_out_split_never_shares_a_prompt_with_training(tmp_path):
    records = [{"prompt": f"Question {i % 10}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    loaded = load_preferences(DataOptions(train=write_jsonl(tmp_path / "p.jsonl", records), eval_fraction=0.2, seed=3))
    train_prompts = {r["prompt"][0]["content"] for r in loaded.train}
    eval_prompts = {r["prompt"][0]["content"] for r in loaded.eval}
    assert not train_prompts & eval_prompts
    assert len(loaded.eval) == 8 and len(loaded.train) == 32
    again = load_preferences(DataOptions(train=write_jsonl(tmp_path / "p.jsonl", records), eval_fraction=0.2, seed=3))
    assert again.eval == loaded.eval and again.fingerprint == loaded.fingerprint


def test_system_prompt_is_put_first(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Q{i}", "chosen": "y", "rejected": "n"} for i in range(4)])
    loaded = load_preferences(DataOptions(train=path, system_prompt="Be brief.", eval_fraction=0.25))
    assert all(r["prompt"][0] == {"role": "system", "content": "Be brief."} for r in loaded.train + loaded.eval)


# --- fitting prompts to max_prompt_tokens -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from tasks.core.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_fit_prompt_drops_oldest_turns_first(tiny_tokenizer):
    old = [USER("The quick brown fox jumps over the lazy dog. " * 4), BOT("Computers run programs. " * 4)]
    recent = [USER("What is your favorite book?")]
    budget = prompt_tokens(tiny_tokenizer, recent) + 2
    assert prompt_tokens(tiny_tokenizer, old + recent) > budget
    assert fit_prompt(old + recent, tiny_tokenizer, budget) == recent
    assert fit_prompt(old + recent, tiny_tokenizer, 10_000) == old + recent
    system = [{"role": "system", "content": "Be brief."}]
    assert fit_prompt(system + old + recent, tiny_tokenizer, budget + 20)[:1] == system
    assert fit_prompt(recent, tiny_tokenizer, 3) is None


def test_too_long_prompts_are_trimmed_or_reported(tmp_path, tiny_tokenizer):
    long_history = "\n\nHuman: " + "Please answer politely and briefly. " * 30 + "\n\nAssistant: Sure."
    records = [
        {
            "chosen": long_history + "\n\nHuman: Hi\n\nAssistant: Hello.",
            "rejected": long_history + "\n\nHuman: Hi\n\nAssistant: Go away.",
        },
        {"prompt": "Thank you very much for asking. " * 40, "chosen": "ok", "rejected": "no"},
        {"prompt": "Hi", "chosen": "Hello.", "rejected": "Bye."},
    ]
    path = write_jsonl(tmp_path / "long.jsonl", records)
    budget = prompt_tokens(tiny_tokenizer, [USER("Hi")]) + 5
    loaded = load_preferences(DataOptions(train=path, eval=path), tokenizer=tiny_tokenizer, max_prompt_tokens=budget)
    assert loaded.trimmed_prompts == 2  # the first row, in train and in eval
    assert [str(b) for b in loaded.too_long] == [
        f"long.jsonl row 2: the last user turn alone is longer than dpo.max_prompt_tokens={budget}"
    ] * 2
    assert {r["prompt"][-1]["content"] for r in loaded.train} == {"Hi"}
    assert len(loaded.train) == len(loaded.eval) == 2
    assert all(prompt_tokens(tiny_tokenizer, r["prompt"]) <= budget for r in loaded.train + loaded.eval)


# --- the offline demo and the real data -------------------------------------------------------


def test_demo_pairs_prefer_the_corpus_reply_over_an_off_topic_one():
    pairs, bad, _formats = read_pairs("pypi:chatterbot-corpus/english", seed=1)
    assert len(pairs) > 1000 and not bad
    replies_by_file: dict[str, set[str]] = {}
    for origin, _, record, error in read_records("pypi:chatterbot-corpus/english"):
        if error is None:
            replies_by_file.setdefault(origin, set()).add(record["messages"][-1]["content"])
    for pair in pairs[:200]:
        assert pair.row["chosen"][0]["content"] in replies_by_file[pair.origin]
        other_files = [f for f, replies in replies_by_file.items() if pair.row["rejected"][0]["content"] in replies]
        assert any(f != pair.origin for f in other_files)  # a reply from another topic's file
        assert pair.row["rejected"] != pair.row["chosen"]
    again, _, _ = read_pairs("pypi:chatterbot-corpus/english", seed=1)
    assert [p.row for p in again] == [p.row for p in pairs]


def test_real_hh_rlhf_pairs_load_and_empty_replies_are_reported(sample_data):
    source = sample_data / "hh_rlhf_harmless_600.jsonl.gz"
    loaded = load_preferences(DataOptions(train=str(source), on_bad_rows="drop", eval_fraction=0.2, max_eval_rows=None))
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        raw = [json.loads(line) for line in handle]
    empty_chosen = [i for i, r in enumerate(raw, start=1) if not r["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()]
    assert [b.row for b in loaded.bad_rows] == empty_chosen and empty_chosen
    assert all(str(b).startswith("hh_rlhf_harmless_600.jsonl.gz row ") for b in loaded.bad_rows)
    assert len(loaded.train) + len(loaded.eval) == len(raw) - len(empty_chosen)
    assert loaded.formats == {"hh_rlhf": len(raw) - len(empty_chosen)}
    for row in loaded.train[:100]:
        assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
        assert "\n\nHuman:" not in row["prompt"][-1]["content"]


def test_the_hh_recipe_reads_the_harmless_base_folder_of_the_hub_dataset(sample_data, tmp_path, monkeypatch):
    import datasets

    from tasks.core.config import load_config
    from tasks.training.config import DpoFinetuneConfig

    # A local folder laid out like the Hub repo Anthropic/hh-rlhf stands in for the Hub.
    repo = tmp_path / "hh-rlhf"
    (repo / "harmless-base").mkdir(parents=True)
    (repo / "helpful-base").mkdir()
    shutil.copy(sample_data / "hh_rlhf_harmless_600.jsonl.gz", repo / "harmless-base" / "train.jsonl.gz")
    helpful = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    write_jsonl(repo / "helpful-base" / "train.jsonl", [helpful])
    load_dataset = datasets.load_dataset
    monkeypatch.setattr(
        datasets, "load_dataset", lambda path, **kwargs: load_dataset({"Anthropic/hh-rlhf": str(repo)}[path], **kwargs)
    )
    recipe = load_config(DpoFinetuneConfig, "configs/dpo_hh_rlhf.yaml").data
    assert (recipe.train, recipe.data_dir, recipe.split) == ("Anthropic/hh-rlhf", "harmless-base", "train")
    loaded = load_preferences(recipe)
    assert len(loaded.train) + len(loaded.eval) + len(loaded.bad_rows) == 600  # harmless-base only
    assert [b.row for b in loaded.bad_rows] == [87, 517]  # its empty chosen replies, reported
    assert not any(row["prompt"] == [USER("Hi")] for row in loaded.train + loaded.eval)
