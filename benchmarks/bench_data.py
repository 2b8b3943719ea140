"""Where the benchmarks find their larger data: `--data DIR`, else $FTLLM_BENCH_DATA, else ../shared/data.

The tests carry their own small data (tests/data/); the benchmarks want more than is worth
committing. docs/data.md lists each file, its licence and where to get it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ENV = "FTLLM_BENCH_DATA"
DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"  # a folder beside the checkout

SOURCES = {
    "GeoTopo-komprimiert.pdf": "py-pdf/sample-files 009-pdflatex-geotopo/GeoTopo-komprimiert.pdf (CC BY-SA 4.0)",
    "hh_rlhf_harmless_1800.jsonl.gz": "the first 1,800 lines of harmless-base/test.jsonl.gz "
    "from github.com/anthropics/hh-rlhf (MIT)",
    "alpaca_5000.json": "tatsu-lab/stanford_alpaca data/alpaca_5000.json (CC BY-NC 4.0)",
}


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help=f"folder of the benchmark data (default: ${ENV}, else {DEFAULT})")


def data_folder(given: str | None) -> Path:
    return Path(given or os.environ.get(ENV) or DEFAULT).expanduser().resolve()


def data_file(folder: Path, name: str) -> Path:
    """`folder / name`, or exit with what is missing, what it is and how to point at it."""
    path = folder / name
    if not path.is_file():
        raise SystemExit(
            f"benchmark data missing: {path}\n"
            f"  {name}: {SOURCES.get(name, 'see docs/data.md')}\n"
            f"  Point at the folder that holds it with --data DIR or {ENV}=DIR (docs/data.md)."
        )
    return path
