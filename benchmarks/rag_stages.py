"""The first-index levers of issue 16 in turns, each beside its baseline in the same run:

    OMP_NUM_THREADS=1 python -m benchmarks.rag_stages [--data DIR]

1. pypdf extraction of GeoTopo-komprimiert.pdf in 1 process (baseline) vs 2 (index.extract_processes),
   3 pairs in one process;
2. extraction + embedding-model load, each pair in fresh processes (the model's imports are
   once per process): baseline extracts in 1 process and then loads the model; the project loads
   it in a thread while 2 processes extract. The model is run by sentence-transformers
   (`embeddings.runtime=torch`), whose imports these levers hide; the default onnx runtime loads
   in under a second (benchmarks/rag_bench.py compares the two).
3. embedding GeoTopo's chunks, each setup in a fresh process (model loaded first, not timed):
   sentence-transformers (`embeddings.runtime=torch`, baseline) and onnxruntime, 1 and 2 threads,
   batches of 16 and 64.

`--parts embed` runs part 3 alone and keeps the other rows of the results file.

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
    embeddings = make_embeddings(EmbeddingOptions(runtime="torch"))
    started = time.perf_counter()
    if setup == "project":
        loading = embeddings.warm_up()
        pdfs.extract_pdf(data, pdf, processes=2)
        loading.join()
    else:
        pdfs.extract_pdf(data, pdf, processes=1)
        embeddings.model  # noqa: B018  (loads it)
    return time.perf_counter() - started


EMBED_SETUPS = (  # (runtime, threads, batch size); the first is the baseline
    ("torch", 1, 64),
    ("torch", 1, 16),
    ("onnx", 1, 64),
    ("onnx", 1, 16),
    ("torch", 2, 16),
    ("onnx", 2, 16),
)


def embed_chunks(pdf: str, runtime: str, batch_size: str) -> float:
    """Seconds to embed the PDF's chunks (the model loaded and warmed first)."""
    import tasks  # noqa: F401
    from tasks.rag import chunking, pdfs
    from tasks.rag.config import ChunkOptions, EmbeddingOptions
    from tasks.rag.embeddings import make_embeddings

    doc = pdfs.extract_pdf(Path(pdf).read_bytes(), pdf, processes=2)
    texts = [chunk.page_content for chunk in chunking.chunk_document(doc, ChunkOptions())]
    embeddings = make_embeddings(EmbeddingOptions(runtime=runtime, batch_size=int(batch_size)))
    embeddings.embed_query("warm up")
    started = time.perf_counter()
    embeddings.embed_documents(texts)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_data.add_data_argument(parser)
    parser.add_argument("--parts", default="extract,load,embed", help="comma-separated, of extract, load, embed")
    parser.add_argument("--child", nargs=2, metavar=("PDF", "SETUP"), help=argparse.SUPPRESS)
    parser.add_argument("--embed-child", nargs=3, metavar=("PDF", "RUNTIME", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(extract_and_load(*args.child))
        return 0
    if args.embed_child:
        print(embed_chunks(*args.embed_child))
        return 0
    parts = args.parts.split(",")
    if unknown := sorted(set(parts) - {"extract", "load", "embed"}):
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from extract, load, embed")
    import tasks  # noqa: F401
    from tasks.rag import pdfs

    pdf = str(bench_data.data_file(bench_data.data_folder(args.data) / "pdfs", "GeoTopo-komprimiert.pdf"))
    data = Path(pdf).read_bytes()
    kept_file = RESULTS / "rag_stages.json"
    rows = (
        [r for r in json.loads(kept_file.read_text()) if not r["what"].startswith("embed")]
        if (parts == ["embed"] and kept_file.is_file())
        else []
    )
    for _ in range(3 if "extract" in parts else 0):
        for processes in (1, 2):
            started = time.perf_counter()
            pdfs.extract_pdf(data, pdf, processes=processes)
            label = f"extract, {processes} process{'es' if processes > 1 else ''}" + (" (baseline)" * (processes == 1))
            rows.append({"what": label, "seconds": time.perf_counter() - started, "load": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    for _ in range(2 if "load" in parts else 0):
        for setup in ("baseline", "project"):
            child = [sys.executable, "-m", "benchmarks.rag_stages", "--child", pdf, setup]
            out = subprocess.run(child, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            label = {
                "baseline": "extract in 1 process, then load the model (baseline)",
                "project": "load the model while 2 processes extract",
            }[setup]
            rows.append({"what": label, "seconds": float(out.split()[-1]), "load": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    for runtime, threads, batch in EMBED_SETUPS if "embed" in parts else ():
        child = [sys.executable, "-m", "benchmarks.rag_stages", "--embed-child", pdf, runtime, str(batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(child, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        label = f"embed the chunks, {runtime}, {threads} thread{'s' * (threads > 1)}, batches of {batch}"
        rows.append(
            {
                "what": label + " (baseline)" * ((runtime, threads, batch) == EMBED_SETUPS[0]),
                "seconds": float(out.split()[-1]),
                "load": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rag_stages.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# First-index levers, in turns (`OMP_NUM_THREADS=1 python -m benchmarks.rag_stages [--parts ...]`)",
        "",
        "| what | seconds | load average |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {r['what']} | {r['seconds']:.1f} | {r['load']:.1f} |" for r in rows]
    (RESULTS / "rag_stages.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
