"""The command line rag-query and rag-eval share, on top of tasks/core/cli.py's `run_cli`: both read
`RagConfig` from configs/rag.yaml, take `--k` and `--json`, and print their result as JSON or text."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tasks.core.cli import run_cli
from tasks.rag.config import RagConfig

DEFAULT_CONFIG = "configs/rag.yaml"


def add_k_and_json(parser: argparse.ArgumentParser, k_help: str, json_help: str) -> None:
    parser.add_argument("--k", type=int, default=None, help=k_help)
    parser.add_argument("--json", action="store_true", help=json_help)


def checked_k(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int | None:
    if args.k is not None and args.k < 1:
        parser.error(f"--k must be at least 1, got {args.k}")
    return args.k


def run_rag_cli(
    flow: Any,
    argv: list[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    flow_kwargs: Callable[[argparse.Namespace, argparse.ArgumentParser], dict[str, Any]],
    print_text: Callable[[dict], None],
) -> int:
    """`run_cli` for a flow on RagConfig: its result printed as JSON with --json, else by `print_text`."""

    def show(result: dict, args: argparse.Namespace) -> None:
        if args.json:
            print(json.dumps(result, indent=2, ensure_ascii=False))
        else:
            print_text(result)

    return run_cli(
        flow,
        RagConfig,
        DEFAULT_CONFIG,
        argv,
        add_arguments=add_arguments,
        flow_kwargs=flow_kwargs,
        show=show,
    )
