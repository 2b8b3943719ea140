"""The command line every flow shares: `python -m flows.<name> [--config F] [--set k=v ...] [--help-config]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tasks.core.config import cli_parser, load_config, print_options


def run_cli(
    flow: Any,
    config_cls: type,
    default_config: str | None,
    argv: list[str] | None = None,
    *,
    description: str | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    flow_kwargs: Callable[[argparse.Namespace, argparse.ArgumentParser], dict[str, Any]] | None = None,
    show: Callable[[Any, argparse.Namespace], None] | None = None,
    stop_on_interrupt: bool = False,
) -> int:
    """Parse the arguments, run `flow`, print its result with `show`; the exit code says how it went.

    Bad options fail before Prefect starts. A failed run prints `<flow> FAILED: <reason>` and exits 1
    (the flow itself already recorded the failure in Prefect and MLflow). `stop_on_interrupt`: Ctrl-C
    is the normal way to end the flow (a server), so it exits 0. `description`: by default the first
    line of the flow module's docstring.
    """
    parser = cli_parser(description or _summary_line(flow), default_config)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.help_config:
        print_options(config_cls)
        return 0
    extra = flow_kwargs(args, parser) if flow_kwargs else {}
    name = getattr(flow, "name", getattr(flow, "__name__", "flow"))
    try:
        load_config(config_cls, args.config, args.overrides)
        result = flow(config=args.config, overrides=args.overrides, **extra)
    except KeyboardInterrupt:
        if not stop_on_interrupt:
            raise
        print(f"{name}: stopped")
        return 0
    except Exception as error:
        print(f"{name} FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if show:
        show(result, args)
    return 0


def _summary_line(flow: Any) -> str:
    """The first line of the docstring of the module that defines `flow` (a Prefect flow or a function)."""
    module = sys.modules.get(getattr(flow, "fn", flow).__module__)
    lines = ((module.__doc__ if module else None) or "").strip().splitlines()
    return lines[0] if lines else ""
