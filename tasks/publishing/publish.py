"""Publish a trained adapter, fetch a fresh copy back, and verify it is the adapter we trained.

One URI says where an adapter goes; the same functions serve the LoRA SFT and DPO flows:

- `hf://ORG/NAME`      the Hugging Face Hub: a (private) model repo, one commit per publish,
                       pinned as `hf://ORG/NAME@<commit sha>`;
- `mlflow://NAME`      the MLflow Model Registry: the folder is logged as artifacts of the run
                       (`adapter/`) and registered as a new version, pinned as `mlflow://NAME/<version>`;
- `file:///ABS/PATH`   a folder, replaced atomically on each publish.

`fetch_adapter` takes a published (pinned) URI and downloads a fresh copy; `verify_adapter` reloads
it on the base model and compares it with the model still in memory: every adapter tensor bit for
bit, the logits on a few probe prompts, and one greedy sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from tasks.core.config import data_dir, flatten

log = logging.getLogger(__name__)

ACCEPTED_FORMS = (
    "hf://ORG/NAME (the Hugging Face Hub), mlflow://NAME (the MLflow Model Registry) "
    "or file:///ABSOLUTE/PATH (a folder)"
)
FETCH_FORMS = "hf://ORG/NAME[@REVISION], mlflow://NAME[/VERSION | @ALIAS] or file:///ABSOLUTE/PATH"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_VOCABULARIES = {"tokenizer.json", "vocab.json"}
MLFLOW_ARTIFACT_PATH = "adapter"

# The Hub's own rules for a repo id: ORG/NAME, letters, digits, '-', '_', '.', at most 96 each.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")
_HUB_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_MLFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_MLFLOW_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


class PublishError(ValueError):
    """A URI, credential or destination that cannot work; the message names it and never holds a token.

    A ValueError, so the flows' retry condition does not retry it: it would fail the same way.
    Transient failures (network, Hub 5xx) keep their own types (OSError subclasses) and are retried.
    """


class VerificationError(PublishError):
    """The published adapter, fetched back, is not the adapter that was trained."""


@dataclass(frozen=True)
class Published:
    uri: str  # pins exactly what was published: hf://org/name@<sha>, mlflow://name/<version>, file:///path
    location: str  # human-readable: Hub commit URL, registry name + version, folder


@dataclass
class Verification:
    passed: bool
    tensors_identical: bool
    max_abs_logit_diff: float
    n_tensors: int
    sample: str
    reason: str  # why it failed; empty when it passed


# --- URIs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    scheme: str  # "hf" | "mlflow" | "file"
    name: str  # Hub repo id, registered model name, or absolute folder path
    version: str | None = None  # Hub revision, registry version; None: latest / main
    alias: str | None = None  # registry alias (mlflow://name@alias)


def _reject(uri: str, why: str, forms: str = ACCEPTED_FORMS) -> PublishError:
    return PublishError(f"publish URI {uri!r}: {why}; accepted forms: {forms}")


def parse_uri(uri: str, for_fetch: bool = False) -> _Target:
    """Split and validate a publish URI; pinned forms (@revision, /version) only when fetching."""
    forms = FETCH_FORMS if for_fetch else ACCEPTED_FORMS
    if not isinstance(uri, str) or "://" not in uri:
        raise _reject(uri, "not a URI (no scheme://)", forms)
    scheme, _, rest = uri.partition("://")
    if scheme == "hf":
        repo_id, at, revision = rest.partition("@")
        if not HUB_ID.match(repo_id):
            raise _reject(uri, f"{repo_id!r} is not a Hub repo id (ORG/NAME)", forms)
        if at and not for_fetch:
            raise _reject(uri, "a revision (@...) can only be fetched; publishing always makes a new commit", forms)
        if at and not _HUB_REVISION.match(revision):
            raise _reject(uri, f"{revision!r} is not a Hub revision (branch, tag or commit sha)", forms)
        return _Target("hf", repo_id, revision or None)
    if scheme == "mlflow":
        name, at, alias = rest.partition("@")
        name, slash, version = name.partition("/")
        if not _MLFLOW_NAME.match(name):
            raise _reject(uri, f"{name!r} is not a registered model name (letters, digits, '.', '_', '-')", forms)
        if (slash or at) and not for_fetch:
            raise _reject(
                uri, "a version or alias can only be fetched; publishing always registers a new version", forms
            )
        if slash and at:
            raise _reject(uri, "give a version or an alias, not both", forms)
        if slash and not (version.isdigit() and int(version) > 0):
            raise _reject(uri, f"version {version!r} is not a positive integer", forms)
        if at and not _MLFLOW_ALIAS.match(alias):
            raise _reject(uri, f"alias {alias!r} is not a valid registry alias", forms)
        return _Target("mlflow", name, version or None, alias or None)
    if scheme == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise _reject(uri, f"file URIs need an absolute path (file:///abs/path), got host {parsed.netloc!r}", forms)
        path = unquote(parsed.path)
        if not path.startswith("/") or path.rstrip("/") == "":
            raise _reject(uri, "file URIs need an absolute folder path other than /", forms)
        return _Target("file", str(Path(path).resolve()))
    raise _reject(uri, f"unknown scheme {scheme!r}", forms)


def is_adapter_uri(value: str) -> bool:
    """Whether `value` names an adapter by a publish URI (whatever its form), rather than a model."""
    return isinstance(value, str) and value.partition("://")[0] in ("hf", "mlflow", "file") and "://" in value


def needs_hub_token(*uris: str | None) -> bool:
    """Whether publishing to, or fetching from, any of `uris` talks to the Hub (and so needs its token)."""
    return any(uri and uri.startswith("hf://") for uri in uris)


def registered_adapter_uris(versions_per_model: int) -> list[str]:
    """`mlflow://NAME/VERSION` for the newest versions of every registered model."""
    import mlflow

    from tasks.core import tracking

    tracking.configure()
    client = mlflow.MlflowClient()
    uris = []
    for registered in client.search_registered_models():
        found = client.search_model_versions(f"name = '{registered.name}'")
        newest = sorted(found, key=lambda v: int(v.version), reverse=True)[:versions_per_model]
        uris.extend(f"mlflow://{registered.name}/{v.version}" for v in newest)
    return uris


def _hub_endpoint() -> str | None:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, when it is first imported.
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def is_hub_id(name: str | None) -> bool:
    """ORG/NAME that is not also a folder on this machine."""
    return bool(name) and HUB_ID.match(name) is not None and not Path(name).expanduser().exists()


# --- the model card -----------------------------------------------------------------------------


def _is_local_path(value: Any) -> bool:
    """A path on some machine's disk (absolute, ~, ./, file:, or an existing relative path), as
    opposed to a Hub id (ORG/NAME), a URL or a plain word."""
    if not isinstance(value, str) or len(value) < 2 or "\n" in value:
        return False
    if value.startswith(("/", "~", "./", "../", "file:")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    return os.sep in value and Path(value).exists()


def _public(value: Any) -> Any:
    """A config value fit for a public card: a local path becomes its last component."""
    if _is_local_path(value):
        tail = Path(value.rstrip("/").removeprefix("file://")).name or "path"
        return f"<local>/{tail}"
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    return value


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return flatten(config)
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cell(value)


def save_adapter(
    model, tokenizer, folder: Path, base_model: str, base_model_hub_id: str | None, flow: str, run_id: str
) -> Path:
    """The folder that gets published: the trained adapter only (never a frozen reference copy), its
    tokenizer, and `ftllm.json` saying how to rebuild its base offline (`model.name` as configured)."""
    model.save_pretrained(folder, safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(folder)
    (folder / "ftllm.json").write_text(
        json.dumps(
            {"base_model": base_model, "base_model_hub_id": base_model_hub_id, "flow": flow, "mlflow_run_id": run_id},
            indent=2,
        )
    )
    return folder


def model_card(
    base_model_hub_id: str | None, dataset: str, config: dict, metrics: dict, mlflow_run_id: str | None, flow: str
) -> str:
    """README.md for an adapter: YAML front matter, what it was trained on, the config and metrics.

    Nothing in it is a local path: a card travels to the Hub, and paths only leak a user's disk.
    """
    base = base_model_hub_id if is_hub_id(base_model_hub_id) else None
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    front["library_name"] = "peft"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = ["peft", "lora", flow, "dpo" if "dpo" in flow else "sft", "finetuning-llm"]
    if base:
        front["tags"].insert(0, f"base_model:adapter:{base}")
    dataset_name = _public(dataset)
    if is_hub_id(dataset):
        front["datasets"] = [dataset]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    title = f"LoRA adapter for {base}" if base else "LoRA adapter"
    lines += [
        f"# {title}",
        "",
        f"Trained by the `{flow}` flow of finetuning-llm on `{dataset_name}`"
        + (f", on top of [{base}](https://huggingface.co/{base})." if base else "."),
        "",
    ]
    lines += [
        "## Use it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({base or '<base model>'!r})",
        'model = PeftModel.from_pretrained(base, "<this repo or folder>")',
        "```",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_format_metric(v)} |" for k, v in sorted(metrics.items())]
        lines.append("")
    lines += ["## Training config", "", "| key | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(_public(v))} |" for k, v in _flat(config).items()]
    lines.append("")
    lines += ["## Provenance", "", f"- flow: `{flow}`"]
    lines.append(f"- MLflow run id: `{mlflow_run_id}`" if mlflow_run_id else "- MLflow run id: none")
    lines.append("")
    return "\n".join(lines)


def _card_base_model(card: str) -> str | None:
    """The `base_model:` of a card's YAML front matter, if it has one."""
    if not card.startswith("---"):
        return None
    parts = card.split("---", 2)
    try:
        front = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except yaml.YAMLError:
        return None
    base = front.get("base_model") if isinstance(front, dict) else None
    return base if isinstance(base, str) and is_hub_id(base) else None


