"""`chat-app`: serve the Gradio chatbot over the base model, published adapters and the documents.

    list_model_choices → preload_model → launch_app → serve until the run is cancelled

    python -m flows.chat_app [--set server.port=7861] [--set documents=configs/rag.yaml]
    prefect deployment run chat-app/chat-app          (with the local stack up; cancel the flow run to stop)

The flow run stays RUNNING while the app serves. Cancelling it (or Ctrl-C) stops the server and
frees the port within seconds.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.chat import app as chat_ui
from tasks.chat.generation import ModelLoadError
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import failure_markdown, publish_summary, table
from tasks.core.steps import step

FLOW = "chat-app"
DEFAULT_CONFIG = "configs/chat.yaml"

list_model_choices = step(chat_ui.model_choices, name="list_model_choices", io_retries=1)
launch_app = step(chat_ui.launch, name="launch_app")


@step
def preload_model(pool: chat_ui.ModelPool, choice: str) -> dict:
    """Load the default model now; a failure is reported and the app serves the other choices."""
    started = time.monotonic()
    try:
        loaded = pool.get(choice)
    except ModelLoadError as error:
        get_run_logger().warning("the default model could not be loaded (the app still starts): %s", error)
        return {"model": choice, "loaded": False, "error": error.reason}
    return {
        "model": choice,
        "loaded": True,
        "seconds": round(time.monotonic() - started, 1),
        "context_length": loaded.context_length,
    }


def story_markdown(story: dict) -> str:
    preload = story.get("preload") or {}
    lines = [
        f"# chat-app: serving at {story['url']}",
        "Open the URL in a browser on this machine. Cancel this flow run to stop the server.",
        "## Model choices",
        table(["choice"], [[c] for c in story["choices"]]),
    ]
    if preload:
        status = (
            f"loaded in {preload['seconds']} s (context {preload['context_length']} tokens)"
            if preload["loaded"]
            else f"FAILED: {preload['error']}"
        )
        lines += ["## Default model", table(["model", "status"], [[preload["model"], status]])]
    lines += [
        "## Server",
        table(
            ["host", "port", "concurrency limit", "max queue", "login"],
            [
                [
                    story["server"]["host"],
                    story["server"]["port"],
                    story["server"]["concurrency_limit"],
                    story["server"]["max_queue"],
                    "on" if story["login"] else "off",
                ]
            ],
        ),
    ]
    return "\n\n".join(lines)


@flow(name=FLOW, log_prints=False)
def chat_app(
    config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, serve_seconds: float | None = None
) -> dict:
    """Serve until cancelled (or for `serve_seconds`, for demos and smoke tests)."""
    cfg = load_config(chat_ui.ChatAppConfig, config, overrides)
    logger = get_run_logger()
    story: dict = {
        "flow": FLOW,
        "config": config,
        "overrides": overrides or [],
        "server": cfg.server.__dict__,
        "login": False,
    }
    try:
        service = chat_ui.ChatService(cfg)
        story["choices"] = list_model_choices(cfg)
        if cfg.preload:
            story["preload"] = preload_model(service.pool, cfg.models[0])
        app = chat_ui.build_app(cfg, service, story["choices"])
        story["url"] = launch_app(app, cfg)
        story["login"] = bool(app.auth)
    except Exception as error:
        story["error"] = f"{type(error).__name__}: {error}"
        publish_summary(FLOW, failure_markdown(story))
        raise
    publish_summary(FLOW, story_markdown(story))
    logger.info("chat app serving at %s (cancel the flow run or press Ctrl-C to stop)", story["url"])
    print(f"chat-app: serving at {story['url']}  (Ctrl-C stops it)", flush=True)
    chat_ui.serve_until_stopped(app, serve_seconds)
    return story


def add_arguments(parser) -> None:
    parser.add_argument(
        "--serve-seconds", type=float, default=None, help="stop after this many seconds (default: serve until Ctrl-C)"
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        chat_app,
        chat_ui.ChatAppConfig,
        DEFAULT_CONFIG,
        argv,
        description=__doc__.splitlines()[0],
        add_arguments=add_arguments,
        flow_kwargs=lambda args, parser: {"serve_seconds": args.serve_seconds},
        show=lambda story, args: print(f"chat-app: served {story['url']}, stopped"),
        stop_on_interrupt=True,
    )


if __name__ == "__main__":
    sys.exit(main())
