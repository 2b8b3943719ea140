"""Secrets stay secret, and nothing downloaded runs code.

- The lora-finetune flow publishes to the local Hub with a marker token (the Hub's own random
  write token); then every byte the run left behind is searched for it: the process output, the
  whole FTLLM_DATA_DIR (MLflow database, artifact folders, fetched copies), HF_HOME, the Prefect
  server's home (its database holds the logs, states and results) and the published repo's files.
- The chat app runs with a marker password; the same search, plus: it listens on 127.0.0.1 only.
- Models load with trust_remote_code=False and from safetensors; a pickle is never unpickled, not
  from a base model folder and not from a fetched adapter.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles.hub_server import HubServer
from tests.support.chat import free_port
from tests.support.processes import ROOT, child_env, kill_group, run_flow, wait_for

pytestmark = pytest.mark.timeout(400)


def files_containing(marker: str, *roots: Path) -> list[str]:
    """Every file under `roots` whose bytes contain `marker` (plain, or as UTF-16 as SQLite may store it)."""
    needles = (marker.encode(), marker.encode("utf-16-le"))
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(needle in data for needle in needles):
                    found.append(str(path))
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses something LISTENs on at `port` (from /proc/net/tcp and tcp6)."""
    addresses = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(host)
                if width == 8:
                    addresses.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


@pytest.fixture(scope="module")
def hub():
    with HubServer(orgs=("test-org",)) as server:
        yield server


@pytest.mark.slow
def test_the_hub_token_never_leaves_the_process(prefect_server, hub, tiny_model_dir, tmp_path):
    marker = hub.write_token  # random per test session: found only if something wrote it down
    data = tmp_path / "data"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"{i} it is."}) + "\n" for i in range(40)))
    env = child_env(
        prefect_server,
        data,
        HF_TOKEN=marker,
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_OFFLINE="0",
        HF_HOME=str(tmp_path / "hf-home"),
    )
    argv = [
        "--config",
        "configs/lora_demo.yaml",
        f"--set=model.name={tiny_model_dir}",
        "--set=model.max_length=64",
        f"--set=data.train={rows}",
        "--set=train.max_steps=4",
        "--set=train.batch_size=4",
        "--set=train.save_steps=2",
        "--set=lora.r=4",
        "--set=lora.alpha=8",
        "--set=eval.sample_prompts=[hi]",
        "--set=eval.max_new_tokens=2",
        "--set=publish.uri=hf://test-org/secret-scan",
    ]
    log = tmp_path / "run.log"
    assert run_flow("lora_finetune", argv, env, log) == 0, log.read_text()[-4000:]
    assert "verified: True" in log.read_text()
    assert hub.state.repos["test-org/secret-scan"].private  # it really went to the Hub, with the token

    prefect_home = Path(prefect_server["PREFECT_HOME"])
    control = tmp_path / "control" / "planted.txt"  # the search itself finds what is there
    control.parent.mkdir()
    control.write_text(f"token={marker}")
    assert files_containing(marker, control.parent) == [str(control)]
    leaked = files_containing(marker, log, data, tmp_path / "hf-home", prefect_home)
    assert leaked == [], f"the Hub token was written to {leaked}"
    assert (data / "mlflow.db").is_file() and any((data / "mlartifacts").rglob("adapter_model.safetensors"))
    published = hub.state.repos["test-org/secret-scan"]
    head = published.resolve("main")
    assert all(marker.encode() not in (stored.content or b"") for stored in head.files.values())


