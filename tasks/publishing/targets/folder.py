"""`file:///ABS/PATH`: a folder on this machine, replaced atomically on each publish and read in place."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from tasks.publishing.errors import InvalidUri, PublishError
from tasks.publishing.target import Address, Published, PublishRequest, Target, UriForms

log = logging.getLogger(__name__)

SCHEME = "file"
FORMS = UriForms(publish=f"{SCHEME}:///ABSOLUTE/PATH (a folder)", fetch=f"{SCHEME}:///ABSOLUTE/PATH")


def parse(rest: str, for_fetch: bool) -> Address:
    parsed = urlparse(f"{SCHEME}://{rest}")
    if parsed.netloc not in ("", "localhost"):
        raise InvalidUri(f"file URIs need an absolute path (file:///abs/path), got host {parsed.netloc!r}")
    path = unquote(parsed.path)
    if not path.startswith("/") or path.rstrip("/") == "":
        raise InvalidUri("file URIs need an absolute folder path other than /")
    return Address(str(Path(path).resolve()))


def uri_of(address: Address) -> str:
    return Path(address.name).as_uri()


def publish(folder: Path, address: Address, request: PublishRequest) -> Published:
    """Copy next to the destination, then swap it in with renames: readers never see half a folder."""
    destination = Path(address.name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = uuid.uuid4().hex[:8]
    incoming = destination.with_name(f".{destination.name}.incoming-{suffix}")
    outgoing = destination.with_name(f".{destination.name}.outgoing-{suffix}")
    shutil.copytree(folder, incoming)
    if destination.exists():
        if not destination.is_dir():
            shutil.rmtree(incoming, ignore_errors=True)
            raise PublishError(f"publish URI {uri_of(address)}: {destination} exists and is not a folder")
        os.rename(destination, outgoing)
    os.rename(incoming, destination)
    shutil.rmtree(outgoing, ignore_errors=True)
    log.info("published to %s", destination)
    return Published(uri=uri_of(address), location=str(destination))


def fetch(address: Address, token: str | None, scratch: Path | None) -> Path:
    """The published folder itself: reading it is the fetch."""
    return Path(address.name)


FOLDER = Target(SCHEME, FORMS, parse, uri_of, publish, fetch, reads_in_place=True)
