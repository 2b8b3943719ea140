"""`chat-app`: serve the Gradio chatbot over the base model, published adapters and the documents.

    [start_llamacpp] → list_model_choices → preload_model → launch_app → serve until the run is cancelled

    python -m flows.chat_app [--set server.port=7861] [--set documents=configs/rag.yaml]
    prefect deployment run chat-app/chat-app          (with the local stack up; cancel the flow run to stop)

The flow run stays RUNNING while the app serves. Cancelling it (or Ctrl-C) stops the server and
frees the port within seconds.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger

import tasks  # noqa: F401  (quiet defaults before the libraries load)
from tasks.chat.choices import Endpoint, model_choices
from tasks.chat.config import ChatAppConfig
from tasks.chat.llamacpp import start_llamacpp
from tasks.chat.model_pool import ModelPool, ModelPreload, preload
from tasks.chat.report import ChatAppRun, serving_line, stopped_line, summary_markdown
from tasks.chat.server import launch, serve_until_stopped
from tasks.chat.service import ChatService
from tasks.chat.ui import build_app
from tasks.core.cli import run_cli
from tasks.core.config import load_config
from tasks.core.reporting import failure_markdown, publish_summary
from tasks.core.steps import step

FLOW = "chat-app"
DEFAULT_CONFIG = "configs/chat.yaml"

list_model_choices = step(model_choices, name="list_model_choices", io_retries=1)
launch_app = step(launch, name="launch_app")
start_llamacpp_server = step(start_llamacpp, name="start_llamacpp")


@step
def preload_model(pool: ModelPool, choice: str) -> ModelPreload:
    """Load the default model now; a failure is reported and the app serves the other choices."""
    outcome = preload(pool, choice)
    if not outcome.loaded:
        get_run_logger().warning("the default model could not be loaded (the app still starts): %s", outcome.error)
    return outcome


@flow(name=FLOW, log_prints=False)
def chat_app(
    config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, serve_seconds: float | None = None
) -> ChatAppRun:
    """Serve until cancelled (or for `serve_seconds`, for demos and smoke tests)."""
    cfg = load_config(ChatAppConfig, config, overrides)
    run = ChatAppRun(flow=FLOW, config=config, overrides=overrides or [], server=cfg.server)
    try:
        if cfg.llamacpp.enabled:
            llamacpp = start_llamacpp_server(cfg.llamacpp)  # serves until this process ends
            run.llamacpp = llamacpp.base_url
            cfg.endpoints.insert(0, Endpoint(llamacpp.alias, llamacpp.base_url).choice)
        service = ChatService(cfg)
        run.choices = list_model_choices(cfg)
        if cfg.preload and not cfg.endpoints:  # with a server as the default, models load on first use
            run.preload = preload_model(service.pool, cfg.models[0])
        app = build_app(cfg, service, run.choices)
        run.url = launch_app(app, cfg)
        run.login = bool(app.auth)
    except Exception as error:
        run.error = f"{type(error).__name__}: {error}"
        publish_summary(FLOW, failure_markdown(run))
        raise
    publish_summary(FLOW, summary_markdown(run))
    get_run_logger().info("chat app serving at %s (cancel the flow run or press Ctrl-C to stop)", run.url)
    print(serving_line(run), flush=True)
    serve_until_stopped(app, serve_seconds)
    return run


def add_arguments(parser) -> None:
    parser.add_argument(
        "--serve-seconds", type=float, default=None, help="stop after this many seconds (default: serve until Ctrl-C)"
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        chat_app,
        ChatAppConfig,
        DEFAULT_CONFIG,
        argv,
        add_arguments=add_arguments,
        flow_kwargs=lambda args, parser: {"serve_seconds": args.serve_seconds},
        show=lambda run, args: print(stopped_line(run)),
        stop_on_interrupt=True,
    )


if __name__ == "__main__":
    sys.exit(main())
