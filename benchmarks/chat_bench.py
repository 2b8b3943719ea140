"""Chat app benchmark: in-process transformers vs llama.cpp's server, alone and under 10 concurrent users.

    python benchmarks/chat_bench.py [--config configs/chat.yaml] [--users 10] [--threads 1] [--data DIR]

Both paths are measured in the same run, one after the other: the in-process path (the config's
first model, transformers) and the llama.cpp path (the same model's GGUF in llama.cpp's server,
`--llamacpp-parallel` slots, streamed over its OpenAI-compatible API by the app's openai backend),
with `--llamacpp-threads` (default: `llamacpp.threads`) and, for the one-user numbers, also with
`--baseline-llamacpp-threads` (the previous default, 2). Each server answers one warm-up request
when it starts (`tasks.chat.llamacpp.warm_up`); its time is reported.

1. Generation alone (`tasks.chat.generation.stream_reply`, greedy, 64 new tokens, median of 3 runs) for a
   short and a long prompt: time to first token (prompt processing + first token) and decode
   tokens/s (the tokens after the first, over the time after the first).
2. One user through the served app on llama.cpp (`--runs` messages, median): the time to the first
   token a gradio_client sees, queue join, SSE, the backend's HTTP request and llama.cpp included.
3. The served app (`tasks.chat.ui`, real Gradio server on 127.0.0.1): `--users` gradio_client
   clients send one message each at the same moment; per-user latency to the first streamed token
   and to the full reply, p50/p95. The app queue is bounded (server.max_queue) and generates
   server.concurrency_limit replies at once.

Prints a PASS/FAIL line against issue #12's one-user targets (llama.cpp path, short prompt, one user
through the app: first token <= 0.5 s; decode >= 30 tokens/s). Writes
benchmarks/results/chat_bench.json and .md. The long prompt is made of Alpaca rows read from
alpaca_5000.json in the benchmark data folder (--data, $FTLLM_BENCH_DATA: benchmarks/bench_data.py,
docs/data.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet defaults before the libraries load)
from benchmarks import bench_data  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHORT_PROMPT = "Write a short paragraph about the history of Paris."
TARGET_TTFT_S = 0.5  # issue #12: one user, through the app
TARGET_DECODE_TOKENS_S = 30.0


def long_prompt(tokenizer, alpaca: Path, target_tokens: int = 1000) -> str:
    """About `target_tokens` tokens of real instructions (Alpaca rows) to summarise."""
    rows = json.loads(alpaca.read_text(encoding="utf-8"))
    parts, total = [], 0
    for row in rows:
        text = f"{row['instruction']} {row['input']} {row['output']}".strip()
        total += len(tokenizer.encode(text, add_special_tokens=False))
        parts.append(text)
        if total >= target_tokens:
            break
    return "Summarise the following notes in two sentences.\n\n" + "\n".join(parts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def medians(measured: list[dict], prompt_tokens: int) -> dict:
    """The median run of a prompt: time to first token, decode speed, reply length."""
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_s": statistics.median(m["ttft_s"] for m in measured),
        "decode_tokens_per_s": statistics.median(
            m["decode_tokens_per_s"] for m in measured if m["decode_tokens_per_s"]
        ),
        "new_tokens": statistics.median(m["new_tokens"] for m in measured),
        "runs": len(measured),
    }


def time_generation(loaded, prompt: str, max_new_tokens: int, runs: int) -> dict:
    from tasks.chat.generation import stream_reply
    from tasks.chat.prompts import build_prompt
    from tasks.chat.sampling import SamplingSettings

    messages = [{"role": "user", "content": prompt}]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    prompt_tokens = len(build_prompt(loaded.tokenizer, messages, loaded.context_length, max_new_tokens)[0])
    measured = []
    for _ in range(runs):
        started = time.perf_counter()
        first = None
        text = ""
        for delta in stream_reply(loaded, messages, settings):
            first = first or time.perf_counter()
            text += delta
        ended = time.perf_counter()
        tokens = len(loaded.tokenizer.encode(text, add_special_tokens=False))
        measured.append(
            {
                "ttft_s": first - started,
                "decode_tokens_per_s": (tokens - 1) / (ended - first) if tokens > 1 and ended > first else None,
                "new_tokens": tokens,
            }
        )
    return medians(measured, prompt_tokens)


def time_llamacpp(base_url: str, alias: str, prompt: str, max_new_tokens: int, runs: int) -> dict:
    """The same measurement through the openai backend (HTTP streaming) against llama.cpp's server."""
    from tasks.chat.backends import ChatModelOptions, make_chat_model

    options = ChatModelOptions(
        provider="openai", model=alias, base_url=base_url, temperature=0.0, max_new_tokens=max_new_tokens
    )
    model = make_chat_model(options)
    measured, prompt_tokens = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        first, usage = None, None
        for chunk in model.stream([("user", prompt)]):
            if chunk.text:
                first = first or time.perf_counter()
            usage = chunk.usage_metadata or usage
        ended = time.perf_counter()
        tokens, prompt_tokens = usage["output_tokens"], usage["input_tokens"]
        measured.append(
            {
                "ttft_s": first - started,
                "decode_tokens_per_s": (tokens - 1) / (ended - first) if tokens > 1 and ended > first else None,
                "new_tokens": tokens,
            }
        )
    return medians(measured, prompt_tokens)


