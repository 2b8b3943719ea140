"""`hf://ORG/NAME`: the Hugging Face Hub, a (private) model repo; one commit per publish, pinned as
`hf://ORG/NAME@<commit sha>`."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tasks.core.models import HUB_ID
from tasks.publishing.errors import InvalidUri, PublishError
from tasks.publishing.target import Address, Published, PublishRequest, Target, UriForms

log = logging.getLogger(__name__)

SCHEME = "hf"
FORMS = UriForms(publish=f"{SCHEME}://ORG/NAME (the Hugging Face Hub)", fetch=f"{SCHEME}://ORG/NAME[@REVISION]")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


def parse(rest: str, for_fetch: bool) -> Address:
    repo_id, at, revision = rest.partition("@")
    if not HUB_ID.match(repo_id):
        raise InvalidUri(f"{repo_id!r} is not a Hub repo id (ORG/NAME)")
    if at and not for_fetch:
        raise InvalidUri("a revision (@...) can only be fetched; publishing always makes a new commit")
    if at and not _REVISION.match(revision):
        raise InvalidUri(f"{revision!r} is not a Hub revision (branch, tag or commit sha)")
    return Address(repo_id, revision or None)


def uri_of(address: Address) -> str:
    return f"{SCHEME}://{address.name}" + (f"@{address.version}" if address.version else "")


def _endpoint() -> str | None:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, when it is first imported.
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


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


def publish(folder: Path, address: Address, request: PublishRequest) -> Published:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = address.name
    api = HfApi(endpoint=_endpoint(), token=request.token)
    try:
        api.create_repo(repo_id, private=request.private, exist_ok=True, repo_type="model")
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
    return Published(uri=uri_of(Address(repo_id, sha)), location=commit.commit_url)


def fetch(address: Address, token: str | None, scratch: Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    revision = address.version or "main"
    try:
        folder = snapshot_download(
            address.name, revision=revision, repo_type="model", token=token, cache_dir=scratch, endpoint=_endpoint()
        )
    except RevisionNotFoundError:
        raise PublishError(f"{uri_of(Address(address.name, revision))}: the Hub has no such revision") from None
    except RepositoryNotFoundError:
        raise PublishError(f"{uri_of(Address(address.name))}: repo not found, or the token cannot read it") from None
    except HfHubHTTPError as error:
        raise (_refused(error, address.name, "download", access="read") or error) from None
    return Path(folder)


HUB = Target(SCHEME, FORMS, parse, uri_of, publish, fetch, needs_hub_token=True, clears_local_paths=True)