# --- staging: what exactly is published ---------------------------------------------------------


def _check_adapter_dir(adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise PublishError(f"adapter folder {adapter_dir} does not exist")
    missing = [n for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not (adapter_dir / n).is_file()]
    if missing:
        raise PublishError(
            f"adapter folder {adapter_dir} has no {', '.join(missing)} "
            "(save it with model.save_pretrained(folder) first)"
        )
    return adapter_dir


def _without_local_paths(value: Any, where: str, dropped: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without_local_paths(v, f"{where}.{k}", dropped) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(v, f"{where}[{i}]", dropped) for i, v in enumerate(value)]
    if _is_local_path(value):
        dropped.append(where)
        return None
    return value


def _stage(adapter_dir: Path, card: str, hub_base: str | None, for_hub: bool) -> Path:
    """A copy of the adapter folder with the card as README.md (PEFT writes its own, with local paths).

    For the Hub, `base_model_name_or_path` in adapter_config.json becomes the base's Hub id, and any
    other local path in the small JSON files (the flows' own records included) is cleared: a path
    on this machine is useless to anyone else and leaks a user's disk layout.
    """
    staging = Path(tempfile.mkdtemp(prefix="ftllm-publish-"))
    shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    (staging / "README.md").write_text(card, encoding="utf-8")
    if not for_hub:
        return staging
    config_path = staging / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    if hub_base:
        adapter_config["base_model_name_or_path"] = hub_base
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    dropped: list[str] = []
    for path in sorted(staging.glob("*.json")):
        if path.name in TOKENIZER_VOCABULARIES:  # token strings, not settings (a token may well be "/usr")
            continue
        original = json.loads(path.read_text(encoding="utf-8"))
        cleaned = _without_local_paths(original, path.name, dropped)
        if cleaned != original:
            path.write_text(json.dumps(cleaned, indent=2) + "\n", encoding="utf-8")
    if dropped:
        log.warning(
            "local paths cleared from what goes to the Hub: %s%s",
            ", ".join(dropped),
            "" if hub_base else " (set model.hub_id to record the base model's Hub id)",
        )
    return staging


# --- publish ------------------------------------------------------------------------------------


def publish_adapter(
    adapter_dir: Path,
    uri: str,
    card: str,
    private: bool = True,
    token: str | None = None,
    mlflow_run_id: str | None = None,
) -> Published:
    """Publish the adapter folder (plus `card` as README.md) to `uri`; returns the pinned URI."""
    target = parse_uri(uri)
    adapter_dir = _check_adapter_dir(adapter_dir)
    staging = _stage(adapter_dir, card, _card_base_model(card), for_hub=target.scheme == "hf")
    try:
        if target.scheme == "hf":
            return _publish_hub(staging, target.name, private, token)
        if target.scheme == "mlflow":
            return _publish_mlflow(staging, target.name, mlflow_run_id)
        return _publish_folder(staging, Path(target.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refused(error: Exception, repo_id: str, action: str, access: str = "write") -> PublishError | None:
    """A PublishError for an authorization failure (401/403); None for anything else (kept as it is)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status not in (401, 403):
        return None
    return PublishError(
        f"the Hub refused to {action} {repo_id} (HTTP {status}): the token has no {access} access to {repo_id} "
        f"(anonymous, read-only, or not a member of that namespace); use a token with {access} access "
        "(HF_TOKEN or the Prefect Secret block named in publish.token_secret)"
    )


def _publish_hub(folder: Path, repo_id: str, private: bool, token: str | None) -> Published:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=_hub_endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except HfHubHTTPError as error:
        raise (_refused(error, repo_id, "create") or error) from None
    try:
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message="Upload adapter (finetuning-llm)"
        )
    except HfHubHTTPError as error:
        raise (_refused(error, repo_id, "upload to") or error) from None
    except ConnectionError as error:  # hf_xet's failures: a ConnectionError naming the xet route
        if "xet" not in str(error).lower() or "501" not in str(error):
            raise
        raise PublishError(
            f"the upload to {repo_id} failed: this Hub endpoint does not speak Xet "
            f"({str(error).splitlines()[0]}); set HF_HUB_DISABLE_XET=1 to upload through LFS"
        ) from None
    sha = commit.oid
    log.info("published to the Hub: %s at commit %s", repo_id, sha)
    return Published(uri=f"hf://{repo_id}@{sha}", location=commit.commit_url)


def _publish_mlflow(folder: Path, name: str, run_id: str | None) -> Published:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.core import tracking

    tracking.configure()
    active = mlflow.active_run()
    run_id = run_id or (active.info.run_id if active else None)
    if run_id is None:
        raise PublishError(
            f"publish URI mlflow://{name}: there is no MLflow run to log the adapter to "
            "(pass mlflow_run_id or publish inside tasks.core.tracking.start_run)"
        )
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        client.log_artifacts(run_id, str(folder), MLFLOW_ARTIFACT_PATH)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="LoRA adapters trained by finetuning-llm")
        version = client.create_model_version(
            name=name, source=f"{run.info.artifact_uri.rstrip('/')}/{MLFLOW_ARTIFACT_PATH}", run_id=run_id
        )
    except MlflowException as error:
        raise PublishError(f"publish URI mlflow://{name}: the MLflow registry refused it: {error.message}") from None
    log.info("registered %s version %s (run %s)", name, version.version, run_id)
    return Published(
        uri=f"mlflow://{name}/{version.version}",
        location=f"MLflow Model Registry: {name} version {version.version} (run {run_id})",
    )


def _publish_folder(folder: Path, destination: Path) -> Published:
    """Copy next to the destination, then swap it in with renames: readers never see half a folder."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = uuid.uuid4().hex[:8]
    incoming = destination.with_name(f".{destination.name}.incoming-{suffix}")
    outgoing = destination.with_name(f".{destination.name}.outgoing-{suffix}")
    shutil.copytree(folder, incoming)
    if destination.exists():
        if not destination.is_dir():
            shutil.rmtree(incoming, ignore_errors=True)
            raise PublishError(f"publish URI {destination.as_uri()}: {destination} exists and is not a folder")
        os.rename(destination, outgoing)
    os.rename(incoming, destination)
    shutil.rmtree(outgoing, ignore_errors=True)
    log.info("published to %s", destination)
    return Published(uri=destination.as_uri(), location=str(destination))


# --- fetch --------------------------------------------------------------------------------------


def _fresh_dir(label: str) -> Path:
    root = data_dir() / "fetched"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=re.sub(r"[^A-Za-z0-9._-]", "-", label) + "-", dir=root))


def _place(source: Path, dest: Path | None) -> Path:
    """`source` itself, or a plain copy of it (symlinks resolved) in `dest`."""
    if dest is None:
        return source
    dest = Path(dest)
    shutil.copytree(source, dest, symlinks=False, dirs_exist_ok=True)
    return dest


def fetch_adapter(uri: str, token: str | None = None, dest: Path | None = None) -> Path:
    """Download a fresh copy of a published adapter (no cache shared with earlier runs).

    Into `dest` when given; otherwise into a new folder under `FTLLM_DATA_DIR/fetched` that the caller
    keeps (a `file://` adapter without `dest`: its folder itself). Callers that only load the weights
    use `fetched_adapter`, which leaves nothing behind.
    """
    if dest is not None:
        with fetched_adapter(uri, token) as folder:
            return _place(folder, dest)
    target = parse_uri(uri, for_fetch=True)
    if target.scheme == "file":
        return _local_adapter(target, uri)
    scratch = _fresh_dir(f"{target.scheme}-{target.name}")
    try:
        return _download(target, token, scratch, uri)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


@contextlib.contextmanager
def fetched_adapter(uri: str, token: str | None = None) -> Iterator[Path]:
    """A published adapter for the duration of the block: downloaded fresh into a scratch folder that
    is removed afterwards, or a `file://` adapter read in place.

    Loading an adapter reads its weights into memory, so the files are not needed once loaded;
    without this every verification and chat session would leave a copy behind.
    """
    target = parse_uri(uri, for_fetch=True)
    if target.scheme == "file":
        yield _local_adapter(target, uri)
        return
    scratch = _fresh_dir(f"{target.scheme}-{target.name}")
    try:
        yield _download(target, token, scratch, uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(target: _Target, token: str | None, scratch: Path, uri: str) -> Path:
    download = _fetch_hub if target.scheme == "hf" else _fetch_mlflow
    return _safetensors_only(download(target, token, scratch), uri)


def _local_adapter(target: _Target, uri: str) -> Path:
    folder = Path(target.name)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise PublishError(f"{uri}: {folder} holds no {ADAPTER_CONFIG}; nothing was published there")
    return _safetensors_only(folder, uri)


def _safetensors_only(folder: Path, uri: str) -> Path:
    """A fetched adapter must carry safetensors weights: PEFT would unpickle an adapter_model.bin instead."""
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        found = f" (found {', '.join(pickles)}: pickled weights are never loaded)" if pickles else ""
        raise PublishError(f"{uri}: no {ADAPTER_WEIGHTS} in the fetched adapter{found}")
    return folder


def _fetch_hub(target: _Target, token: str | None, scratch: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    revision = target.version or "main"
    try:
        folder = snapshot_download(
            target.name, revision=revision, repo_type="model", token=token, cache_dir=scratch, endpoint=_hub_endpoint()
        )
    except RevisionNotFoundError:
        raise PublishError(f"hf://{target.name}@{revision}: the Hub has no such revision") from None
    except RepositoryNotFoundError:
        raise PublishError(f"hf://{target.name}: repo not found, or the token cannot read it") from None
    except HfHubHTTPError as error:
        raise (_refused(error, target.name, "download", access="read") or error) from None
    return Path(folder)


def _fetch_mlflow(target: _Target, token: str | None, scratch: Path) -> Path:
    """`token` is the Hub's and unused here: MLflow authenticates with its own settings (MLFLOW_TRACKING_TOKEN)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.core import tracking

    tracking.configure()
    client = MlflowClient()
    label = (
        f"mlflow://{target.name}"
        + (f"/{target.version}" if target.version else "")
        + (f"@{target.alias}" if target.alias else "")
    )
    try:
        if target.alias:
            version = client.get_model_version_by_alias(target.name, target.alias)
        elif target.version:
            version = client.get_model_version(target.name, target.version)
        else:
            versions = client.search_model_versions(f"name = '{target.name}'")
            if not versions:
                raise PublishError(f"{label}: the registry has no versions of {target.name}")
            version = max(versions, key=lambda v: int(v.version))
        folder = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(scratch))
    except MlflowException as error:
        raise PublishError(f"{label}: {error.message}") from None
    return Path(folder)


# --- verify -------------------------------------------------------------------------------------


def _probe_ids(tokenizer, prompt: str, device):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        return_tensors="pt",
    )
    return ids.to(device)


def _compare_tensors(trained: dict, fetched: dict) -> tuple[bool, str]:
    import torch

    missing = sorted(set(trained) - set(fetched))
    extra = sorted(set(fetched) - set(trained))
    if missing or extra:
        return False, (
            f"adapter tensors differ in name: {len(missing)} missing from the published file "
            f"(e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})"
        )
    differing = [
        k
        for k in sorted(trained)
        if trained[k].dtype != fetched[k].dtype
        or trained[k].shape != fetched[k].shape
        or not torch.equal(trained[k].detach().cpu(), fetched[k].cpu())
    ]
    if differing:
        return False, f"{len(differing)} of {len(trained)} adapter tensors differ bit-wise (first: {differing[0]})"
    return True, ""


# publish.logits_tolerance by the trained model's precision, when not set. The reload runs the
# trained kernels, so rounding alone separates the two: in half precision one rounding step of a
# logit between 32 and 64 is 0.25 (bf16) or 0.03 (fp16).
LOGITS_TOLERANCE = {"fp32": 1e-4, "fp16": 0.0625, "bf16": 0.5}


def verify_adapter(
    trained_model,
    tokenizer,
    base_model_path: str,
    fetched_dir: Path,
    probe_prompts: list[str],
    tolerance: float | None = None,
) -> Verification:
    """Reload the fetched adapter on a fresh base model and compare it with the trained one.

    `tolerance`: the max |logit difference| accepted; None: LOGITS_TOLERANCE for the trained precision.
    """
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    from tasks.core.models import Placement, load_causal_lm, same_kernels

    fetched_dir = Path(fetched_dir)
    weights = fetched_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        return Verification(False, False, float("inf"), 0, "", f"{weights} is missing: nothing to verify")
    if not probe_prompts:
        raise ValueError("verify_adapter: probe_prompts must hold at least one prompt")

    trained_state = get_peft_model_state_dict(trained_model)
    tensors_identical, tensor_reason = _compare_tensors(trained_state, load_file(str(weights)))

    parameter = next(trained_model.get_base_model().parameters())
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[parameter.dtype]
    placement = Placement("cuda" if parameter.device.type == "cuda" else "cpu", precision)
    tolerance = LOGITS_TOLERANCE[precision] if tolerance is None else tolerance
    # With the trained kernels (attention implementation, Liger): in half precision two kernels of
    # the same math disagree by far more than one rounding step.
    base = load_causal_lm(base_model_path, placement, **same_kernels(trained_model))
    reloaded = PeftModel.from_pretrained(base, fetched_dir).eval()
    # Same precision, parameter by parameter: training may have upcast some (norms to fp32 under bf16).
    trained_dtypes = {name: p.dtype for name, p in trained_model.named_parameters()}
    for name, p in reloaded.named_parameters():
        if name in trained_dtypes and p.dtype != trained_dtypes[name]:
            p.data = p.data.to(trained_dtypes[name])

    modes = {module: module.training for module in trained_model.modules()}
    trained_model.eval()
    max_diff, sample = 0.0, ""
    # Half-precision training runs under autocast (norms upcast to fp32): so do both forward passes here.
    half = parameter.dtype in (torch.bfloat16, torch.float16)
    try:
        with torch.inference_mode(), torch.autocast(parameter.device.type, dtype=parameter.dtype, enabled=half):
            for prompt in probe_prompts:
                ids = _probe_ids(tokenizer, prompt, parameter.device)
                expected = trained_model(input_ids=ids).logits.float()
                actual = reloaded(input_ids=ids).logits.float()
                max_diff = max(max_diff, (expected - actual).abs().max().item())
            ids = _probe_ids(tokenizer, probe_prompts[0], parameter.device)
            out = reloaded.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            sample = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    finally:
        for module, training in modes.items():  # exactly as it was, module by module
            module.training = training
        del reloaded

    reasons = [tensor_reason] if not tensors_identical else []
    if not max_diff <= tolerance:  # also catches NaN
        reasons.append(f"max |logit difference| {max_diff:.3g} exceeds the tolerance {tolerance:g}")
    return Verification(
        passed=not reasons,
        tensors_identical=tensors_identical,
        max_abs_logit_diff=max_diff,
        n_tensors=len(trained_state),
        sample=sample,
        reason="; ".join(reasons),
    )
