"""Publish a saved adapter folder to the target its URI names; the result pins what was published."""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.publishing.card import card_base_model
from tasks.publishing.staging import check_adapter_dir, stage
from tasks.publishing.target import Published, PublishRequest
from tasks.publishing.uris import parse_uri


def publish_adapter(
    adapter_dir: Path,
    uri: str,
    card: str,
    private: bool = True,
    token: str | None = None,
    mlflow_run_id: str | None = None,
) -> Published:
    """Publish the adapter folder (plus `card` as README.md) to `uri`; returns the pinned URI."""
    target, address = parse_uri(uri)
    adapter_dir = check_adapter_dir(adapter_dir)
    staging = stage(adapter_dir, card, card_base_model(card), clear_local_paths=target.clears_local_paths)
    try:
        return target.publish(staging, address, PublishRequest(private, token, mlflow_run_id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
