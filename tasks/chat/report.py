"""What a `chat-app` run tells: the Prefect summary (serving, or FAILED and why) and the terminal lines."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.chat.config import ServerOptions
from tasks.chat.model_pool import ModelPreload
from tasks.core.reporting import table


@dataclass
class ChatAppRun:
    """A chat-app run as far as it got: the steps fill it in as they finish."""

    flow: str
    config: str
    overrides: list[str]
    server: ServerOptions
    login: bool = False
    choices: list[str] | None = None
    preload: ModelPreload | None = None
    url: str | None = None
    llamacpp: str | None = None  # the API root of the llama.cpp server the run started
    error: str | None = None  # why the run failed before serving


def _preload_status(preload: ModelPreload) -> str:
    if preload.loaded:
        return f"loaded in {preload.seconds} s (context {preload.context_length} tokens)"
    return f"FAILED: {preload.error}"


def summary_markdown(run: ChatAppRun) -> str:
    """The summary of a run that serves: where, which choices, the default model, the server."""
    lines = [
        f"# {run.flow}: serving at {run.url}",
        "Open the URL in a browser on this machine. Cancel this flow run to stop the server.",
        "## Model choices",
        table(["choice"], [[c] for c in run.choices or []]),
    ]
    if run.llamacpp:
        lines += ["## llama.cpp server", f"OpenAI-compatible API at {run.llamacpp}"]
    if run.preload:
        lines += ["## Default model", table(["model", "status"], [[run.preload.model, _preload_status(run.preload)]])]
    server = run.server
    lines += [
        "## Server",
        table(
            ["host", "port", "concurrency limit", "max queue", "login"],
            [[server.host, server.port, server.concurrency_limit, server.max_queue, "on" if run.login else "off"]],
        ),
    ]
    return "\n\n".join(lines)


def serving_line(run: ChatAppRun) -> str:
    return f"{run.flow}: serving at {run.url}  (Ctrl-C stops it)"


def stopped_line(run: ChatAppRun) -> str:
    return f"{run.flow}: served {run.url}, stopped"
