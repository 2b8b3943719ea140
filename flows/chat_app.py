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

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks import chat_ui
from tasks.config import cli_parser, load_config, print_options
from tasks.generation import ModelLoadError
from tasks.reporting import failure_markdown, publish_summary, table

FLOW = "chat-app"
DEFAULT_CONFIG = "configs/chat.yaml"

list_model_choices = task(name="list_model_choices", retries=1, cache_policy=NONE)(chat_ui.model_choices)
launch_app = task(name="launch_app", cache_policy=NONE)(chat_ui.launch)


@task(name="preload_model", cache_policy=NONE)
def preload_model(pool: chat_ui.ModelPool, choice: str) -> dict:
    """Load the default model now; a failure is reported and the app serves the other choices."""
    started = time.monotonic()
    try:
        loaded = pool.get(choice)
    except ModelLoadError as error:
        get_run_logger().warning("the default model could not be loaded (the app still starts): %s", error)
        return {"model": choice, "loaded": False, "error": error.reason}
    return {"model": choice, "loaded": True, "seconds": round(time.monotonic() - started, 1),
            "context_length": loaded.context_length}


def story_markdown(story: dict) -> str:
    preload = story.get("preload") or {}
    lines = [
        f"# chat-app: serving at {story['url']}",
        "Open the URL in a browser on this machine. Cancel this flow run to stop the server.",
        "## Model choices", table(["choice"], [[c] for c in story["choices"]]),
    ]
    if preload:
        status = (f"loaded in {preload['seconds']} s (context {preload['context_length']} tokens)"
                  if preload["loaded"] else f"FAILED: {preload['error']}")
        lines += ["## Default model", table(["model", "status"], [[preload["model"], status]])]
    lines += ["## Server", table(["host", "port", "concurrency limit", "max queue", "login"],
                                 [[story["server"]["host"], story["server"]["port"],
                                   story["server"]["concurrency_limit"], story["server"]["max_queue"],
                                   "on" if story["login"] else "off"]])]
    return "\n\n".join(lines)


@flow(name=FLOW, log_prints=False)
def chat_app(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
             serve_seconds: float | None = None) -> dict:
    """Serve until cancelled (or for `serve_seconds`, for demos and smoke tests)."""
    cfg = load_config(chat_ui.ChatAppConfig, config, overrides)
    logger = get_run_logger()
    story: dict = {"flow": FLOW, "config": config, "overrides": overrides or [],
                   "server": cfg.server.__dict__, "login": False}
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


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(__doc__.splitlines()[0], DEFAULT_CONFIG)
    parser.add_argument("--serve-seconds", type=float, default=None,
                        help="stop after this many seconds (default: serve until Ctrl-C)")
    args = parser.parse_args(argv)
    if args.help_config:
        print_options(chat_ui.ChatAppConfig)
        return 0
    try:
        story = chat_app(config=args.config, overrides=args.overrides, serve_seconds=args.serve_seconds)
    except KeyboardInterrupt:
        print("chat-app: stopped")
        return 0
    except Exception as error:  # the flow already recorded the failure; tell the person why
        print(f"chat-app FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"chat-app: served {story['url']}, stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
