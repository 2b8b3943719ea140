"""RAG benchmarks: indexing speed, re-index speed-up, retrieval quality and latency, each with its baseline.

    OMP_NUM_THREADS=1 python -m benchmarks.rag_bench [--data DIR | --pdfs DIR] [--queries 100]

PDFs come from --pdfs, else DIR/pdfs of the benchmark data folder (--data, $FTLLM_BENCH_DATA:
benchmarks/bench_data.py, docs/data.md); GeoTopo-komprimiert.pdf must be there. The small
documents fall back to their copies in tests/data/pdfs.

1. First index of GeoTopo-komprimiert.pdf (117 pages) through the pdf-index flow: pages/s.
   Baseline: the same flow run again on the unchanged file (the re-index speed-up).
2. hit@5, MRR and mean chunk length on every question file in benchmarks/qa/ whose PDF is present.
   Baselines: the plain original pipeline (pypdf pages, CharacterTextSplitter with LangChain's
   default separator, all-MiniLM-L6-v2, cosine top-5) and the same with tuned sizes (separator
   "\\n", 1000/200); ours: recursive chunks + hybrid BM25/vector retrieval (configs/*.yaml defaults).
3. Retrieval latency p50/p95 over N queries, hybrid (ours) and vector-only (baseline), warm index.

Results go to benchmarks/results/rag_bench.json and .md. Everything runs in a fresh FTLLM_DATA_DIR.
libtasn1.pdf (GNU Libtasn1 manual, English) comes from the Debian package libtasn1-doc.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_data

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The ephemeral Prefect server needs more than its default 20 s to start on a loaded machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

ROOT = Path(__file__).resolve().parent.parent
QA_DIR = ROOT / "benchmarks" / "qa"
RESULTS = ROOT / "benchmarks" / "results"
EXTRA_PDFS = {"libtasn1.pdf": Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")}
SAMPLE_PDFS = ROOT / "tests" / "data" / "pdfs"  # the small documents of benchmarks/qa/small-docs.jsonl

PIPELINES = {
    # name: (pdf-index overrides, rag overrides)
    "original (CharacterTextSplitter default \\n\\n, 1000/200, vectors)": (
        [
            "store.collection=original",
            "chunk.splitter=character",
            'chunk.separator="\\n\\n"',
            "chunk.size=1000",
            "chunk.overlap=200",
        ],
        ["store.collection=original", "retrieval.mode=vector"],
    ),
    "original, tuned sizes (separator \\n, 1000/200, vectors)": (
        [
            "store.collection=original_tuned",
            "chunk.splitter=character",
            'chunk.separator="\\n"',
            "chunk.size=1000",
            "chunk.overlap=200",
        ],
        ["store.collection=original_tuned", "retrieval.mode=vector"],
    ),
    "ours (recursive 600/100, hybrid BM25 + vectors)": ([], []),
}


def pdf_path(name: str, pdfs: Path) -> Path | None:
    """A question file's PDF: from the data folder, else the same file committed for the tests."""
    candidates = [EXTRA_PDFS[name]] if name in EXTRA_PDFS else [pdfs / name, SAMPLE_PDFS / name]
    return next((path for path in candidates if path.is_file()), None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_data.add_data_argument(parser)
    parser.add_argument("--pdfs", default=None, help="folder of the PDFs (default: the data folder's pdfs/)")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args(argv)
    pdfs = Path(args.pdfs).expanduser().resolve() if args.pdfs else bench_data.data_folder(args.data) / "pdfs"
    geotopo = str(bench_data.data_file(pdfs, "GeoTopo-komprimiert.pdf"))
    os.environ["FTLLM_DATA_DIR"] = tempfile.mkdtemp(prefix="rag-bench-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import tasks  # noqa: F401
    from flows.pdf_index import pdf_index
    from tasks.core.config import load_config
    from tasks.rag import evaluation, retrieval
    from tasks.rag.config import RagConfig

    results: dict = {
        "machine": f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
        "load_average_at_start": os.getloadavg(),
    }

    # 1. first index of GeoTopo, then the same again
    runs = []
    for attempt in ("first", "again"):
        started = time.perf_counter()
        report = pdf_index(config="configs/pdf_index.yaml", overrides=[], sources=[geotopo])[0]
        runs.append(
            {
                "run": attempt,
                "status": report["status"],
                "pages": report["pages"],
                "chunks": report["chunks"],
                "document_seconds": report["seconds"],
                "flow_seconds": time.perf_counter() - started,
            }
        )
    first, again = runs
    results["index"] = {
        "runs": runs,
        "pages_per_s_document": first["pages"] / first["document_seconds"],
        "pages_per_s_flow": first["pages"] / first["flow_seconds"],
        "reindex_speedup_document": first["document_seconds"] / max(again["document_seconds"], 1e-9),
        "reindex_speedup_flow": first["flow_seconds"] / again["flow_seconds"],
    }
    print(json.dumps(results["index"], indent=2), flush=True)

    # 2. quality: every question file whose PDF is here, under each pipeline
    qa_files = {}
    for qa in sorted(QA_DIR.glob("*.jsonl")):
        questions, errors = evaluation.load_questions(str(qa))
        names = sorted({json.loads(line)["source"] for line in qa.read_text().splitlines() if line.strip()})
        paths = [pdf_path(n, pdfs) for n in names]
        if errors or not all(paths):
            print(f"skipping {qa.name}: {errors or 'PDF missing: ' + str(names)}", flush=True)
            continue
        qa_files[qa.name] = (questions, [str(p) for p in paths])
    corpus = sorted({p for _, paths in qa_files.values() for p in paths} | {geotopo})
    results["corpus"] = [Path(p).name for p in corpus]
    results["quality"] = {}
    for name, (index_overrides, rag_overrides) in PIPELINES.items():
        started = time.perf_counter()
        pdf_index(config="configs/pdf_index.yaml", overrides=index_overrides, sources=corpus)
        config = load_config(RagConfig, "configs/rag.yaml", rag_overrides)
        scores = {}
        for qa_name, (questions, _) in qa_files.items():
            scored = evaluation.evaluate_retrieval(questions, config, k=5)
            scores[qa_name] = {
                key: scored[key] for key in ("questions", "hit_at_k", "mrr", "mean_chunk_chars", "page_hit_at_k")
            }
            scores[qa_name]["misses"] = [r["id"] for r in scored["per_question"] if r["rank"] is None]
        results["quality"][name] = {"index_seconds": time.perf_counter() - started, "scores": scores}
        print(name, json.dumps(scores, indent=1), flush=True)

    # 3. latency over N queries on the warm index (ours), hybrid vs vector-only
    questions = [q.question for questions, _ in qa_files.values() for q in questions]
    queries = [questions[i % len(questions)] for i in range(args.queries)]
    results["latency"] = {}
    for label, overrides in (("hybrid (ours)", []), ("vector only (baseline)", ["retrieval.mode=vector"])):
        config = load_config(RagConfig, "configs/rag.yaml", overrides)
        retrieval.retrieve(queries[0], config, 5)  # warm: model and index loaded
        times = []
        for query in queries:
            started = time.perf_counter()
            retrieval.retrieve(query, config, 5)
            times.append(time.perf_counter() - started)
        results["latency"][label] = {
            "queries": len(times),
            "p50_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * percentile(times, 0.95),
        }
    print(json.dumps(results["latency"], indent=2), flush=True)
    results["load_average_at_end"] = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rag_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rag_bench.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    index = results["index"]
    first, again = index["runs"]
    lines = [
        "# RAG benchmarks (`OMP_NUM_THREADS=1 python -m benchmarks.rag_bench`)",
        f"Machine: {results['machine']}; load average at start {results['load_average_at_start'][0]:.1f}, "
        f"at end {results['load_average_at_end'][0]:.1f} (the machine is shared: timings vary with its load).",
        "## Indexing GeoTopo-komprimiert.pdf (117 pages)",
        "| run | status | chunks | document seconds | flow seconds |",
        "| --- | --- | --- | --- | --- |",
        f"| first | {first['status']} | {first['chunks']} | {first['document_seconds']:.2f} | {first['flow_seconds']:.2f} |",
        f"| again (baseline for the speed-up) | {again['status']} | {again['chunks']} | "
        f"{again['document_seconds']:.3f} | {again['flow_seconds']:.2f} |",
        f"\nFirst index: **{index['pages_per_s_document']:.2f} pages/s** (document: fetch, extract, chunk, embed, upsert), "
        f"{index['pages_per_s_flow']:.2f} pages/s for the whole flow run (MLflow, artifacts, model load). "
        f"Re-index speed-up: **{index['reindex_speedup_document']:.0f}x** per document, "
        f"{index['reindex_speedup_flow']:.1f}x for the whole flow run.",
        "## Retrieval quality (k = 5)",
        f"Corpus indexed together: {', '.join(results['corpus'])}.",
        "| pipeline | question file | questions | hit@5 | MRR | page hit@5 | mean chunk chars |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, quality in results["quality"].items():
        for qa, s in quality["scores"].items():
            lines.append(
                f"| {name} | {qa} | {s['questions']} | {s['hit_at_k']:.3f} | {s['mrr']:.3f} | "
                f"{s['page_hit_at_k']:.3f} | {s['mean_chunk_chars']:.0f} |"
            )
    lines += [
        "## Retrieval latency (warm, k = 5)",
        "| retrieval | queries | p50 ms | p95 ms |",
        "| --- | --- | --- | --- |",
    ]
    for label, latency in results["latency"].items():
        lines.append(f"| {label} | {latency['queries']} | {latency['p50_ms']:.1f} | {latency['p95_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
