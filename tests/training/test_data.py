"""Instruction data: every format to one shape, bad rows reported with file and row, tokenization."""

from __future__ import annotations

import json

import pytest

from tasks.core.config import ConfigError, load_config
from tasks.training import data
from tasks.training.config import DataOptions, LoraFinetuneConfig


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


GOOD = {
    "alpaca": {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    "prompt_completion": {"prompt": "Capital of France?", "completion": "Paris."},
    "messages": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    },
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
}


@pytest.mark.parametrize("fmt", list(GOOD))
def test_each_format_is_detected_and_normalized(tmp_path, fmt):
    rows, bad, detected = data.read_rows(str(write_jsonl(tmp_path / "d.jsonl", [GOOD[fmt]] * 3)))
    assert detected == fmt and not bad and len(rows) == 3
    row = rows[0]
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"].strip()
    assert row["prompt"][-1]["role"] == "user"


def test_alpaca_input_joins_the_instruction(tmp_path):
    rows, _, _ = data.read_rows(str(write_jsonl(tmp_path / "a.jsonl", [GOOD["alpaca"]])))
    assert rows[0]["prompt"] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "5"}]


def test_bad_rows_are_reported_with_file_and_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(GOOD["alpaca"]),
        json.dumps({"instruction": "No output here"}),
        json.dumps({"instruction": "Empty", "output": "   "}),
        json.dumps({"instruction": "Typed", "output": 42}),
        "{not json",
        json.dumps(GOOD["alpaca"]),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"instruction": "bad \xff byte", "output": "x"}\n')
    with pytest.raises(data.DataError) as error:
        data.load_sft_data(DataOptions(train=str(path), eval_fraction=0.5))
    message = str(error.value)
    assert "5 malformed row(s)" in message and "data.on_bad_rows=drop" in message
    for expected in (
        "mixed.jsonl row 2: missing field 'output'",
        "mixed.jsonl row 3: field 'output' is empty",
        "mixed.jsonl row 4: field 'output' must be a string, got int",
        "mixed.jsonl row 5: invalid JSON",
        "mixed.jsonl row 7: invalid UTF-8",
    ):
        assert expected in message
    kept = data.load_sft_data(DataOptions(train=str(path), eval_fraction=0.5, on_bad_rows="drop"))
    assert len(kept.train) + len(kept.eval) == 2 and len(kept.bad_rows) == 5


def test_missing_columns_name_the_expected_formats(tmp_path):
    with pytest.raises(data.DataError, match="cannot detect the row format from columns \\['question', 'reply'\\]"):
        data.read_rows(str(write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "reply": "r"}])))


def test_a_missing_file_is_a_clear_error():
    with pytest.raises(data.DataError, match="data file not found: ./nope.jsonl"):
        data.read_rows("./nope.jsonl")


def test_csv_and_parquet_go_through_datasets(tmp_path):
    import datasets

    records = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    datasets.Dataset.from_list(records).to_csv(tmp_path / "d.csv")
    datasets.Dataset.from_list(records).to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        rows, bad, fmt = data.read_rows(str(tmp_path / name))
        assert fmt == "prompt_completion" and len(rows) == 10 and not bad


def test_eval_split_is_seeded_and_disjoint(sample_data):
    alpaca = str(sample_data / "instructions_60.json")
    with pytest.raises(data.DataError, match="instructions_60.json row 23: field 'output' is empty"):
        data.load_sft_data(DataOptions(train=alpaca))  # data as people write it has bad rows: by default nothing trains
    options = DataOptions(train=alpaca, eval_fraction=0.1, max_eval_rows=None, seed=1, on_bad_rows="drop")
    first, again = data.load_sft_data(options), data.load_sft_data(options)
    assert [b.row for b in first.bad_rows] == [23, 47]
    assert first.format == "alpaca" and len(first.train) + len(first.eval) == 60 - len(first.bad_rows)
    assert first.eval == again.eval and first.fingerprint == again.fingerprint
    train_keys = {json.dumps(r, sort_keys=True) for r in first.train}
    assert not any(json.dumps(r, sort_keys=True) in train_keys for r in first.eval[:200])


def test_data_dir_reads_one_folder_of_a_hub_dataset(tmp_path, monkeypatch):
    import datasets

    # A local folder laid out like a Hub dataset repo stands in for the Hub (no network in tests).
    for folder, answer in (("short", "5"), ("long", "Two plus three is five.")):
        (tmp_path / "repo" / folder).mkdir(parents=True)
        write_jsonl(tmp_path / "repo" / folder / "train.jsonl", [{"prompt": "2 + 3?", "completion": answer}] * 4)
    load_dataset = datasets.load_dataset
    hub = {"org/sums": str(tmp_path / "repo")}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kwargs: load_dataset(hub[path], **kwargs))

    assert len(data.read_rows("org/sums")[0]) == 8  # no data_dir: every folder
    loaded = data.load_sft_data(DataOptions(train="org/sums", data_dir="short", eval_fraction=0.25))
    rows = loaded.train + loaded.eval
    assert len(rows) == 4 and {r["completion"][0]["content"] for r in rows} == {"5"}


@pytest.mark.parametrize("value", ["/harmless-base", "../elsewhere", "harmless-base/../..", ""])
def test_data_dir_must_be_a_folder_inside_the_dataset(value):
    with pytest.raises(ConfigError, match="data.data_dir: must be a folder inside the dataset repo"):
        load_config(LoraFinetuneConfig, None, [f"data.data_dir={value}"])
    assert load_config(LoraFinetuneConfig, None, ["data.data_dir=harmless-base"]).data.data_dir == "harmless-base"


def test_explicit_eval_file_and_row_limits(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [GOOD["prompt_completion"]] * 20)
    held = write_jsonl(tmp_path / "e.jsonl", [GOOD["sharegpt"]] * 5)
    loaded = data.load_sft_data(DataOptions(train=str(train), eval=str(held), max_train_rows=7, max_eval_rows=3))
    assert len(loaded.train) == 7 and len(loaded.eval) == 3


def test_the_demo_corpus_reads_from_its_pypi_package():
    loaded = data.load_sft_data(
        DataOptions(train="pypi:chatterbot-corpus/english", on_bad_rows="drop", max_eval_rows=None)
    )
    assert len(loaded.train) > 1500 and loaded.format == "messages"
    # The corpus has one one-line "conversation": reported, not silently lost.
    assert [str(b) for b in loaded.bad_rows] == ["trivia.yml row 14: conversation has fewer than two turns"]


def test_tokenization_masks_the_prompt_and_counts_truncation(tiny_model_dir):
    from tasks.core.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    short = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello there"}],
    }
    long = {
        "prompt": [{"role": "user", "content": "word " * 10}],
        "completion": [{"role": "assistant", "content": "yes " * 300}],
    }
    huge_prompt = {
        "prompt": [{"role": "user", "content": "word " * 400}],
        "completion": [{"role": "assistant", "content": "ok"}],
    }
    out = data.tokenize_rows([short, long, huge_prompt], tokenizer, max_length=128)
    assert out.truncated == 1 and out.dropped == 1 and len(out.examples) == 2
    ids, mask = out.examples[0]["input_ids"], out.examples[0]["completion_mask"]
    completion = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    prompt = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert completion.startswith("Hello there") and "Hi" in prompt and "Hello" not in prompt
    assert len(out.examples[1]["input_ids"]) == 128
