"""Chat app load test: N concurrent clients hold multi-turn conversations for a fixed time, on both paths.

    python benchmarks/chat_load.py [--config configs/chat.yaml] [--clients 20] [--seconds 60]

Run twice in one go, same clients and time: the in-process transformers path (the config's first
model), then the llama.cpp path (the same GGUF in llama.cpp's server with `--llamacpp-parallel`
slots, the app streaming from it; the app's concurrency limit is raised to the slots).

Each client is its own gradio_client session against the real app on 127.0.0.1. It sends a
message, waits for the streamed reply, and sends the next one with the history it got back, until
the time is up (a turn already started is finished). Checked on every turn: no error, the reply is
not empty, and the returned history is exactly the history sent plus this turn (every earlier
message intact, nothing from another session). Reported: turns, errors, broken histories, and the
turn latency p50/p95. The app's queue is bounded (server.max_queue) and generates
server.concurrency_limit replies at once.

Writes benchmarks/results/chat_load.json and .md; exits non-zero on any error or broken history.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet defaults before the libraries load)

RESULTS = ROOT / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def client_loop(
    url: str, model: str, index: int, deadline: list[float], max_new_tokens: int, start: threading.Barrier, out: dict
) -> None:
    from gradio_client import Client

    history: list[dict] = []
    turns, latencies, firsts, errors, broken = 0, [], [], [], []
    try:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
    except Exception as error:  # still meet the others at the barrier, or nobody starts
        start.wait()
        out[index] = {
            "turns": 0,
            "latencies": [],
            "first_tokens": [],
            "errors": [f"connect: {error}"],
            "broken": [],
            "final_messages": 0,
        }
        return
    start.wait()
    while time.monotonic() < deadline[0]:
        message = f"[client {index} turn {turns}] Name a colour."
        sent = [(m["role"], text_of(m)) for m in history]
        started, first = time.monotonic(), None
        try:
            job = client.submit(message, history, model, "", 0.7, 0.9, 50, 1.1, max_new_tokens, api_name="/chat")
            for update, _notice in job:
                if first is None and len(update) > len(history) + 1 and text_of(update[-1]):
                    first = time.monotonic()
            new_history, _notice = job.result()
        except Exception as error:
            errors.append(f"turn {turns}: {type(error).__name__}: {error}")
            break
        latencies.append(time.monotonic() - started)
        firsts.append((first or time.monotonic()) - started)
        got = [(m["role"], text_of(m)) for m in new_history]
        # Sent history, then this user message, then (maybe a notice box, then) the reply.
        if (
            got[: len(sent)] != sent
            or got[len(sent)] != ("user", message)
            or got[-1][0] != "assistant"
            or not got[-1][1].strip()
            or any(f"[client {index} " not in t for r, t in got if r == "user")
        ):
            broken.append(f"turn {turns}: history came back changed")
        history = new_history
        turns += 1
    out[index] = {
        "turns": turns,
        "latencies": latencies,
        "first_tokens": firsts,
        "errors": errors,
        "broken": broken,
        "final_messages": len(history),
    }


def run_load(url: str, model: str, args, config) -> dict:
    """`args.clients` clients talk to `model` on the app at `url` for `args.seconds`."""
    results: dict[int, dict] = {}
    start = threading.Barrier(args.clients + 1)  # every client connected before the clock starts
    deadline = [0.0]
    threads = [
        threading.Thread(target=client_loop, args=(url, model, i, deadline, args.max_new_tokens, start, results))
        for i in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + args.seconds + 120  # connecting 20 clients takes a while
    start.wait()
    began = time.monotonic()
    deadline[0] = began + args.seconds
    for thread in threads:
        thread.join()
    latencies = [x for r in results.values() for x in r["latencies"]]
    firsts = [x for r in results.values() for x in r["first_tokens"]]
    return {
        "model": model,
        "wall_s": time.monotonic() - began,
        "concurrency_limit": config.server.concurrency_limit,
        "max_queue": config.server.max_queue,
        "turns": sum(r["turns"] for r in results.values()),
        "clients_finished": len(results),
        "errors": [e for r in results.values() for e in r["errors"]],
        "broken_histories": [b for r in results.values() for b in r["broken"]],
        "turns_per_client": sorted(r["turns"] for r in results.values()),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "first_token_p50_s": percentile(firsts, 50),
        "first_token_p95_s": percentile(firsts, 95),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/chat.yaml")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--llamacpp-parallel", type=int, default=20, help="llama.cpp server slots")
    parser.add_argument("--llamacpp-threads", type=int, default=2, help="llama.cpp CPU threads")
    args = parser.parse_args(argv)

    import dataclasses

    import torch

    from tasks.chat.choices import Endpoint
    from tasks.chat.config import ChatAppConfig
    from tasks.chat.llamacpp import LlamaCppOptions, start_llamacpp
    from tasks.chat.server import launch
    from tasks.chat.service import ChatService
    from tasks.chat.ui import build_app
    from tasks.core.config import load_config

    torch.set_num_threads(args.threads)
    config = load_config(ChatAppConfig, args.config, [f"server.port={free_port()}", "list_registry=false"])
    model = config.models[0]
    service = ChatService(config)
    service.pool.get(model)  # loaded before the clock starts
    llama = start_llamacpp(
        LlamaCppOptions(
            enabled=True,
            model=model,
            parallel=args.llamacpp_parallel,
            context=2048 * args.llamacpp_parallel,
            threads=args.llamacpp_threads,
        )
    )
    endpoint = Endpoint(llama.alias, llama.base_url).choice
    llama_server = dataclasses.replace(config.server, port=free_port(), concurrency_limit=args.llamacpp_parallel)
    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "llamacpp_server": {"parallel": args.llamacpp_parallel, "threads": args.llamacpp_threads},
        "command": "python benchmarks/chat_load.py " + " ".join(argv or sys.argv[1:]),
    }
    try:
        for path, choice, app_config in (
            ("transformers", model, config),
            ("llamacpp", endpoint, dataclasses.replace(config, server=llama_server)),
        ):
            app = build_app(app_config, ChatService(app_config, service.pool), [choice])
            url = launch(app, app_config)
            try:
                report[path] = run_load(url, choice, args, app_config)
            finally:
                app.close()
    finally:
        llama.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat_load.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "chat_load.md").write_text(markdown(report))
    print(markdown(report))
    ok = all(
        not r["errors"]
        and not r["broken_histories"]
        and r["clients_finished"] == args.clients
        and all(t > 0 for t in r["turns_per_client"])
        for r in (report["transformers"], report["llamacpp"])
    )
    return 0 if ok else 1


def _row(path: str, r: dict, clients: int) -> str:
    return (
        f"| {path} | {r['concurrency_limit']} | {r['clients_finished']}/{clients} | {r['turns']} | {len(r['errors'])} | "
        f"{len(r['broken_histories'])} | {min(r['turns_per_client'], default=0)}-{max(r['turns_per_client'], default=0)} | "
        f"{r['first_token_p50_s']:.2f} s | {r['first_token_p95_s']:.2f} s | {r['latency_p50_s']:.2f} s | "
        f"{r['latency_p95_s']:.2f} s | {r['wall_s']:.1f} s | {r['load_average'][0]:.1f} |"
    )


def markdown(r: dict) -> str:
    paths = (("transformers, in process", r["transformers"]), ("llama.cpp server", r["llamacpp"]))
    problems = []
    for path, p in paths:
        problems += [f"{path} errors: {p['errors'][:5]}"] if p["errors"] else []
        problems += [f"{path} broken histories: {p['broken_histories'][:5]}"] if p["broken_histories"] else []
    return "\n".join(
        [
            f"# Chat load test: {r['clients']} clients for {r['seconds']:.0f} s ({r['transformers']['model']})",
            "",
            f"Command: `{r['command']}`  ",
            f"Torch threads {r['threads']}; llama.cpp {r['llamacpp_server']['threads']} threads, "
            f"{r['llamacpp_server']['parallel']} slots; "
            f"{r['max_new_tokens']} new tokens a turn; shared machine (load average at the end of each path in the table)",
            "",
            "| path | app concurrency | clients | turns | errors | broken histories | turns per client (min-max) | "
            "first token p50 | first token p95 | turn p50 | turn p95 | wall | load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *(_row(path, p, r["clients"]) for path, p in paths),
            *(["", *problems] if problems else []),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
