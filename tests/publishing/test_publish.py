"""Publishing adapters to hf:// (a local Hub server), mlflow:// (the embedded registry) and file://,
fetching fresh copies back and verifying them against the model still in memory.

The tiny model gets one optimizer step so that every LoRA tensor is non-trivial (lora_B starts at 0).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import publishing
from tasks.core import secrets, tracking
from tasks.core.config import PROJECT_ROOT
from tasks.publishing import PublishError
from tests.doubles.hub_server import HubServer

pytestmark = pytest.mark.timeout(180)

BASE_HUB_ID = "test-org/tiny-base"  # what the card declares as the base's Hub id
PROBES = ["What is your favorite book?", "Do you like music?"]
SHA = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """(LoRA model after one step, tokenizer, base path, saved adapter folder)."""
    import torch

    from tasks.core.models import load_base_model, resolve_placement
    from tasks.training import freeze_and_apply_lora

    torch.manual_seed(0)
    model, tokenizer, base_path = load_base_model(str(tiny_model_dir), resolve_placement("cpu", "fp32"))
    model = freeze_and_apply_lora(model, r=4, alpha=8, dropout=0.1, target_modules=["all-linear"])
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    adapter_dir = tmp_path_factory.mktemp("adapter") / "tiny-lora"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    # What the flows record beside the adapter: the base as it was named on this machine.
    (adapter_dir / "ftllm.json").write_text(json.dumps({"base_model": base_path, "flow": "lora-finetune"}))
    return model, tokenizer, base_path, adapter_dir


@pytest.fixture(scope="module")
def hub():
    with HubServer(orgs=("test-org",)) as server:
        yield server


@pytest.fixture
def card(tiny_model_dir, tmp_path) -> str:
    config = {
        "model": {"name": str(tiny_model_dir), "hub_id": BASE_HUB_ID},
        "data": {"train": str(tmp_path / "train.jsonl")},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 1, "output_dir": str(tmp_path / "ckpt")},
    }
    return publishing.model_card(
        BASE_HUB_ID, str(tmp_path / "train.jsonl"), config, {"eval_loss": 1.2345}, "0123456789abcdef", "lora-finetune"
    )


def _assert_verified(trained, fetched: Path) -> publishing.Verification:
    model, tokenizer, base_path, _ = trained
    was_training = model.training
    result = publishing.verify_adapter(model, tokenizer, base_path, fetched, PROBES, tolerance=1e-4)
    assert result.passed, result.reason
    assert result.tensors_identical and result.reason == ""
    assert result.n_tensors == len([n for n, p in model.named_parameters() if p.requires_grad])
    assert result.max_abs_logit_diff <= 1e-4
    assert model.training == was_training  # left as it was
    return result


def _no_local_paths(folder: Path, *paths: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".md", ".jinja", ".txt"):
            text = file.read_text(encoding="utf-8")
            for path in paths:
                assert str(path) not in text, f"{file.name} holds the local path {path}"


# --- hf:// -------------------------------------------------------------------------------------

_CHILD = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.DEBUG)  # whatever the libraries log, at every level
from tasks import publishing
from tasks.core import secrets
adapter_dir, uri, card_file = sys.argv[1:4]
try:
    published = publishing.publish_adapter(Path(adapter_dir), uri, Path(card_file).read_text(),
                                        private=True, token=secrets.hf_token())
except publishing.PublishError as error:
    print("PUBLISH_ERROR " + str(error))
    sys.exit(3)
print("PUBLISHED " + json.dumps({"uri": published.uri, "location": published.location}))
"""


def _publish_to_hub(
    hub: HubServer, adapter_dir: Path, uri: str, card: str, tmp_path: Path, token: str | None, xet: bool = False
) -> tuple[publishing.Published | str, str]:
    """Run publish_adapter as a user's run does: a process whose environment points at the Hub.

    (Published or the PublishError message, everything the process printed.) huggingface_hub reads
    HF_ENDPOINT and HF_HUB_DISABLE_XET once, when it is first imported; with hf_xet installed the
    client would otherwise upload through Xet, which the test Hub does not speak (see hub_server).
    """
    card_file = tmp_path / "card.md"
    card_file.write_text(card, encoding="utf-8")
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "0" if xet else "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(adapter_dir), uri, str(card_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    output = done.stdout + done.stderr
    if done.returncode == 3:
        return done.stdout.split("PUBLISH_ERROR ", 1)[1].strip(), output
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("PUBLISHED "))
    return publishing.Published(**json.loads(line.removeprefix("PUBLISHED "))), output


