"""The sampling settings of a chat reply, declared once.

Each field of `SamplingSettings` is one setting: its name, type and default, and in `setting(...)`
its slider label, range, step and help. Everything else is read from these fields: the config
section `sampling.*` (keys, `--help-config` text, range checks), the keyword arguments of
`model.generate` (a setting's name is its generate() argument), the app's sliders (elem_id: the
name with dashes) and the order of the /chat and /compare API inputs. Adding a slider is adding a
line to the table in `SamplingSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

from tasks.core.config import require

MAX_NEW_TOKENS = 2048  # the slider's top: a longer reply is more than a CPU chat turn is worth


def setting(
    default: float, minimum: float, maximum: float, step: float, label: str, help: str, *, sampling_only: bool = False
) -> Any:
    """A sampling field; `sampling_only`: generate() ignores it (and warns) when decoding greedily."""
    slider = {"label": label, "minimum": minimum, "maximum": maximum, "step": step, "sampling_only": sampling_only}
    return dataclasses.field(default=default, metadata={"help": help, "slider": slider})


@dataclass(frozen=True)
class SamplingSettings:
    """How a reply is sampled: the `sampling` config section, the sliders' values, generate()'s knobs."""

    # SmolLM2's model card suggests temperature 0.2: at 0.7 the 135M model drifts (into French, for one).
    # One setting a line (adding a slider is adding a line); the formatter leaves the table as it is.
    # fmt: off
    #                                   default  minimum  maximum          step   label                        help
    temperature:        float = setting(0.2,     0.0,     2.0,             0.05,  "Temperature (0 = greedy)",  "sampling temperature; 0 = greedy", sampling_only=True)
    top_p:              float = setting(0.9,     0.05,    1.0,             0.05,  "Top-p",                     "nucleus sampling: smallest set of tokens with this total probability", sampling_only=True)
    top_k:              int   = setting(50,      0,       200,             1,     "Top-k (0 = off)",           "sample among the k most likely tokens; 0 = no limit", sampling_only=True)
    repetition_penalty: float = setting(1.1,     0.5,     2.0,             0.05,  "Repetition penalty",        "penalty on tokens already in the text; 1 = none")
    max_new_tokens:     int   = setting(256,     1,       MAX_NEW_TOKENS,  1,     "Max new tokens",            "longest reply, in tokens")
    # fmt: on

    def __post_init__(self) -> None:
        for spec in SETTINGS:
            spec.check(getattr(self, spec.name), f"sampling.{spec.name}")

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> SamplingSettings:
        """Settings from one value per setting, in declared order (the sliders' values)."""
        if len(values) != len(SETTINGS):
            names = ", ".join(spec.name for spec in SETTINGS)
            raise ValueError(f"expected {len(SETTINGS)} sampling values ({names}), got {len(values)}")
        return cls(**{spec.name: spec.type(value) for spec, value in zip(SETTINGS, values)})

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `model.generate` these settings stand for."""
        kwargs = dataclasses.asdict(self)
        if self.temperature > 0:
            return {**kwargs, "do_sample": True}
        # Greedy: generate() would ignore the sampling knobs, and warn about each of them.
        return {**kwargs, "do_sample": False, **{spec.name: None for spec in SETTINGS if spec.sampling_only}}


@dataclass(frozen=True)
class Setting:
    """One field of SamplingSettings, as the checks and the app's slider see it."""

    name: str
    type: type
    label: str
    minimum: float
    maximum: float
    step: float
    sampling_only: bool

    @property
    def elem_id(self) -> str:
        return self.name.replace("_", "-")

    def check(self, value: float, key: str) -> None:
        require(
            self.minimum <= value <= self.maximum, key, f"must be in [{self.minimum:g}, {self.maximum:g}], got {value}"
        )


def _declared() -> tuple[Setting, ...]:
    types = get_type_hints(SamplingSettings)
    return tuple(
        Setting(name=f.name, type=types[f.name], **f.metadata["slider"]) for f in dataclasses.fields(SamplingSettings)
    )


SETTINGS: tuple[Setting, ...] = _declared()
BY_NAME: dict[str, Setting] = {spec.name: spec for spec in SETTINGS}
