"""The chat-app flow's story: its typed result, the Prefect summary and the terminal lines."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tasks.chat.config import ServerOptions
from tasks.chat.model_pool import ModelPool, ModelPreload, preload
from tasks.chat.report import ChatAppRun, serving_line, stopped_line, summary_markdown
from tasks.core.reporting import failure_markdown
from tests.support.chat import free_port, port_is_free


def a_run() -> ChatAppRun:
    return ChatAppRun(flow="chat-app", config="configs/chat.yaml", overrides=["preload=false"], server=ServerOptions())


def test_the_serving_summary_names_the_url_choices_default_model_and_server():
    run = a_run()
    run.choices = ["tiny", "mlflow://chat-lora/2"]
    run.preload = ModelPreload(model="tiny", loaded=True, seconds=1.5, context_length=1024)
    run.url = "http://127.0.0.1:7860/"
    markdown = summary_markdown(run)
    assert markdown.startswith("# chat-app: serving at http://127.0.0.1:7860/\n\n")
    assert "| mlflow://chat-lora/2 |" in markdown
    assert "| tiny | loaded in 1.5 s (context 1024 tokens) |" in markdown
    assert "| 127.0.0.1 | 7860 | 2 | 64 | off |" in markdown
    run.preload = ModelPreload(model="tiny", loaded=False, error="OSError: gone")
    assert "| tiny | FAILED: OSError: gone |" in summary_markdown(run)
    assert serving_line(run) == "chat-app: serving at http://127.0.0.1:7860/  (Ctrl-C stops it)"
    assert stopped_line(run) == "chat-app: served http://127.0.0.1:7860/, stopped"


def test_the_failure_summary_gives_the_reason_and_what_the_run_got_done():
    run = a_run()
    run.choices = ["tiny"]
    run.error = "ConfigError: server.port: 127.0.0.1:7860 is not free"
    markdown = failure_markdown(run)
    assert markdown.startswith(
        "# chat-app: FAILED\n\n**Reason:** ConfigError: server.port: 127.0.0.1:7860 is not free\n\n"
        "## What the run got done\n\n```json\n"
    )
    assert '"choices": [\n    "tiny"\n  ]' in markdown and '"port": 7860' in markdown
    assert '"overrides": [\n    "preload=false"\n  ]' in markdown
    assert '"url"' not in markdown and '"preload"' not in markdown  # steps it never reached


def test_preload_reports_a_model_that_does_not_load(broken_model_dir, tiny_model_dir):
    pool = ModelPool()
    failed = preload(pool, str(broken_model_dir))
    assert not failed.loaded and failed.model == str(broken_model_dir) and failed.error
    loaded = preload(pool, str(tiny_model_dir))
    assert loaded.loaded and loaded.context_length == 1024 and loaded.seconds is not None
    assert str(tiny_model_dir) in pool.loaded()


@pytest.mark.slow
def test_the_flow_serves_returns_its_run_and_reports_a_busy_port(prefect_harness, tiny_model_dir, capsys):
    from prefect.client.orchestration import get_client

    from flows.chat_app import chat_app, main
    from tasks.core.config import ConfigError

    port = free_port()
    overrides = [f"models=[{tiny_model_dir}]", f"server.port={port}", "list_registry=false"]
    run = chat_app(overrides=overrides, serve_seconds=1)
    assert isinstance(run, ChatAppRun) and run.error is None
    assert run.url == f"http://127.0.0.1:{port}/" and run.choices == [str(tiny_model_dir)]
    assert run.preload.loaded and run.preload.model == str(tiny_model_dir) and not run.login
    assert port_is_free(port)

    assert main([*(f"--set={o}" for o in overrides), "--set=preload=false", "--serve-seconds=1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"chat-app: served http://127.0.0.1:{port}/, stopped"

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(ConfigError, match=f"server.port: 127.0.0.1:{port} is not free"):
            chat_app(overrides=overrides, serve_seconds=1)

    async def latest_summary() -> str:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        from prefect.client.schemas.sorting import ArtifactSort

        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["chat-app-summary"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        return artifacts[0].data

    summary = asyncio.run(latest_summary())
    assert summary.startswith(
        f"# chat-app: FAILED\n\n**Reason:** ConfigError: server.port: 127.0.0.1:{port} is not free"
    )
    assert '"choices"' in summary and '"preload"' in summary and '"url"' not in summary
