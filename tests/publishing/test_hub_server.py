"""The local Hub answers huggingface_hub's own calls the way the Hub does (endpoint passed explicitly).

The LFS upload path (preupload -> batch -> PUT -> verify -> commit) runs in test_publish.py, in a
process started with HF_HUB_DISABLE_XET=1; here: regular commits, downloads, listings and errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.doubles.hub_server import HubServer


@pytest.fixture(scope="module")
def hub():
    with HubServer(orgs=("test-org",)) as server:
        yield server


@pytest.fixture(scope="module")
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=hub.write_token)


def test_commit_list_and_download(hub, api, tmp_path):
    from huggingface_hub import CommitOperationAdd, hf_hub_download

    url = api.create_repo("test-org/notes", private=False)
    assert url.repo_id == "test-org/notes" and url.endpoint == hub.url
    info = api.create_commit(
        "test-org/notes",
        [
            CommitOperationAdd("notes/a.txt", b"first file\n"),
            CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# Notes\n"),
        ],
        commit_message="add notes",
    )
    assert re.fullmatch(r"[0-9a-f]{40}", info.oid) and info.oid == hub.head("test-org/notes")
    assert info.commit_url == f"{hub.url}/test-org/notes/commit/{info.oid}"

    model = api.model_info("test-org/notes")
    assert model.sha == info.oid and model.private is False
    assert sorted(s.rfilename for s in model.siblings) == [".gitattributes", "README.md", "notes/a.txt"]
    tree = {f.path: f for f in api.list_repo_tree("test-org/notes", recursive=True)}
    assert tree["notes/a.txt"].size == len(b"first file\n") and tree["notes/a.txt"].lfs is None
    assert [c.title for c in api.list_repo_commits("test-org/notes")] == ["add notes", "initial commit"]
    assert api.list_repo_refs("test-org/notes").branches[0].target_commit == info.oid

    path = hf_hub_download(
        "test-org/notes", "notes/a.txt", revision=info.oid, cache_dir=tmp_path, endpoint=hub.url, token=hub.read_token
    )
    assert Path(path).read_bytes() == b"first file\n"

    # An unchanged file is skipped by the client (the server reported its oid); no empty commit.
    again = api.create_commit(
        "test-org/notes", [CommitOperationAdd("notes/a.txt", b"first file\n")], commit_message="nothing new"
    )
    assert again.oid == info.oid


def test_errors_are_the_hubs(hub, api):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api.create_repo("test-org/private", private=True)
    anonymous = HfApi(endpoint=hub.url, token=False)
    reader = HfApi(endpoint=hub.url, token=hub.read_token)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("test-org/private")  # 401: a private repo looks missing
    assert reader.model_info("test-org/private").private is True
    with pytest.raises(HfHubHTTPError) as refused:
        reader.create_repo("test-org/other")
    assert refused.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as anon:
        anonymous.create_repo("test-org/other")
    assert anon.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as invalid:
        HfApi(endpoint=hub.url, token="hf_not_a_real_token").whoami()
    assert invalid.value.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    with pytest.raises(RevisionNotFoundError):
        reader.model_info("test-org/private", revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        reader.hf_hub_download("test-org/private", "missing.bin")
    assert reader.whoami()["auth"]["accessToken"]["role"] == "read"
    assert "test-org/other" not in hub.state.repos


def test_xet_and_unknown_lfs_objects_are_refused_clearly(hub, api):
    import httpx2

    api.create_repo("test-org/lfs", exist_ok=True)
    headers = {"Authorization": f"Bearer {hub.write_token}"}
    xet = httpx2.get(f"{hub.url}/api/models/test-org/lfs/xet-write-token/main", headers=headers)
    assert xet.status_code == 501 and "HF_HUB_DISABLE_XET=1" in xet.json()["error"]

    lines = [
        {"key": "header", "value": {"summary": "pointer to nothing"}},
        {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]
    commit = httpx2.post(
        f"{hub.url}/api/models/test-org/lfs/commit/main",
        content="".join(json.dumps(line) + "\n" for line in lines),
        headers={**headers, "Content-Type": "application/x-ndjson"},
    )
    assert commit.status_code == 422 and "does not exist" in commit.json()["error"]

    batch = httpx2.post(
        f"{hub.url}/test-org/lfs.git/info/lfs/objects/batch",
        headers=headers,
        json={"operation": "upload", "transfers": ["xet"], "objects": []},
    )
    assert batch.status_code == 422  # only "basic" is offered
