"""`mlflow://NAME`: the MLflow Model Registry. The folder is logged as artifacts of the run
(`adapter/`) and registered as a new version, pinned as `mlflow://NAME/<version>`; fetched by
version, by alias (`mlflow://NAME@champion`) or, unpinned, the `@champion` (the newest version while
no champion is set). An alias that points at a version the registry no longer has is an error naming
it, never followed.

MLflow authenticates with its own settings (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN), never
with the Hub token.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tasks.core import tracking
from tasks.publishing.errors import InvalidUri, PublishError
from tasks.publishing.target import Address, Published, PublishRequest, Target, UriForms

log = logging.getLogger(__name__)

SCHEME = "mlflow"
FORMS = UriForms(publish=f"{SCHEME}://NAME (the MLflow Model Registry)", fetch=f"{SCHEME}://NAME[/VERSION | @ALIAS]")
ARTIFACT_PATH = "adapter"  # where in the run the adapter folder is logged
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
CHAMPION = "champion"  # the alias of the version to serve (see champion.py)
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


def parse(rest: str, for_fetch: bool) -> Address:
    name, at, alias = rest.partition("@")
    name, slash, version = name.partition("/")
    if not _NAME.match(name):
        raise InvalidUri(f"{name!r} is not a registered model name (letters, digits, '.', '_', '-')")
    if (slash or at) and not for_fetch:
        raise InvalidUri("a version or alias can only be fetched; publishing always registers a new version")
    if slash and at:
        raise InvalidUri("give a version or an alias, not both")
    if slash and not (version.isdigit() and int(version) > 0):
        raise InvalidUri(f"version {version!r} is not a positive integer")
    if at and not _ALIAS.match(alias):
        raise InvalidUri(f"alias {alias!r} is not a valid registry alias")
    return Address(name, version or None, alias or None)


def uri_of(address: Address) -> str:
    return (
        f"{SCHEME}://{address.name}"
        + (f"/{address.version}" if address.version else "")
        + (f"@{address.alias}" if address.alias else "")
    )


def publish(folder: Path, address: Address, request: PublishRequest) -> Published:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = address.name
    tracking.configure()
    active = mlflow.active_run()
    run_id = request.mlflow_run_id or (active.info.run_id if active else None)
    if run_id is None:
        raise PublishError(
            f"publish URI {uri_of(address)}: there is no MLflow run to log the adapter to "
            "(pass mlflow_run_id or publish inside tasks.core.tracking.start_run)"
        )
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        client.log_artifacts(run_id, str(folder), ARTIFACT_PATH)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="LoRA adapters trained by finetuning-llm")
        version = client.create_model_version(
            name=name, source=f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}", run_id=run_id
        )
    except MlflowException as error:
        raise PublishError(f"publish URI {uri_of(address)}: the MLflow registry refused it: {error.message}") from None
    log.info("registered %s version %s (run %s)", name, version.version, run_id)
    return Published(
        uri=uri_of(Address(name, version.version)),
        location=f"MLflow Model Registry: {name} version {version.version} (run {run_id})",
    )


def fetch(address: Address, token: str | None, scratch: Path | None) -> Path:
    """`token` is the Hub's and unused here."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking.configure()
    client = MlflowClient()
    try:
        if address.alias:
            version = version_by_alias(address.name, address.alias)
            if version is None:
                raise PublishError(f"{uri_of(address)}: {address.name} has no alias {address.alias!r}")
        elif address.version:
            version = client.get_model_version(address.name, address.version)
        else:
            version = version_by_alias(address.name, CHAMPION) or _newest_version(client, address)
        folder = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(scratch))
    except MlflowException as error:
        raise PublishError(f"{uri_of(address)}: {error.message}") from None
    return Path(folder)


def version_by_alias(name: str, alias: str):
    """The ModelVersion `NAME@alias` points at; None when the model or the alias does not exist.

    Raises PublishError when the alias points at a version the registry no longer has (deleted, or
    never finished registering): following it would serve nothing, or something else.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking.configure()
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise PublishError(f"{SCHEME}://{name}@{alias}: {error.message}") from None
    pointed = registered.aliases.get(alias)
    if pointed is None:
        return None
    where = f"{SCHEME}://{name}@{alias}"
    try:
        version = client.get_model_version(name, str(pointed))
    except MlflowException:
        raise PublishError(
            f"{where} points at version {pointed}, which the registry no longer has; not followed "
            f"(set the alias again, or fetch a version: {SCHEME}://{name}/VERSION)"
        ) from None
    if version.status != "READY":
        raise PublishError(f"{where} points at version {pointed}, whose registration is {version.status}; not followed")
    return version


def _newest_version(client, address: Address):
    versions = client.search_model_versions(f"name = '{address.name}'")
    if not versions:
        raise PublishError(f"{uri_of(address)}: the registry has no versions of {address.name}")
    newest = max(versions, key=lambda v: int(v.version))
    log.info("%s has no %s alias: fetching its newest version, %s", address.name, CHAMPION, newest.version)
    return newest


def registered_adapter_uris(versions_per_model: int) -> list[str]:
    """Per registered model: `NAME@champion` when set, then the pinned URIs of its newest `versions_per_model` versions."""
    import mlflow

    tracking.configure()
    client = mlflow.MlflowClient()
    uris = []
    for registered in client.search_registered_models():
        if CHAMPION in registered.aliases:
            uris.append(uri_of(Address(registered.name, alias=CHAMPION)))
        found = client.search_model_versions(f"name = '{registered.name}'")
        newest = sorted(found, key=lambda v: int(v.version), reverse=True)[:versions_per_model]
        uris.extend(uri_of(Address(registered.name, v.version)) for v in newest)
    return uris


MLFLOW_REGISTRY = Target(SCHEME, FORMS, parse, uri_of, publish, fetch, logs_adapter_to_run=True, has_aliases=True)