def test_hub_publish_fetch_verify(trained, hub, card, tmp_path, tiny_model_dir, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    adapter_dir = trained[3]
    published, child_output = _publish_to_hub(
        hub, adapter_dir, "hf://test-org/tiny-lora", card, tmp_path, hub.write_token
    )

    repo, _, sha = published.uri.removeprefix("hf://").partition("@")
    assert repo == "test-org/tiny-lora" and SHA.match(sha) and sha == hub.head(repo)
    assert published.location == f"{hub.url}/test-org/tiny-lora/commit/{sha}"
    assert "adapter_model.safetensors" in hub.lfs_paths(repo)  # went through LFS, not inline
    log = hub.requests()
    assert any(r.method == "PUT" and r.path.startswith("/lfs-upload/") for r in log)  # basic transfer
    assert not any("xet" in r.path for r in log)
    # Signed upload and CDN URLs get no token, as on the real Hub.
    assert not any(r.authorized for r in log if r.path.startswith(("/lfs-upload/", "/lfs-cdn/")))
    assert hub.files(repo)["README.md"].decode() == card

    fetched = publishing.fetch_adapter(published.uri, token=hub.read_token)
    config = json.loads((fetched / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_HUB_ID  # never the local path
    assert json.loads((fetched / "ftllm.json").read_text()) == {"base_model": None, "flow": "lora-finetune"}
    assert (fetched / "tokenizer.json").read_bytes() == (adapter_dir / "tokenizer.json").read_bytes()
    _no_local_paths(fetched, tiny_model_dir, adapter_dir, tmp_path)
    assert any(r.path.startswith("/lfs-cdn/") and r.host.startswith("localhost") for r in hub.requests())
    _assert_verified(trained, fetched)

    # A second publish is a new commit; the first one stays fetchable by its sha.
    again, more_output = _publish_to_hub(
        hub, adapter_dir, "hf://test-org/tiny-lora", card + "\nv2\n", tmp_path, hub.write_token
    )
    assert again.uri != published.uri and again.uri.endswith(hub.head(repo))
    assert (publishing.fetch_adapter(published.uri, token=hub.read_token) / "README.md").read_text() == card

    captured = capfd.readouterr()
    for text in (child_output, more_output, caplog.text, captured.out, captured.err):
        assert hub.write_token not in text and hub.read_token not in text


def test_hub_read_only_and_anonymous_tokens_are_refused(trained, hub, card, tmp_path):
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=hub.write_token).create_repo("test-org/existing", private=True, exist_ok=True)
    head_before = hub.head("test-org/existing")
    for repo in ("test-org/existing", "test-org/never-created"):
        error, output = _publish_to_hub(hub, trained[3], f"hf://{repo}", card, tmp_path, hub.read_token)
        assert isinstance(error, str) and f"token has no write access to {repo}" in error and "HTTP 403" in error
        assert hub.read_token not in output
    error, _ = _publish_to_hub(hub, trained[3], "hf://test-org/anon", card, tmp_path, token=None)
    assert isinstance(error, str) and "HTTP 401" in error and "no write access to test-org/anon" in error
    assert "test-org/never-created" not in hub.state.repos and "test-org/anon" not in hub.state.repos
    assert hub.head("test-org/existing") == head_before  # nothing was committed


def test_hub_upload_through_xet_fails_with_a_hint(trained, hub, card, tmp_path):
    error, _ = _publish_to_hub(hub, trained[3], "hf://test-org/via-xet", card, tmp_path, hub.write_token, xet=True)
    assert isinstance(error, str) and "does not speak Xet" in error and "HF_HUB_DISABLE_XET=1" in error


def test_hub_fetch_errors_name_the_uri(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with pytest.raises(PublishError, match="hf://test-org/missing: repo not found"):
        publishing.fetch_adapter("hf://test-org/missing", token=hub.read_token)


# --- mlflow:// ---------------------------------------------------------------------------------


def test_mlflow_publish_versions_fetch_verify(trained, card, isolated_data_dir, monkeypatch, caplog, capfd):
    from mlflow import MlflowClient

    caplog.set_level(logging.DEBUG)
    marker = "hf_MARKERtoken0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", marker)
    adapter_dir = trained[3]
    with tracking.start_run("publish-tests") as run:
        first = publishing.publish_adapter(adapter_dir, "mlflow://tiny-lora", card, token=marker)
    second = publishing.publish_adapter(
        adapter_dir, "mlflow://tiny-lora", card, token=marker, mlflow_run_id=run.info.run_id
    )
    assert (first.uri, second.uri) == ("mlflow://tiny-lora/1", "mlflow://tiny-lora/2")
    version = MlflowClient().get_model_version("tiny-lora", "2")
    assert version.run_id == run.info.run_id and version.source.endswith("/adapter")

    latest = publishing.fetch_adapter("mlflow://tiny-lora")
    assert (latest / "README.md").read_text() == card
    _assert_verified(trained, latest)
    kept = set((isolated_data_dir / "fetched").iterdir())  # the copy above is the caller's
    MlflowClient().set_registered_model_alias("tiny-lora", "champion", "1")
    pinned = publishing.fetch_adapter("mlflow://tiny-lora@champion", dest=isolated_data_dir / "champion")
    assert pinned == isolated_data_dir / "champion" and (pinned / "adapter_model.safetensors").is_file()
    with pytest.raises(PublishError, match="mlflow://tiny-lora/9"):
        publishing.fetch_adapter("mlflow://tiny-lora/9")
    with publishing.fetched_adapter("mlflow://tiny-lora/2") as temporary:
        _assert_verified(trained, temporary)
    assert not temporary.exists()
    # A copy into `dest`, a failed fetch and a temporary copy leave no downloads behind.
    assert set((isolated_data_dir / "fetched").iterdir()) == kept

    stored = [p for p in isolated_data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in stored)
    assert not [p for p in stored if marker.encode() in p.read_bytes()]
    captured = capfd.readouterr()
    assert marker not in caplog.text + captured.out + captured.err


def test_mlflow_publish_needs_a_run(trained, card):
    with pytest.raises(PublishError, match="no MLflow run"):
        publishing.publish_adapter(trained[3], "mlflow://orphan", card)


# --- file:// and verification failures ---------------------------------------------------------


def test_file_publish_overwrites_atomically_and_tampering_fails(trained, card, tmp_path):
    from safetensors.torch import load_file, save_file

    target = tmp_path / "published" / "tiny-lora"
    published = publishing.publish_adapter(trained[3], target.as_uri(), card)
    assert published == publishing.Published(uri=target.as_uri(), location=str(target))
    again = publishing.publish_adapter(trained[3], target.as_uri(), card + "\nv2\n")
    assert again.uri == published.uri and (target / "README.md").read_text().endswith("v2\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny-lora"]  # no half-swapped leftovers

    fetched = publishing.fetch_adapter(published.uri, dest=tmp_path / "copy")
    _assert_verified(trained, fetched)

    tensors = load_file(str(fetched / "adapter_model.safetensors"))
    name = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[name] = tensors[name] + 1e-2
    save_file(tensors, str(fetched / "adapter_model.safetensors"), metadata={"format": "pt"})
    model, tokenizer, base_path, _ = trained
    failed = publishing.verify_adapter(model, tokenizer, base_path, fetched, PROBES)
    assert not failed.passed and not failed.tensors_identical
    assert name in failed.reason and "differ" in failed.reason
    assert failed.max_abs_logit_diff > 1e-4 and "exceeds the tolerance" in failed.reason

    (fetched / "adapter_model.safetensors").unlink()
    missing = publishing.verify_adapter(model, tokenizer, base_path, fetched, PROBES)
    assert not missing.passed and "adapter_model.safetensors is missing" in missing.reason


def test_verify_a_bf16_adapter_trained_under_autocast(tiny_model_dir, tmp_path):
    """Half-precision training upcasts the norms to fp32: the model only runs under autocast."""
    import torch

    from tasks.core.models import load_base_model, resolve_placement
    from tasks.training import freeze_and_apply_lora

    model, tokenizer, base_path = load_base_model(str(tiny_model_dir), resolve_placement("cpu", "bf16"))
    model = freeze_and_apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = tokenizer("Computers run programs written by people.", return_tensors="pt").input_ids
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    model.save_pretrained(tmp_path / "bf16-adapter")
    result = publishing.verify_adapter(model, tokenizer, base_path, tmp_path / "bf16-adapter", PROBES[:1])
    assert result.passed, result.reason
    assert model.training  # get_peft_model leaves it in train mode; verification restored that


@pytest.mark.parametrize(
    "uri",
    [
        "hf://just-a-name",
        "hf://org/name@main",
        "hf://org/na me",
        "hf://org/-bad",
        "s3://bucket/adapter",
        "mlflow://",
        "mlflow://name/1",
        "mlflow://name@champion",
        "file://relative/path",
        "file:///",
        "huggingface.co/org/name",
        "",
    ],
)
def test_malformed_or_unknown_uris_are_rejected(trained, card, uri):
    with pytest.raises(PublishError, match="accepted forms: hf://ORG/NAME") as rejected:
        publishing.publish_adapter(trained[3], uri, card)
    assert repr(uri) in str(rejected.value)


@pytest.mark.parametrize(
    "uri", ["mlflow://name/latest", "mlflow://name/0", "mlflow://name/1@alias", "hf://org/name@", "ftp://x/y"]
)
def test_fetch_rejects_malformed_uris(uri):
    with pytest.raises(PublishError, match=re.escape(repr(uri))):
        publishing.fetch_adapter(uri)


def test_publish_names_a_folder_that_is_not_an_adapter(tmp_path, card):
    with pytest.raises(PublishError, match="has no adapter_model.safetensors"):
        publishing.publish_adapter(tmp_path, (tmp_path / "out").as_uri(), card)


# --- the card ----------------------------------------------------------------------------------


def test_card_has_front_matter_config_and_no_local_paths(tiny_model_dir, tmp_path):
    import yaml

    config = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"train": str(tmp_path / "rows.jsonl")},
        "train": {"output_dir": "~/ckpt", "learning_rate": 2e-4},
        "lora": {"target_modules": ["all-linear"]},
    }
    card = publishing.model_card(
        BASE_HUB_ID, str(tmp_path / "rows.jsonl"), config, {"eval_loss": 1.5, "steps": 3}, "run-42", "dpo-finetune"
    )
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == BASE_HUB_ID and front["library_name"] == "peft"
    assert "dpo-finetune" in front["tags"] and "dpo" in front["tags"]
    assert "| train.learning_rate | 0.0002 |" in card and "| eval_loss | 1.5 |" in card
    assert "run-42" in card and "rows.jsonl" in card
    assert str(tmp_path) not in card and str(tiny_model_dir) not in card and "~/ckpt" not in card

    # A local folder passed as the "Hub id" is not a Hub id: no base_model at all.
    local = publishing.model_card(str(tiny_model_dir), "pypi:chatterbot-corpus/english", {}, {}, None, "lora-finetune")
    assert "base_model" not in local and str(tiny_model_dir) not in local
    assert "MLflow run id: none" in local


