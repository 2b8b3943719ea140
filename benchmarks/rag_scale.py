"""RAG at scale: indexing fanned out on Dask vs serial, keyword quality on PostgreSQL vs SQLite, and
retrieval latency at 1k/10k/100k chunks on Milvus Lite vs a Milvus server, vector and hybrid.

    OMP_NUM_THREADS=1 python -m benchmarks.rag_scale [--data DIR | --pdfs DIR] [--queries 60] [--sizes 1000,10000,100000]

Starts its own services in temporary folders: PostgreSQL (initdb/pg_ctl), a Milvus 2.3 standalone
server, a Prefect server (Dask workers need PREFECT_API_URL). Needs GeoTopo-komprimiert.pdf
(benchmarks/bench_data.py, docs/data.md).

1. First index of GeoTopo-komprimiert.pdf plus the small sample PDFs into the Milvus server and
   PostgreSQL: `index.runner=local` (baseline: one writer, stages threaded) vs `index.runner=dask`
   with 2 workers; pages/s over the whole flow run, each in a fresh collection.
2. hit@5 and MRR on benchmarks/qa/geotopo.jsonl, hybrid, on the same vectors: keyword index in
   PostgreSQL full-text search vs SQLite FTS5 (baseline).
3. Retrieval latency p50/p95 over N queries (the GeoTopo questions) at each size, through
   `retrieval.retrieve`: Milvus Lite + SQLite (baseline) vs Milvus server (HNSW) + PostgreSQL,
   vector-only and hybrid. The corpus is GeoTopo's real chunks and embeddings, repeated with a
   little noise on the vectors up to the size (embedding 100k chunks would take an hour here).

Results: benchmarks/results/rag_scale.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_data

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_PDFS = ROOT / "tests" / "data" / "pdfs"
# Server searches measured with each read consistency (store.read_consistency).
READS = ("strong", "bounded")
SMALL = ("multicolumn.pdf", "pdflatex-4-pages.pdf", "crazyones-pdfa.pdf", "google-doc-document.pdf", "habibi.pdf")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_milvus(folder: Path):
    import milvus

    config = milvus.MilvusServerConfig(data_dir=str(folder))
    config.extra_configs = {
        f"{c}.ip": "127.0.0.1"
        for c in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")
    }
    config.extra_configs.update({"common.session.ttl": 120, "queryCoord.heartbeatAvailableInterval": 60000})
    server = milvus.MilvusServer(config, wait_for_started=False)
    server.start()
    from tests.support.processes import healthy, wait_for

    wait_for(lambda: healthy(f"http://127.0.0.1:{server.webservice_port}/healthz"), 420, "the Milvus server", 0.5)
    return server, f"http://127.0.0.1:{server.config.get('proxy_port')}"


def start_prefect(folder: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    from tests.support.chat import free_port
    from tests.support.processes import healthy, wait_for

    port = free_port()
    env = {
        "PREFECT_HOME": str(folder),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env},
        stdout=open(folder / "server.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: healthy(f"http://127.0.0.1:{port}/api/health"), 180, "the Prefect server", 0.5)
    return server, env


def index_run(sources: list[str], overrides: list[str], env: dict[str, str], log: Path) -> dict:
    """One pdf-index run as its own process (as a user runs it); its report and wall time."""
    argv = ["--config", "configs/pdf_index.yaml", "--json", *[f"--source={s}" for s in sources]]
    started = time.perf_counter()
    with open(log, "wb") as handle:
        code = subprocess.run(
            [sys.executable, "-m", "flows.pdf_index", *argv, *[f"--set={o}" for o in overrides]],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=3600,
        ).returncode
    seconds = time.perf_counter() - started
    output = log.read_text()
    if code != 0:
        raise RuntimeError(f"pdf-index failed: {output[-3000:]}")
    report = json.loads(output[output.index("[\n") : output.rindex("]") + 1])
    pages = sum(r["pages"] for r in report if r["status"] == "indexed")
    return {
        "seconds": seconds,
        "pages": pages,
        "chunks": sum(r["chunks"] for r in report),
        "pages_per_s": pages / seconds,
        "statuses": sorted({r["status"] for r in report}),
    }


def latency(queries: list[str], config) -> dict[str, float]:
    from tasks.rag import retrieval

    retrieval.retrieve(queries[0], config, 5)  # warm: model, collection and connections loaded
    times = []
    for query in queries:
        started = time.perf_counter()
        retrieval.retrieve(query, config, 5)
        times.append(time.perf_counter() - started)
    return {"queries": len(times), "p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * percentile(times, 0.95)}


def grow(target, base_chunks, base_vectors, have: int, size: int, rng) -> None:
    """Add copies of the base chunks (new ids and sources, vectors with a little noise) up to `size`."""
    import numpy as np
    from langchain_core.documents import Document

    per_source = len(base_chunks)
    for start in range(have, size, per_source):
        n = min(per_source, size - start)
        copy = start // per_source
        source = f"/corpus/copy-{copy:04d}.pdf"
        docs = [
            Document(page_content=c.page_content, metadata={**c.metadata, "source": source, "chunk_id": f"{copy}-{i}"})
            for i, c in enumerate(base_chunks[:n])
        ]
        noise = rng.normal(0, 0.02, size=(n, base_vectors.shape[1])) if copy else 0
        vectors = base_vectors[:n] + noise
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        target.store.vectors.add_embeddings(
            [d.page_content for d in docs],
            vectors.tolist(),
            [d.metadata for d in docs],
            ids=[f"{source}#{i}" for i in range(n)],
        )
        target.catalog.begin(source)
        target.catalog.complete(source, "synthetic", 117, docs)


def wait_for_index(client, collection: str, timeout_s: float = 1800) -> None:
    """Until every flushed row is in the vector index (a server builds it in the background)."""
    deadline = time.monotonic() + timeout_s
    for name in client.list_indexes(collection):
        while client.describe_index(collection, name).get("pending_index_rows", 0) and time.monotonic() < deadline:
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_data.add_data_argument(parser)
    parser.add_argument("--pdfs", default=None, help="folder of the PDFs (default: the data folder's pdfs/)")
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--skip-index", action="store_true", help="leave out part 1 (indexing speed)")
    args = parser.parse_args(argv)
    pdfs = Path(args.pdfs).expanduser().resolve() if args.pdfs else bench_data.data_folder(args.data) / "pdfs"
    geotopo = str(bench_data.data_file(pdfs, "GeoTopo-komprimiert.pdf"))
    work = Path(tempfile.mkdtemp(prefix="rag-scale-"))
    os.environ["FTLLM_DATA_DIR"] = str(work / "data")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    sys.path.insert(0, str(ROOT))

    import numpy as np

    import tasks  # noqa: F401
    from tasks.core.config import load_config
    from tasks.rag import chunking, embeddings, evaluation, pipeline, retrieval
    from tasks.rag import pdfs as pdf_module
    from tasks.rag.config import PdfIndexConfig, RagConfig
    from tests.support.postgres import start_postgres

    results: dict = {
        "machine": f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
        "load_average_at_start": os.getloadavg(),
    }
    postgres = start_postgres()
    (work / "milvus").mkdir()
    (work / "prefect").mkdir()
    milvus_server, milvus_url = start_milvus(work / "milvus")
    prefect, prefect_env = start_prefect(work / "prefect")
    try:
        records = postgres.create_database("rag_scale")
        shared = [f"store.uri={milvus_url}", f"store.records={records}"]
        env = {**prefect_env, "FTLLM_DATA_DIR": str(work / "data")}

        # 1. indexing: serial vs Dask, fresh collections
        sources = [geotopo, *[str(SAMPLE_PDFS / name) for name in SMALL]]
        if not args.skip_index:
            results["index"] = {}
            for label, extra in (
                ("local (serial writes, baseline)", ["store.collection=scale_serial"]),
                ("dask, 2 workers", ["store.collection=scale_dask", "index.runner=dask", "index.workers=2"]),
            ):
                results["index"][label] = index_run(sources, [*shared, *extra], env, work / f"{extra[0][-6:]}.log")
                print(label, json.dumps(results["index"][label]), flush=True)

        # 2. keyword quality: PostgreSQL full-text vs SQLite FTS5, on the same server vectors
        qa = ROOT / "benchmarks" / "qa" / "geotopo.jsonl"
        questions, _ = evaluation.load_questions(str(qa))
        base_cfg = load_config(PdfIndexConfig, "configs/pdf_index.yaml", [*shared, "store.collection=scale_serial"])
        doc = pdf_module.extract_pdf(Path(geotopo).read_bytes(), geotopo)
        base_chunks = chunking.chunk_document(doc, base_cfg.chunk)
        if not args.skip_index:
            sqlite_records = work / "sqlite-records.db"
            from tasks.rag.catalog import Catalog

            catalog = Catalog(f"sqlite:///{sqlite_records}", "scale_serial")
            catalog.begin(geotopo)
            catalog.complete(geotopo, "same-chunks", doc.page_count, base_chunks)
            catalog.close()
            results["quality"] = {}
            for label, records_option in (
                ("SQLite FTS5 (baseline)", f"store.records={sqlite_records}"),
                ("PostgreSQL full-text", f"store.records={records}"),
            ):
                config = load_config(
                    RagConfig,
                    "configs/rag.yaml",
                    [f"store.uri={milvus_url}", "store.collection=scale_serial", records_option],
                )
                scored = evaluation.evaluate_retrieval(questions, config, k=5)
                results["quality"][label] = {k: scored[k] for k in ("questions", "hit_at_k", "mrr")}
                print(label, results["quality"][label], flush=True)
                retrieval.close_index()

        # 3. latency by size: Lite + SQLite vs server + PostgreSQL
        model = embeddings.make_embeddings(base_cfg.embeddings)
        base_vectors = np.asarray(model.embed_documents([c.page_content for c in base_chunks]), dtype=np.float32)
        queries = [questions[i % len(questions)].question for i in range(args.queries)]
        sizes = [int(s) for s in args.sizes.split(",")]
        results["latency"] = {}
        for label, store, reads in (
            ("Milvus Lite + SQLite (baseline)", [f"store.uri={work / 'lite.db'}"], ("strong",)),
            ("Milvus server HNSW + PostgreSQL", [f"store.uri={milvus_url}", f"store.records={records}"], READS),
        ):
            overrides = [*store, "store.collection=scale_latency"]
            cfg = load_config(PdfIndexConfig, "configs/pdf_index.yaml", overrides)
            have, rng = 0, np.random.default_rng(0)
            for size in sizes:
                started = time.perf_counter()
                with pipeline.opened_target(cfg) as target:
                    grow(target, base_chunks, base_vectors, have, size, rng)
                    target.store.flush()
                    wait_for_index(target.store.vectors.client, "scale_latency")
                have = size
                build = time.perf_counter() - started
                for read, mode in itertools.product(reads, ("vector", "hybrid")):
                    config = load_config(
                        RagConfig,
                        "configs/rag.yaml",
                        [*overrides, f"retrieval.mode={mode}", f"store.read_consistency={read}"],
                    )
                    measured = {"chunks": size, "mode": mode, "build_s": build, **latency(queries, config)}
                    shown = label if len(reads) == 1 else f"{label}, {read} reads"
                    results["latency"].setdefault(shown, []).append(measured)
                    print(shown, json.dumps(measured), flush=True)
                    retrieval.close_index()  # the next setting opens the store with its own reads
                retrieval.close_index()  # the Lite file is written again by the next size
    finally:
        results["load_average_at_end"] = os.getloadavg()
        os.killpg(prefect.pid, 15)
        milvus_server.stop()
        postgres.stop()

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rag_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rag_scale.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    lines = [
        "# RAG at scale (benchmarks/rag_scale.py)",
        "",
        f"Machine: {results['machine']}; load average at start {results['load_average_at_start'][0]:.1f}, "
        f"at end {results['load_average_at_end'][0]:.1f} (the machine is shared: timings vary with its load).",
        "",
    ]
    if "index" in results:
        lines += [
            "## First index: GeoTopo (117 pages) + 5 small PDFs, Milvus server + PostgreSQL",
            "",
            "| runner | pages | chunks | seconds | pages/s |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {k} | {v['pages']} | {v['chunks']} | {v['seconds']:.1f} | {v['pages_per_s']:.2f} |"
            for k, v in results["index"].items()
        ]
        lines += [
            "",
            "Documents are the unit of fan-out: GeoTopo is one document, so one worker indexes it while the "
            "other takes the small ones.",
            "",
        ]
    if "quality" in results:
        lines += [
            "## Keyword index: hybrid hit@5 / MRR on benchmarks/qa/geotopo.jsonl (same vectors)",
            "",
            "| keyword index | questions | hit@5 | MRR |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {k} | {v['questions']} | {v['hit_at_k']:.3f} | {v['mrr']:.3f} |" for k, v in results["quality"].items()
        ]
        lines.append("")
    lines += [
        "## Retrieval latency (retrieval.retrieve, k=5, warm)",
        "",
        "| store | chunks | mode | p50 ms | p95 ms | build s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, rows in results["latency"].items():
        lines += [
            f"| {label} | {r['chunks']} | {r['mode']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['build_s']:.0f} |"
            for r in rows
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
