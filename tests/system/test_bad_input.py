"""Bad input, refused with a specific message, and nothing else lost.

The cases other test modules already check are listed in docs/bad-input.md with their tests; this
module adds the rest: the DPO and pdf-index configs, datasets with every kind of bad row at once
(the rest still trains, counted), rows too long for model.max_length, and invalid UTF-8 in a
JSON array.
"""

from __future__ import annotations

import json

import pytest

from tasks.core.config import ConfigError, load_config
from tasks.training import data
from tasks.training.config import DataOptions

# --- configs ----------------------------------------------------------------------------------


def dpo_config(overrides):
    from tasks.training.config import DpoFinetuneConfig

    return load_config(DpoFinetuneConfig, "configs/dpo_demo.yaml", overrides)


def index_config(overrides):
    from tasks.rag.config import PdfIndexConfig

    return load_config(PdfIndexConfig, "configs/pdf_index.yaml", overrides)


@pytest.mark.parametrize(
    "build, override, message",
    [
        (dpo_config, "dpo.betta=0.1", "unknown key 'dpo.betta'"),
        (dpo_config, "dpo.beta=strong", "dpo.beta: expected a number, got 'strong'"),
        (dpo_config, "dpo.beta=0", "dpo.beta: must be positive, got 0.0"),
        (dpo_config, "train.learning_rate=-1e-5", "train.learning_rate: must be positive, got -1e-05"),
        (dpo_config, "lora.r=0", "lora.r: must be a positive integer, got 0"),
        (dpo_config, "dpo.max_prompt_tokens=500", "dpo.max_prompt_tokens"),
        (index_config, "chunk.sise=100", "unknown key 'chunk.sise'"),
        (index_config, "chunk.size=big", "chunk.size: expected an integer, got 'big'"),
        (index_config, "chunk.overlap=900", "chunk.overlap: must be in [0, chunk.size=600), got 900"),
        (index_config, "fetch.timeout_s=-1", "fetch.timeout_s: must be positive, got -1.0"),
        (index_config, "store.kind=chroma", "store.kind: expected one of 'milvus' | 'weaviate', got 'chroma'"),
        (index_config, "store.uri=ftp://x/y", "store.uri: milvus takes a file path or an http(s) URL"),
        (index_config, "store.collection=1-bad", "store.collection: must be letters, digits and underscores"),
    ],
)
def test_flow_configs_refuse_bad_values_naming_the_key(build, override, message):
    with pytest.raises(ConfigError) as error:
        build([override])
    assert message in str(error.value)


def test_a_missing_config_file_names_the_path(tmp_path):
    from tasks.training.config import DpoFinetuneConfig

    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'nope.yaml'}"):
        load_config(DpoFinetuneConfig, tmp_path / "nope.yaml")


def test_a_wrong_type_in_a_yaml_file_names_the_key(tmp_path):
    from tasks.training.config import LoraFinetuneConfig

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: [10]\nlora:\n  r: 8\n")
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer, got \[10\]"):
        load_config(LoraFinetuneConfig, path)


# --- datasets ---------------------------------------------------------------------------------


def test_every_kind_of_bad_row_is_named_and_the_good_rows_all_survive(tmp_path):
    good = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(10)]
    lines = [json.dumps(r).encode() for r in good[:4]]
    lines += [
        json.dumps({"instruction": "No output"}).encode(),  # row 5: missing column
        json.dumps({"instruction": "", "output": "x"}).encode(),  # row 6: empty string
        json.dumps({"instruction": ["a", "list"], "output": "x"}).encode(),  # row 7: wrong type
        b'{"instruction": "caf\xe9", "output": "latin-1, not UTF-8"}',  # row 8: invalid UTF-8
        json.dumps([1, 2]).encode(),
    ]  # row 9: not a record
    lines += [json.dumps(r).encode() for r in good[4:]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    with pytest.raises(data.DataError) as error:
        data.load_sft_data(DataOptions(train=str(path), eval_fraction=0.2))
    message = str(error.value)
    assert message.startswith("5 malformed row(s); fix them or set data.on_bad_rows=drop")
    for expected in (
        "mixed.jsonl row 5: missing field 'output'",
        "mixed.jsonl row 6: field 'instruction' is empty",
        "mixed.jsonl row 7: field 'instruction' must be a string, got list",
        "mixed.jsonl row 8: invalid UTF-8 at byte 20",
        "mixed.jsonl row 9: expected a mapping, got list",
    ):
        assert expected in message

    kept = data.load_sft_data(DataOptions(train=str(path), eval_fraction=0.2, on_bad_rows="drop"))
    assert next(str(b) for b in kept.bad_rows) == "mixed.jsonl row 5: missing field 'output'"
    questions = sorted(r["prompt"][-1]["content"] for r in kept.train + kept.eval)
    assert questions == sorted(r["instruction"] for r in good)  # every good row, none twice


def test_invalid_utf8_in_a_json_array_names_the_file_and_byte(tmp_path):
    path = tmp_path / "array.json"
    path.write_bytes(b'[{"instruction": "ok", "output": "fine"}, {"instruction": "\xff", "output": "x"}]')
    with pytest.raises(data.DataError, match=f"{path}: invalid UTF-8 at byte 59"):
        data.load_sft_data(DataOptions(train=str(path)))


def test_rows_longer_than_max_length_are_truncated_or_dropped_and_counted(tiny_model_dir):
    from tasks.core.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    short = {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello."}]}
    long_reply = {
        "prompt": [{"role": "user", "content": "Tell me"}],
        "completion": [{"role": "assistant", "content": "word " * 400}],
    }
    long_prompt = {
        "prompt": [{"role": "user", "content": "question " * 400}],
        "completion": [{"role": "assistant", "content": "Yes."}],
    }
    tokenized = data.tokenize_rows([short, long_reply, long_prompt, short], tokenizer, max_length=64)
    assert tokenized.summary().truncated == 1 and tokenized.summary().dropped == 1
    assert len(tokenized.examples) == 3  # the short rows and the truncated one train
    assert all(len(e["input_ids"]) <= 64 for e in tokenized.examples)
    truncated = tokenized.examples[1]
    assert len(truncated["input_ids"]) == 64 and sum(truncated["completion_mask"]) > 0  # some reply is kept


def test_a_data_file_that_does_not_exist_is_named():
    with pytest.raises(data.DataError, match="data file not found: /nonexistent/train.jsonl"):
        data.load_sft_data(DataOptions(train="/nonexistent/train.jsonl"))


def test_the_chatterbot_corpus_one_line_conversation_is_reported_not_trained():
    rows, bad, fmt = data.read_rows("pypi:chatterbot-corpus/english")
    assert fmt == "messages" and rows
    assert "trivia.yml row 14: conversation has fewer than two turns" in [str(b) for b in bad]
