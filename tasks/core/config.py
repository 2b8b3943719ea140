"""Typed configuration: nested dataclasses, read from a small YAML file plus `--set key=value`.

Every flow has one config dataclass. `load_config` builds it once, at the start of a run, and
rejects unknown keys, wrong types and out-of-range values with a message that names the key, so
nothing downstream ever sees a raw dict. Each option is documented once, in `field(metadata=...)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A documented config field; mutable defaults are wrapped in a factory."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def data_dir() -> Path:
    """Where every run keeps its state: MLflow store, model cache, vector index, local stack."""
    path = Path(os.environ.get("FTLLM_DATA_DIR") or PROJECT_ROOT / ".ftllm").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def require(condition: bool, key: str, message: str) -> None:
    """Range checks in `__post_init__` read as one line each."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --- building a dataclass from plain values -------------------------------------------------


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option_tp in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option_tp, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: expected {' or '.join(_describe(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(get_args(tp)):
            value = "on" if value else "off"  # YAML 1.1 reads `on`/`off` as booleans
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {_describe(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # `--set lora.target_modules=q_proj,v_proj`
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(item, item_tp, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of options, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set model.revision=2` should not need quotes
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported option type {tp!r}")


def _build(cls: type[C], values: dict[str, Any], prefix: str = "") -> C:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(prefix + name for name in fields)
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (known keys here: {known})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as error:  # a required option with no default was not given
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build `cls` from a YAML file (optional) and `key=value` overrides (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of options")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. `a[?]`): the text itself; the option's type decides
        _set_dotted(tree, key.strip(), value)
    return _build(cls, tree)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.max_steps": 50, ...}`: the form MLflow params and model cards use."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def describe_options(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, help) for every option: `--help-config` prints it."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe_options(hints[f.name], f"{prefix}{f.name}."))
        else:
            rows.append((prefix + f.name, _describe(hints[f.name]), f.metadata.get("help", "")))
    return rows


def cli_parser(description: str, default_config: str | None) -> argparse.ArgumentParser:
    """The arguments every flow's command line shares: --config, --set, --help-config."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help=f"YAML config file (default: {default_config})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option, e.g. --set train.max_steps=50 (repeatable)",
    )
    parser.add_argument("--help-config", action="store_true", help="list every config option and exit")
    return parser


def print_options(cls: type) -> None:
    for key, tp, help_text in describe_options(cls):
        print(f"{key:34} {tp:28} {help_text}")