# --- secrets -----------------------------------------------------------------------------------


def test_hf_token_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "  hf_from_env_123  ")
    assert secrets.hf_token("ignored-block") == "hf_from_env_123"
    monkeypatch.delenv("HF_TOKEN")
    assert secrets.hf_token(None) is None


def test_redaction_covers_every_logger_and_handler(caplog, capfd):
    marker = "hf_REDACTme_9876543210"
    secrets.install_redaction(marker)
    secrets.install_redaction(marker)  # idempotent
    root = logging.getLogger()
    assert root.filters.count(secrets._filter) == 1
    handler = logging.StreamHandler(sys.stderr)  # added after install: still covered
    root.addHandler(handler)
    try:
        caplog.set_level(logging.INFO)
        logging.getLogger("prefect.flow_runs").warning("token is %s", marker)
        logging.getLogger("huggingface_hub.some.child").warning(f"inline {marker} in the message")
        try:
            raise RuntimeError(f"failed with {marker}")
        except RuntimeError:
            logging.getLogger("tasks.publishing.publish").exception("upload failed")
    finally:
        root.removeHandler(handler)
    err = capfd.readouterr().err
    assert marker not in caplog.text and marker not in err
    assert caplog.text.count("***") >= 3 and "token is ***" in err


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # 30 s by default: too short on a loaded machine
        yield


@pytest.mark.slow  # starts a temporary Prefect server (~10-30 s here)
def test_hf_token_from_a_prefect_secret_block(prefect_api, monkeypatch):
    from prefect.blocks.system import Secret

    monkeypatch.delenv("HF_TOKEN", raising=False)
    Secret(value="hf_from_block_456").save("hub-token-test", overwrite=True)
    assert secrets.hf_token("hub-token-test") == "hf_from_block_456"
    with pytest.raises(secrets.SecretError, match="no Prefect Secret block named 'no-such-block'"):
        secrets.hf_token("no-such-block")
