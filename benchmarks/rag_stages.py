"""The first-index levers of issue 16 in turns, each beside its baseline in the same run:

    OMP_NUM_THREADS=1 python -m benchmarks.rag_stages [--data DIR]

1. pypdf extraction of GeoTopo-komprimiert.pdf in 1 process (baseline) vs 2 (index.extract_processes),
   3 pairs in one process;
2. extraction + embedding-model load, each pair in fresh processes (the model's imports are
   once per process): baseline extracts in 1 process and then loads the model; the project loads
   it in a thread while 2 processes extract.

Results: benchmarks/results/rag_stages.{json,md}, with the load average at each row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import bench_data

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def extract_and_load(pdf: str, setup: str) -> float:
    import tasks  # noqa: F401
    from tasks.rag import pdfs
    from tasks.rag.config import EmbeddingOptions
    from tasks.rag.embeddings import make_embeddings

    data = Path(pdf).read_bytes()
    embeddings = make_embeddings(EmbeddingOptions())
    started = time.perf_counter()
    if setup == "project":
        loading = embeddings.warm_up()
        pdfs.extract_pdf(data, pdf, processes=2)
        loading.join()
    else:
        pdfs.extract_pdf(data, pdf, processes=1)
        embeddings.model  # noqa: B018  (loads it)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_data.add_data_argument(parser)
    parser.add_argument("--child", nargs=2, metavar=("PDF", "SETUP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(extract_and_load(*args.child))
        return 0
    import tasks  # noqa: F401
    from tasks.rag import pdfs

    pdf = str(bench_data.data_file(bench_data.data_folder(args.data) / "pdfs", "GeoTopo-komprimiert.pdf"))
    data = Path(pdf).read_bytes()
    rows = []
    for _ in range(3):
        for processes in (1, 2):
            started = time.perf_counter()
            pdfs.extract_pdf(data, pdf, processes=processes)
            label = f"extract, {processes} process{'es' if processes > 1 else ''}" + (" (baseline)" * (processes == 1))
            rows.append({"what": label, "seconds": time.perf_counter() - started, "load": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    for _ in range(2):
        for setup in ("baseline", "project"):
            child = [sys.executable, "-m", "benchmarks.rag_stages", "--child", pdf, setup]
            out = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            label = {
                "baseline": "extract in 1 process, then load the model (baseline)",
                "project": "load the model while 2 processes extract",
            }[setup]
            rows.append({"what": label, "seconds": float(out.split()[-1]), "load": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rag_stages.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# First-index levers, in turns (`OMP_NUM_THREADS=1 python -m benchmarks.rag_stages`)",
        "",
        "| what | seconds | load average |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {r['what']} | {r['seconds']:.1f} | {r['load']:.1f} |" for r in rows]
    (RESULTS / "rag_stages.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