@pytest.mark.slow
def test_the_chat_password_never_leaves_the_process_and_the_app_binds_loopback(
    prefect_server,
    tiny_model_dir,
    tmp_path,
):
    from gradio_client import Client

    user, password = "alice", "pw-" + os.urandom(12).hex()
    port = free_port()
    data = tmp_path / "data"
    env = child_env(prefect_server, data, FTLLM_CHAT_USERNAME=user, FTLLM_CHAT_PASSWORD=password)
    log = tmp_path / "chat.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.chat_app",
                f"--set=server.port={port}",
                f"--set=models=[{tiny_model_dir}]",
                "--set=list_registry=false",
                "--set=preload=false",
            ],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: listening_addresses(port) or process.poll() is not None, 180, "the chat app", interval=0.5)
        assert process.poll() is None, log.read_text()[-3000:]
        assert listening_addresses(port) == {"127.0.0.1"}
        with pytest.raises(Exception):  # noqa: B017  (gradio_client raises several types for a refused login)
            Client(f"http://127.0.0.1:{port}/", auth=(user, password + "-wrong"), verbose=False)
        client = Client(f"http://127.0.0.1:{port}/", auth=(user, password), verbose=False)
        assert client.view_api(print_info=False, return_format="dict")  # logged in: the API is open
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill_group(process)
    leaked = files_containing(password, log, data, Path(prefect_server["PREFECT_HOME"]))
    assert leaked == [], f"the chat password was written to {leaked}"


def test_prefect_server_listens_on_loopback_only(prefect_server):
    port = int(prefect_server["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0])
    assert listening_addresses(port) == {"127.0.0.1"}


@pytest.mark.slow
def test_the_local_stack_listens_on_loopback_only(tmp_path):
    """deployments/stack.sh started for real: its Prefect and MLflow servers listen on 127.0.0.1 only."""
    prefect_port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "FTLLM_DATA_DIR": str(tmp_path / "stack-data"),
        "FTLLM_PREFECT_PORT": str(prefect_port),
        "FTLLM_MLFLOW_PORT": str(mlflow_port),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        started = subprocess.run(
            ["bash", "deployments/stack.sh", "start"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        assert listening_addresses(prefect_port) == {"127.0.0.1"}
        assert listening_addresses(mlflow_port) == {"127.0.0.1"}
    finally:
        subprocess.run(["bash", "deployments/stack.sh", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=120)


# --- no remote code, no pickles ---------------------------------------------------------------


class _Tripwire:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "unpickled"))


def test_trust_remote_code_is_off_by_default():
    from tasks.core.config import load_config
    from tasks.training.config import DpoFinetuneConfig, LoraFinetuneConfig, ModelOptions

    assert ModelOptions().trust_remote_code is False
    for cls, path in ((LoraFinetuneConfig, "configs/lora_demo.yaml"), (DpoFinetuneConfig, "configs/dpo_demo.yaml")):
        assert load_config(cls, path).model.trust_remote_code is False


def test_a_base_model_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    from tasks.core.models import load_base_model, resolve_placement

    folder = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    tripwire = tmp_path / "tripwire.txt"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(tripwire)))
    with pytest.raises(OSError, match="model.safetensors"):
        load_base_model(str(folder), resolve_placement("cpu", "fp32"))
    assert not tripwire.exists()


def test_a_fetched_adapter_with_only_pickled_weights_is_refused(tmp_path):
    from tasks.publishing import PublishError, fetch_adapter

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    tripwire = tmp_path / "tripwire.txt"
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Tripwire(tripwire)))
    with pytest.raises(
        PublishError,
        match=r"no adapter_model.safetensors in the fetched adapter "
        r"\(found adapter_model.bin: pickled weights are never loaded\)",
    ):
        fetch_adapter(folder.as_uri())
    assert not tripwire.exists()


def test_the_chat_app_refuses_a_pickled_adapter(tiny_model_dir, tmp_path):
    from tasks.chat.loading import ModelLoadError, load_chat_model

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "base_model_name_or_path": str(tiny_model_dir)})
    )
    (folder / "ftllm.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    tripwire = tmp_path / "tripwire.txt"
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Tripwire(tripwire)))
    with pytest.raises(ModelLoadError):
        load_chat_model(folder.as_uri())
    assert not tripwire.exists()


def test_fetching_refuses_other_schemes_before_any_request():
    from tasks.publishing import PublishError, fetch_adapter

    for uri in ("http://127.0.0.1:9/adapter", "s3://bucket/adapter", "ftp://example.org/x"):
        with pytest.raises(PublishError, match="unknown scheme"):
            fetch_adapter(uri)