def concurrent_users(url: str, model: str, users: int, max_new_tokens: int) -> dict:
    from gradio_client import Client

    clients = [Client(url, verbose=False, httpx_kwargs={"timeout": 600}) for _ in range(users)]
    barrier = threading.Barrier(users)
    results: list[dict] = [None] * users  # type: ignore[list-item]

    def one_user(index: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        first = None
        try:
            job = clients[index].submit(
                f"User {index}: name three colours.", [], model, "", 0.0, 0.9, 50, 1.1, max_new_tokens, api_name="/chat"
            )
            for history, _ in job:
                if first is None and history and history[-1]["role"] == "assistant" and text_of(history[-1]):
                    first = time.perf_counter()
            history, _ = job.result()
            ok = history[-1]["role"] == "assistant" and bool(text_of(history[-1]))
            results[index] = {
                "ok": ok,
                "latency_s": time.perf_counter() - started,
                "first_token_s": (first or time.perf_counter()) - started,
            }
        except Exception as error:  # reported, never hidden
            results[index] = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "latency_s": time.perf_counter() - started,
            }

    threads = [threading.Thread(target=one_user, args=(i,)) for i in range(users)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    latencies = [r["latency_s"] for r in results if r["ok"]]
    firsts = [r["first_token_s"] for r in results if r["ok"]]
    return {
        "users": users,
        "ok": len(latencies),
        "errors": [r.get("error") for r in results if not r["ok"]],
        "max_new_tokens": max_new_tokens,
        "wall_s": wall,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "first_token_p50_s": percentile(firsts, 50),
        "first_token_p95_s": percentile(firsts, 95),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/chat.yaml")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--user-max-new-tokens", type=int, default=32)
    parser.add_argument("--llamacpp-parallel", type=int, default=10, help="llama.cpp server slots")
    parser.add_argument("--llamacpp-threads", type=int, help="llama.cpp CPU threads; default: llamacpp.threads")
    parser.add_argument(
        "--baseline-llamacpp-threads", type=int, default=2, help="llama.cpp threads of the one-user baseline rows"
    )
    bench_data.add_data_argument(parser)
    args = parser.parse_args(argv)
    alpaca = bench_data.data_file(bench_data.data_folder(args.data), "alpaca_5000.json")

    import torch

    from tasks.chat.choices import Endpoint
    from tasks.chat.config import ChatAppConfig
    from tasks.chat.llamacpp import LlamaCppOptions, start_llamacpp
    from tasks.chat.server import launch
    from tasks.chat.service import ChatService
    from tasks.chat.ui import build_app
    from tasks.core.config import load_config

    torch.set_num_threads(args.threads)
    llama_threads = args.llamacpp_threads or LlamaCppOptions.threads
    config = load_config(ChatAppConfig, args.config, [f"server.port={free_port()}", "list_registry=false"])
    model = config.models[0]
    service = ChatService(config)
    load_started = time.perf_counter()
    loaded = service.pool.get(model)
    load_s = time.perf_counter() - load_started

    report: dict = {
        "model": model,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "model_load_s": load_s,
        "context_length": loaded.context_length,
        "command": "python benchmarks/chat_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    long_text = long_prompt(loaded.tokenizer, alpaca)
    report["short_prompt"] = time_generation(loaded, SHORT_PROMPT, args.max_new_tokens, args.runs)
    report["long_prompt"] = time_generation(loaded, long_text, args.max_new_tokens, args.runs)

    def llama_server(threads: int):
        """The llama.cpp path: the same GGUF, and enough context per slot for the long prompt."""
        return start_llamacpp(
            LlamaCppOptions(
                enabled=True,
                model=model,
                parallel=args.llamacpp_parallel,
                context=4096 * args.llamacpp_parallel,
                threads=threads,
            )
        )

    if args.baseline_llamacpp_threads != llama_threads:
        baseline = llama_server(args.baseline_llamacpp_threads)
        try:
            report["baseline"] = {"threads": args.baseline_llamacpp_threads, "warm_up_s": baseline.warm_up_seconds}
            for name, text in (("short", SHORT_PROMPT), ("long", long_text)):
                report[f"baseline_{name}_prompt"] = time_llamacpp(
                    baseline.base_url, baseline.alias, text, args.max_new_tokens, args.runs
                )
        finally:
            baseline.stop()
            del baseline
    llama = llama_server(llama_threads)
    endpoint = Endpoint(llama.alias, llama.base_url).choice
    report["llamacpp"] = {
        "parallel": args.llamacpp_parallel,
        "threads": llama_threads,
        "warm_up_s": llama.warm_up_seconds,
    }
    report["llamacpp_short_prompt"] = time_llamacpp(
        llama.base_url, llama.alias, SHORT_PROMPT, args.max_new_tokens, args.runs
    )
    report["llamacpp_long_prompt"] = time_llamacpp(
        llama.base_url, llama.alias, long_text, args.max_new_tokens, args.runs
    )
    # Served from llama.cpp, the app lets as many replies run as the server has slots.
    llama_server = dataclasses.replace(config.server, port=free_port(), concurrency_limit=args.llamacpp_parallel)
    try:
        for key, choice, app_config in (
            ("app", model, config),
            ("llamacpp_app", endpoint, dataclasses.replace(config, server=llama_server)),
        ):
            app = build_app(app_config, ChatService(app_config, service.pool), [choice])
            url = launch(app, app_config)
            try:
                if key == "llamacpp_app":  # one user first, alone on the server
                    alone = [concurrent_users(url, choice, 1, args.max_new_tokens) for _ in range(args.runs)]
                    report["llamacpp_app_one_user"] = {
                        "max_new_tokens": args.max_new_tokens,
                        "runs": args.runs,
                        "ok": sum(a["ok"] for a in alone),
                        "first_token_s": statistics.median(a["first_token_p50_s"] for a in alone),
                        "reply_s": statistics.median(a["latency_p50_s"] for a in alone),
                    }
                report[key] = {
                    "concurrency_limit": app_config.server.concurrency_limit,
                    "max_queue": app_config.server.max_queue,
                    **concurrent_users(url, choice, args.users, args.user_max_new_tokens),
                }
            finally:
                app.close()
    finally:
        llama.stop()
    report["load_average_after"] = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat_bench.json").write_text(json.dumps(report, indent=2, default=float))
    (RESULTS / "chat_bench.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["app"]["ok"] == report["llamacpp_app"]["ok"] == args.users else 1


def verdict(r: dict) -> str:
    """Issue #12's one-user targets on the llama.cpp path."""
    first = r["llamacpp_app_one_user"]["first_token_s"]
    decode = r["llamacpp_short_prompt"]["decode_tokens_per_s"]
    fails = []
    if not first <= TARGET_TTFT_S:
        fails.append(f"first token through the app {first:.2f} s > {TARGET_TTFT_S} s")
    if not decode >= TARGET_DECODE_TOKENS_S:
        fails.append(f"decode {decode:.1f} tokens/s < {TARGET_DECODE_TOKENS_S:.0f}")
    return "PASS" if not fails else "FAIL (" + "; ".join(fails) + ")"


def _generation_rows(r: dict) -> list[str]:
    rows = []
    paths = [("transformers, in process", "")]
    if "baseline" in r:
        paths.append((f"llama.cpp server, {r['baseline']['threads']} threads (baseline)", "baseline_"))
    paths.append((f"llama.cpp server, {r['llamacpp']['threads']} threads", "llamacpp_"))
    for path, prefix in paths:
        for name in ("short", "long"):
            m = r[f"{prefix}{name}_prompt"]
            rows.append(
                f"| {path} | {name} | {m['prompt_tokens']} | {m['ttft_s']:.2f} s | {m['decode_tokens_per_s']:.1f} | "
                f"{m['new_tokens']} |"
            )
    return rows


def _app_rows(r: dict) -> list[str]:
    rows = []
    for path, key in (("transformers, in process", "app"), ("llama.cpp server", "llamacpp_app")):
        a = r[key]
        rows.append(
            f"| {path} | {a['users']} | {a['ok']} | {a['first_token_p50_s']:.2f} s | {a['first_token_p95_s']:.2f} s | "
            f"{a['latency_p50_s']:.2f} s | {a['latency_p95_s']:.2f} s | {a['wall_s']:.1f} s |"
        )
        rows += [f"| errors: {a['errors']} |"] if a["errors"] else []
    return rows


def markdown(r: dict) -> str:
    a, llama, alone = r["app"], r["llamacpp"], r["llamacpp_app_one_user"]
    warm = f"llama.cpp warm-up request at start: {llama['warm_up_s']:.2f} s" + (
        f" ({r['baseline']['threads']} threads: {r['baseline']['warm_up_s']:.2f} s)" if "baseline" in r else ""
    )
    return "\n".join(
        [
            f"# Chat benchmark: {r['model']}",
            "",
            f"Command: `{r['command']}`  ",
            f"CPU: {r['cpus']} cores ({r['cpu']}), torch threads {r['threads']}, llama.cpp threads "
            f"{llama['threads']} and {llama['parallel']} slots; load average before "
            f"{r['load_average_before'][0]:.1f} / after {r['load_average_after'][0]:.1f} (shared machine)  ",
            f"Model load (transformers): {r['model_load_s']:.1f} s; context {r['context_length']} tokens; {warm}",
            "",
            "One user, greedy:",
            "",
            "| path | prompt | prompt tokens | time to first token | decode tokens/s | new tokens |",
            "| --- | --- | --- | --- | --- | --- |",
            *_generation_rows(r),
            "",
            f"One user through the app on llama.cpp ({llama['threads']} threads), short message, "
            f"{alone['max_new_tokens']} new tokens, median of {alone['runs']} ({alone['ok']} answered): first token "
            f"{alone['first_token_s']:.2f} s, whole reply {alone['reply_s']:.2f} s.",
            "",
            f"Issue #12 one-user targets (first token through the app <= {TARGET_TTFT_S} s, decode >= "
            f"{TARGET_DECODE_TOKENS_S:.0f} tokens/s, llama.cpp, short prompt): {verdict(r)}",
            "",
            f"App on 127.0.0.1, {a['users']} concurrent users, one message each ({a['max_new_tokens']} new tokens, greedy); "
            f"app concurrency limit {a['concurrency_limit']} (llama.cpp path: {r['llamacpp_app']['concurrency_limit']}), "
            f"queue bounded at {a['max_queue']}:",
            "",
            "| path | users | answered | first token p50 | first token p95 | reply p50 | reply p95 | wall |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *_app_rows(r),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
