"""The deployment path: `chat-app/chat-app` run by a real Prefect server and process worker.

Uses the project's local stack (the `local_stack` fixture: deployments/stack.sh in a temporary
data folder on free ports), deploys chat-app from prefect.yaml, runs it, reaches the page over
HTTP, cancels the flow run and checks that the port is free again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.chat import free_port, port_is_free
from tests.support.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def run(args: list[str], env: dict, timeout: float = 180) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


def flow_run_state(env: dict, flow_run_id: str) -> str:
    code = (
        "import asyncio, sys\nfrom prefect.client.orchestration import get_client\n"
        "async def main():\n    async with get_client() as c:\n"
        "        r = await c.read_flow_run(sys.argv[1])\n        print(r.state.type.value)\n"
        "asyncio.run(main())"
    )
    return run([sys.executable, "-c", code, flow_run_id], env).strip()


def page_is_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200 and b"gradio" in response.read().lower()
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
def test_deployment_serves_the_app_until_the_flow_run_is_cancelled(local_stack, tiny_model_dir):
    port = free_port()
    # `models=PATH`, not `models=[PATH]`: `prefect deployment run` prints the parameters through rich,
    # which takes "[/...]" for a markup tag and fails (Prefect 3.9.1) after creating the run.
    overrides = [f"models={tiny_model_dir}", f"server.port={port}", "list_registry=false"]
    run([PREFECT, "--no-prompt", "deploy", "--name", "chat-app"], local_stack)
    out = run(
        [PREFECT, "deployment", "run", "chat-app/chat-app", "--param", f"overrides={json.dumps(overrides)}"],
        local_stack,
    )
    flow_run_id = next(line.split("UUID:")[1].strip() for line in out.splitlines() if "UUID:" in line)

    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: page_is_up(url), 180, f"the app at {url}")
    assert flow_run_state(local_stack, flow_run_id) == "RUNNING"

    cancelled_at = time.monotonic()
    run([PREFECT, "flow-run", "cancel", flow_run_id], local_stack)
    wait_for(lambda: port_is_free(port), 60, f"port {port} to be freed")
    freed_after = time.monotonic() - cancelled_at
    wait_for(lambda: flow_run_state(local_stack, flow_run_id) == "CANCELLED", 60, "the flow run to be CANCELLED", 1)
    assert not page_is_up(url)
    print(f"port freed {freed_after:.1f} s after `prefect flow-run cancel` was started")
    assert freed_after < 60


@pytest.mark.slow
def test_login_from_a_prefect_secret_block(local_stack):
    """server.auth_secret names a Secret block on the Prefect server; only its name is in the config."""
    code = (
        "from prefect.blocks.system import Secret\n"
        "from tasks.chat.auth import resolve_auth\nfrom tasks.chat.config import ServerOptions\n"
        "from tasks.core.config import ConfigError\n"
        "Secret(value={'username': 'carol', 'password': 'block-pass-123'}).save('chat-login', overwrite=True)\n"
        "print(resolve_auth(ServerOptions(auth_secret='chat-login')))\n"
        "try:\n    resolve_auth(ServerOptions(auth_secret='no-such-block'))\n"
        "except ConfigError as error:\n    print(error)\n"
    )
    lines = run([sys.executable, "-c", code], local_stack).strip().splitlines()
    assert lines[0] == "('carol', 'block-pass-123')"
    assert lines[1].startswith("server.auth_secret: no Prefect Secret block named 'no-such-block'")
