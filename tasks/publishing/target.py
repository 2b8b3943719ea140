"""What a publish target is: one URI scheme, and how to parse, publish to and fetch from it.

Each target is one module under `targets/` that builds a `Target`, listed once in
`targets/__init__.py`. Everything else (staging, the card, fetching into scratch folders,
verification) is the same for every target and knows none of them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# What every target publishes and fetches: a PEFT adapter folder holding at least these two files.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Address:
    """Where an adapter is within a target: what the URI says after `scheme://`, parsed."""

    name: str  # Hub repo id, registered model name, or absolute folder path
    version: str | None = None  # a pinned revision or version (fetch only); None: the newest
    alias: str | None = None  # a registry alias (fetch only)


@dataclass(frozen=True)
class Published:
    uri: str  # pins exactly what was published: a commit, a registry version, a folder
    location: str  # human-readable: Hub commit URL, registry name + version, folder


@dataclass(frozen=True)
class PublishRequest:
    """What a publish is told besides the folder and the address; each target reads what it needs."""

    private: bool  # create a new Hub repo private
    token: str | None  # the Hub token; never logged
    mlflow_run_id: str | None  # the run the adapter belongs to; None: the active run


@dataclass(frozen=True)
class UriForms:
    """How help and error texts show a target's URIs."""

    publish: str  # the form it publishes to, with a note saying what that is
    fetch: str  # the forms it fetches from, pinned ones ([@REVISION], [/VERSION]) included


@dataclass(frozen=True)
class Target:
    """One publish target, declared in its own module as `Target(SCHEME, FORMS, parse, uri_of, publish, fetch, ...)`."""

    scheme: str  # the URI scheme, before "://"
    forms: UriForms
    # (the URI after "scheme://", for_fetch) -> Address; raises InvalidUri. Pinned forms (a
    # revision, version or alias) are accepted only for_fetch: a publish always makes a new one.
    parse: Callable[[str, bool], Address]
    uri_of: Callable[[Address], str]  # the inverse of parse: the URI naming an address
    # (the staged folder, where it goes, the request) -> the pinned URI of what was published.
    publish: Callable[[Path, Address, PublishRequest], Published]
    # (address, Hub token, an empty scratch folder to download into, or None when reads_in_place)
    # -> the adapter folder.
    fetch: Callable[[Address, str | None, Path | None], Path]
    needs_hub_token: bool = False  # publishing or fetching talks to the Hub
    logs_adapter_to_run: bool = False  # publishing logs the adapter folder into the MLflow run itself
    clears_local_paths: bool = False  # what it publishes leaves this machine: no local path may go with it
    reads_in_place: bool = False  # fetch reads the published folder itself: nothing to download or remove
    has_aliases: bool = False  # a version can hold the @champion alias (see champion.py)
