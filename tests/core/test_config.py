"""The typed config loader: YAML + --set overrides, rejected with a message that names the key."""

from __future__ import annotations

import pytest

from tasks.core.config import ConfigError, flatten, load_config
from tasks.training.config import LoraFinetuneConfig


def test_yaml_and_overrides_build_typed_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 7\nlora:\n  r: 4\n")
    cfg = load_config(
        LoraFinetuneConfig,
        path,
        [
            "train.learning_rate=1e-3",
            "lora.target_modules=q_proj,v_proj",
            "data.eval=./held_out.jsonl",
            "publish.uri=file:///tmp/x",
        ],
    )
    assert cfg.train.max_steps == 7 and cfg.lora.r == 4
    assert cfg.train.learning_rate == pytest.approx(1e-3) and isinstance(cfg.train.learning_rate, float)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.eval == "./held_out.jsonl"
    on = load_config(LoraFinetuneConfig, None, ["train.gradient_checkpointing=on", "train.liger=off"])
    assert on.train.gradient_checkpointing == "on" and on.train.liger == "off"  # not YAML's booleans
    flat = flatten(cfg)
    assert flat["train.max_steps"] == 7 and flat["publish.uri"] == "file:///tmp/x"


def test_the_shipped_configs_load():
    for name in ("configs/lora_demo.yaml", "configs/lora_qwen2.5_1.5b.yaml"):
        cfg = load_config(LoraFinetuneConfig, name)
        assert cfg.train.max_steps > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_stepz=5", "unknown key 'train.max_stepz'"),
        ("tran.max_steps=5", "unknown key 'tran'"),
        ("train.max_steps=five", "train.max_steps: expected an integer, got 'five'"),
        ("train.max_steps=2.5", "train.max_steps: expected an integer"),
        ("train.packing=maybe", "train.packing: expected true or false"),
        ("train.precision=fp8", "train.precision: expected one of 'auto' | 'fp32' | 'bf16' | 'fp16'"),
        ("train.learning_rate=-0.1", "train.learning_rate: must be positive, got -0.1"),
        ("lora.r=0", "lora.r: must be a positive integer, got 0"),
        ("data.eval_fraction=1.5", "data.eval_fraction: must be in (0, 1)"),
        ("train=3", "train: expected a mapping of options"),
        ("noequals", "--set expects key=value"),
    ],
)
def test_bad_options_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(LoraFinetuneConfig, None, [override])
    assert message in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(LoraFinetuneConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(LoraFinetuneConfig, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(LoraFinetuneConfig, listing)


def test_cli_rejects_an_unknown_key_with_a_non_zero_exit(capsys):
    from flows.lora_finetune import main

    assert main(["--set", "train.max_stepz=5"]) == 1
    assert "unknown key 'train.max_stepz'" in capsys.readouterr().err


def test_help_config_lists_every_option(capsys):
    from flows.lora_finetune import main

    assert main(["--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("model.name", "data.train", "data.eval", "train.max_steps", "lora.r", "publish.uri"):
        assert key in out
