"""Chat app load test: N concurrent clients hold multi-turn conversations for a fixed time, on both paths.

    python benchmarks/chat_load.py [--config configs/chat.yaml] [--clients 20] [--seconds 60] [--think-seconds 10]

Four runs in one go, same clients and time: the in-process transformers path (the config's first
model) and the llama.cpp path (the same GGUF in llama.cpp's server with `--llamacpp-parallel`
slots and `--llamacpp-threads` threads, the app streaming from it; the app's concurrency limit is
raised to the slots), each with clients that send their next turn at once (no think time: the
worst case) and with clients that pause `--think-seconds` between turns.

Think time: a real user reads the reply and types the next message. 10 s is the default: reading
a short reply takes about 3 s and typing a one-line message about 7 s (40 words a minute). Each
pause is drawn uniformly from 0.5x to 1.5x of it (a fixed seed per client), because users are
not in step; without the spread, 20 clients that started together would stay in lock-step.

Each client is its own gradio_client session against the real app on 127.0.0.1 (the clients run
in a process of their own, apart from the app's). It sends a message, waits for the streamed
reply, and sends the next one with the history it got back, until the time is up (a turn already
started is finished). Checked on every turn: no error, the reply is not empty, and the returned
history is exactly the history sent plus this turn (every earlier message intact, nothing from
another session). Reported: turns, errors, broken histories, the
turn latency p50/p95, and from llama.cpp's /metrics the prompt tokens it computed per turn (what
its prompt cache did not spare). The app's queue is bounded (server.max_queue) and generates
server.concurrency_limit replies at once.

Prints a PASS/FAIL line per llama.cpp run against issue #12's targets (0 errors, every history
intact, first token p95 <= 5 s). Writes benchmarks/results/chat_load.json and .md; exits non-zero
on any error or broken history.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402,F401  (quiet defaults before the libraries load)

RESULTS = ROOT / "benchmarks" / "results"
TARGET_FIRST_TOKEN_P95_S = 5.0  # issue #12, 20 concurrent users


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
    url: str,
    model: str,
    index: int,
    deadline: list[float],
    max_new_tokens: int,
    think_s: float,
    start: threading.Barrier,
    out: dict,
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
    pauses = random.Random(index)
    while time.monotonic() < deadline[0]:
        if turns and think_s:  # reading the reply and typing the next message
            time.sleep(min(think_s * pauses.uniform(0.5, 1.5), max(0.0, deadline[0] - time.monotonic())))
            if time.monotonic() >= deadline[0]:
                break
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


def llama_metrics(url: str | None) -> dict[str, float]:
    """llama.cpp's counters (`/metrics`); none for the in-process path."""
    if url is None:
        return {}
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    names = ("prompt_tokens_total", "tokens_predicted_total")
    return {n: float(line.split()[1]) for line in text.splitlines() for n in names if line.startswith(f"llamacpp:{n} ")}


