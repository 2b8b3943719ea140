"""The sampling settings, declared once: config, checks, generate() kwargs, sliders and API order agree."""

from __future__ import annotations

import pytest

from tasks.chat.config import ChatAppConfig
from tasks.chat.sampling import BY_NAME, MAX_NEW_TOKENS, SETTINGS, SamplingSettings
from tasks.core.config import ConfigError, describe_options, load_config

NAMES = ["temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"]


def test_the_declaration_names_every_setting_with_its_slider():
    assert [s.name for s in SETTINGS] == NAMES
    assert [s.elem_id for s in SETTINGS] == ["temperature", "top-p", "top-k", "repetition-penalty", "max-new-tokens"]
    assert [s.label for s in SETTINGS] == [
        "Temperature (0 = greedy)",
        "Top-p",
        "Top-k (0 = off)",
        "Repetition penalty",
        "Max new tokens",
    ]
    assert [s.type for s in SETTINGS] == [float, float, int, float, int]
    assert SamplingSettings() == SamplingSettings(0.2, 0.9, 50, 1.1, 256)
    keys = [key for key, _, _ in describe_options(ChatAppConfig) if key.startswith("sampling.")]
    assert keys == [f"sampling.{name}" for name in NAMES]


@pytest.mark.parametrize(
    "name, too_low, too_high",
    [
        ("temperature", -0.01, 2.01),
        ("top_p", 0.0, 1.01),
        ("top_k", -1, 201),
        ("repetition_penalty", 0.49, 2.01),
        ("max_new_tokens", 0, MAX_NEW_TOKENS + 1),
    ],
)
def test_one_set_of_bounds_for_the_config_and_generation(name, too_low, too_high):
    spec = BY_NAME[name]
    for value in (too_low, too_high):
        with pytest.raises(ConfigError, match=rf"^sampling\.{name}: must be in \["):
            SamplingSettings(**{name: value})
        with pytest.raises(ConfigError, match=rf"^sampling\.{name}: must be in \["):
            load_config(ChatAppConfig, "configs/chat.yaml", [f"sampling.{name}={value}"])
    for value in (spec.minimum, spec.maximum):  # the sliders' ends are valid settings
        assert getattr(SamplingSettings(**{name: value}), name) == value


def test_generate_kwargs_are_the_settings_and_greedy_drops_the_sampling_knobs():
    sampled = SamplingSettings(temperature=0.7, top_p=0.8, top_k=7, repetition_penalty=1.3, max_new_tokens=9)
    assert sampled.generate_kwargs() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 7,
        "repetition_penalty": 1.3,
        "max_new_tokens": 9,
    }
    greedy = SamplingSettings(temperature=0, top_p=0.8, top_k=7, repetition_penalty=1.3, max_new_tokens=9)
    assert greedy.generate_kwargs() == {
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "repetition_penalty": 1.3,
        "max_new_tokens": 9,
    }


def test_slider_values_become_settings_in_declared_order():
    settings = SamplingSettings.from_values([0.35, 0.8, 7.0, 1.3, 1.0])
    assert settings == SamplingSettings(temperature=0.35, top_p=0.8, top_k=7, repetition_penalty=1.3, max_new_tokens=1)
    assert isinstance(settings.top_k, int) and isinstance(settings.max_new_tokens, int)
    with pytest.raises(ValueError, match="expected 5 sampling values"):
        SamplingSettings.from_values([0.35, 0.8])


def test_the_app_has_one_slider_per_setting_and_the_api_takes_them_in_order():
    from tasks.chat.ui import build_app

    config = load_config(ChatAppConfig, "configs/chat.yaml", ["models=[some-model]", "list_registry=false"])
    app = build_app(config)
    sliders = [c for c in app.get_config_file()["components"] if c["type"] == "slider"]
    assert [c["props"]["elem_id"] for c in sliders] == [s.elem_id for s in SETTINGS]
    assert [(c["props"]["minimum"], c["props"]["maximum"], c["props"]["step"]) for c in sliders] == [
        (s.minimum, s.maximum, s.step) for s in SETTINGS
    ]
    assert [c["props"]["value"] for c in sliders] == [getattr(config.sampling, s.name) for s in SETTINGS]
    endpoints = app.get_api_info()["named_endpoints"]
    chat = [p["parameter_name"] for p in endpoints["/chat"]["parameters"]]
    assert chat == ["message", "history", "model", "system", *NAMES]
    compare = [p["parameter_name"] for p in endpoints["/compare"]["parameters"]]
    assert compare == ["enabled", "message", "history", "model", "system", *NAMES]
