"""Fetch a published adapter: a fresh download (no cache shared with earlier runs), safetensors only."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.core.config import data_dir
from tasks.publishing.errors import PublishError
from tasks.publishing.target import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tasks.publishing.uris import parse_uri


def fetch_adapter(uri: str, token: str | None = None, dest: Path | None = None) -> Path:
    """Download a fresh copy of a published adapter (no cache shared with earlier runs).

    Into `dest` when given; otherwise into a new folder under `FTLLM_DATA_DIR/fetched` that the caller
    keeps (an adapter its target reads in place, such as a folder, without `dest`: that folder itself).
    Callers that only load the weights use `fetched_adapter`, which leaves nothing behind.
    """
    if dest is not None:
        with fetched_adapter(uri, token) as folder:
            return _place(folder, dest)
    folder, _ = _open(uri, token)
    return folder


@contextlib.contextmanager
def fetched_adapter(uri: str, token: str | None = None) -> Iterator[Path]:
    """A published adapter for the duration of the block: downloaded fresh into a scratch folder that
    is removed afterwards, or read in place where its target allows (a folder).

    Loading an adapter reads its weights into memory, so the files are not needed once loaded;
    without this every verification and chat session would leave a copy behind.
    """
    folder, scratch = _open(uri, token)
    try:
        yield folder
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _open(uri: str, token: str | None) -> tuple[Path, Path | None]:
    """(the adapter folder, the scratch folder it was downloaded into; None when read in place)."""
    target, address = parse_uri(uri, for_fetch=True)
    if target.reads_in_place:
        folder = target.fetch(address, token, None)
        if not (folder / ADAPTER_CONFIG).is_file():
            raise PublishError(f"{uri}: {folder} holds no {ADAPTER_CONFIG}; nothing was published there")
        return _safetensors_only(folder, uri), None
    scratch = _fresh_dir(f"{target.scheme}-{address.name}")
    try:
        return _safetensors_only(target.fetch(address, token, scratch), uri), scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _fresh_dir(label: str) -> Path:
    root = data_dir() / "fetched"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=re.sub(r"[^A-Za-z0-9._-]", "-", label) + "-", dir=root))


def _place(source: Path, dest: Path) -> Path:
    """A plain copy of `source` (symlinks resolved) in `dest`."""
    dest = Path(dest)
    shutil.copytree(source, dest, symlinks=False, dirs_exist_ok=True)
    return dest


def _safetensors_only(folder: Path, uri: str) -> Path:
    """A fetched adapter must carry safetensors weights: PEFT would unpickle an adapter_model.bin instead."""
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        found = f" (found {', '.join(pickles)}: pickled weights are never loaded)" if pickles else ""
        raise PublishError(f"{uri}: no {ADAPTER_WEIGHTS} in the fetched adapter{found}")
    return folder