def clients(url: str, model: str, count: int, seconds: float, max_new_tokens: int, think_s: float, pipe) -> None:
    """The load generator (in a process of its own): `count` clients for `seconds`; sends back
    (results per client, wall seconds)."""
    results: dict[int, dict] = {}
    start = threading.Barrier(count + 1)  # every client connected before the clock starts
    deadline = [0.0]
    threads = [
        threading.Thread(target=client_loop, args=(url, model, i, deadline, max_new_tokens, think_s, start, results))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    deadline[0] = time.monotonic() + seconds + 120  # connecting 20 clients takes a while
    start.wait()
    began = time.monotonic()
    deadline[0] = began + seconds
    for thread in threads:
        thread.join()
    pipe.send((results, time.monotonic() - began))


def run_load(url: str, model: str, args, config, think_s: float, llama_url: str | None) -> dict:
    """`args.clients` clients talk to `model` on the app at `url` for `args.seconds`.

    The clients run in a child process: in the app's process their 20 threads would take the
    GIL from Gradio's event loop and the reply threads, which users' browsers do not.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # this process has llama.cpp's and torch's threads
    receiver, sender = context.Pipe(duplex=False)
    before = llama_metrics(llama_url)  # the clients send no turn before the clock starts
    child = context.Process(
        target=clients, args=(url, model, args.clients, args.seconds, args.max_new_tokens, think_s, sender)
    )
    child.start()
    sender.close()  # the child's end only: a child that dies ends recv() with EOFError
    try:
        results, wall = receiver.recv()
    except EOFError:
        raise RuntimeError(f"the load generator process died (exit code {child.exitcode})") from None
    child.join()
    after = llama_metrics(llama_url)
    latencies = [x for r in results.values() for x in r["latencies"]]
    firsts = [x for r in results.values() for x in r["first_tokens"]]
    turns = sum(r["turns"] for r in results.values())
    return {
        "model": model,
        "think_seconds": think_s,
        "wall_s": wall,
        "concurrency_limit": config.server.concurrency_limit,
        "max_queue": config.server.max_queue,
        "turns": turns,
        "clients_finished": len(results),
        "errors": [e for r in results.values() for e in r["errors"]],
        "broken_histories": [b for r in results.values() for b in r["broken"]],
        "turns_per_client": sorted(r["turns"] for r in results.values()),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "first_token_p50_s": percentile(firsts, 50),
        "first_token_p95_s": percentile(firsts, 95),
        "load_average": os.getloadavg(),
        "llamacpp_metrics": {n: after[n] - before[n] for n in after},
        "prompt_tokens_computed_per_turn": (after["prompt_tokens_total"] - before["prompt_tokens_total"]) / turns
        if after and turns
        else None,
    }


RUNS = (  # (key, path, think time or not), in the order they run and are shown
    ("transformers", "transformers, in process", False),
    ("transformers_think", "transformers, in process", True),
    ("llamacpp", "llama.cpp server", False),
    ("llamacpp_think", "llama.cpp server", True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/chat.yaml")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--think-seconds", type=float, default=10.0, help="mean pause between turns (think runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--llamacpp-parallel", type=int, default=20, help="llama.cpp server slots")
    parser.add_argument("--llamacpp-threads", type=int, help="llama.cpp CPU threads; default: llamacpp.threads")
    args = parser.parse_args(argv)
    if args.think_seconds <= 0:
        parser.error(f"--think-seconds must be positive (the other runs have none), got {args.think_seconds}")

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
    threads = args.llamacpp_threads or LlamaCppOptions.threads
    load_before = os.getloadavg()
    llama = start_llamacpp(
        LlamaCppOptions(
            enabled=True,
            model=model,
            parallel=args.llamacpp_parallel,
            context=2048 * args.llamacpp_parallel,
            threads=threads,
        )
    )
    endpoint = Endpoint(llama.alias, llama.base_url).choice
    llama_server = dataclasses.replace(config.server, port=free_port(), concurrency_limit=args.llamacpp_parallel)
    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "max_new_tokens": args.max_new_tokens,
        "think_seconds": args.think_seconds,
        "threads": args.threads,
        "llamacpp_server": {"parallel": args.llamacpp_parallel, "threads": threads},
        "load_average_before": load_before,
        "command": "python benchmarks/chat_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    try:
        for key, _label, think in RUNS:
            on_llama = key.startswith("llamacpp")
            choice = endpoint if on_llama else model
            app_config = dataclasses.replace(config, server=llama_server) if on_llama else config
            app = build_app(app_config, ChatService(app_config, service.pool), [choice])
            url = launch(app, app_config)
            try:
                think_s = args.think_seconds if think else 0.0
                report[key] = run_load(url, choice, args, app_config, think_s, llama.url if on_llama else None)
            finally:
                app.close()
    finally:
        llama.stop()
    report["load_average_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat_load.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "chat_load.md").write_text(markdown(report))
    print(markdown(report))
    ok = all(
        not report[key]["errors"]
        and not report[key]["broken_histories"]
        and report[key]["clients_finished"] == args.clients
        and all(t > 0 for t in report[key]["turns_per_client"])
        for key, _label, _think in RUNS
    )
    return 0 if ok else 1


def verdict(r: dict) -> str:
    """Issue #12's targets for 20 concurrent users, checked on one run."""
    fails = []
    fails += [f"{len(r['errors'])} errors"] if r["errors"] else []
    fails += [f"{len(r['broken_histories'])} broken histories"] if r["broken_histories"] else []
    if not r["first_token_p95_s"] <= TARGET_FIRST_TOKEN_P95_S:
        fails.append(f"first token p95 {r['first_token_p95_s']:.2f} s > {TARGET_FIRST_TOKEN_P95_S:.0f} s")
    return "PASS" if not fails else "FAIL (" + "; ".join(fails) + ")"


def _row(label: str, r: dict, clients: int) -> str:
    per_turn = r.get("prompt_tokens_computed_per_turn")
    return (
        f"| {label} | {r['think_seconds']:.0f} s | {r['concurrency_limit']} | {r['clients_finished']}/{clients} | "
        f"{r['turns']} | {len(r['errors'])} | {len(r['broken_histories'])} | "
        f"{min(r['turns_per_client'], default=0)}-{max(r['turns_per_client'], default=0)} | "
        f"{r['first_token_p50_s']:.2f} s | {r['first_token_p95_s']:.2f} s | {r['latency_p50_s']:.2f} s | "
        f"{r['latency_p95_s']:.2f} s | {'-' if per_turn is None else f'{per_turn:.0f}'} | {r['wall_s']:.1f} s | "
        f"{r['load_average'][0]:.1f} |"
    )


def markdown(r: dict) -> str:
    runs = [(label, r[key]) for key, label, _think in RUNS]
    problems = []
    for label, p in runs:
        problems += [f"{label} errors: {p['errors'][:5]}"] if p["errors"] else []
        problems += [f"{label} broken histories: {p['broken_histories'][:5]}"] if p["broken_histories"] else []
    verdicts = [
        f"- llama.cpp, think time {r[key]['think_seconds']:.0f} s: {verdict(r[key])}"
        for key, _label, _think in RUNS
        if key.startswith("llamacpp")
    ]
    return "\n".join(
        [
            f"# Chat load test: {r['clients']} clients for {r['seconds']:.0f} s ({r['transformers']['model']})",
            "",
            f"Command: `{r['command']}`  ",
            f"Torch threads {r['threads']}; llama.cpp {r['llamacpp_server']['threads']} threads, "
            f"{r['llamacpp_server']['parallel']} slots; {r['max_new_tokens']} new tokens a turn; think time: none, "
            f"or {r['think_seconds']:.0f} s on average (0.5x-1.5x) between a client's turns. Shared machine: load "
            f"average {r['load_average_before'][0]:.1f} before, {r['load_average_after'][0]:.1f} after, and at the "
            "end of each run in the table.",
            "",
            "| path | think | app concurrency | clients | turns | errors | broken histories | turns per client "
            "(min-max) | first token p50 | first token p95 | turn p50 | turn p95 | prompt tokens computed per turn "
            "| wall | load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *(_row(label, p, r["clients"]) for label, p in runs),
            "",
            f"Issue #12 targets ({r['clients']} users: 0 errors, every history intact, first token p95 <= "
            f"{TARGET_FIRST_TOKEN_P95_S:.0f} s):",
            "",
            *verdicts,
            *(["", *problems] if problems else []),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
