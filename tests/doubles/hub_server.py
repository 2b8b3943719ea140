"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that huggingface_hub 2.4 uses.

The real Hub cannot be reached from here, so tests point the real client at this server with
`HF_ENDPOINT` (or `endpoint=`): the requests a user's run sends are the requests it receives.
Covered: `create_repo`, `upload_folder`/`create_commit` (validate-yaml, preupload, the LFS batch
API with the *basic* transfer, single-PUT upload + verify, the NDJSON commit), `repo_info`/
`model_info`, `list_repo_tree`, `list_repo_refs`, `list_repo_commits`, `whoami`,
`hf_hub_download` and `snapshot_download` (HEAD/GET `resolve` with X-Repo-Commit and ETag; LFS
files answer with a 302 to a signed "CDN" URL on another host name, `localhost`, carrying
X-Linked-Etag/X-Linked-Size, so the client drops its Authorization header as it does for the
real CDN).

Xet: huggingface_hub 2.4 picks the upload protocol on the client side. The server only says
which files are LFS (`preupload` -> `uploadMode`); with `hf_xet` installed (a hard dependency
on x86_64/arm64) the client then uploads those through Xet unless `HF_HUB_DISABLE_XET=1` was set
before `huggingface_hub` was imported. For downloads the server decides: no `X-Xet-Hash` header
and no `xetHash` in the tree means a plain HTTP download. This server speaks LFS basic only: its
xet token routes answer 501 with that explanation, so a misconfigured client fails loudly.

Tokens: one with write access, one read-only (403 on create/preupload/commit, as the Hub
answers), none (401 on writes and on private repos). Repos live in memory with git-style
content-addressed ids (blob sha1s, LFS sha256s, commit shas).

Run it by hand: `python -m tests.doubles.hub_server` prints the endpoint and both tokens.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# The Hub's default .gitattributes (shortened): what it stores through LFS.
LFS_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.onnx",
    "*.gguf",
    "*.msgpack",
    "*.model",
    "*.npy",
    "*.npz",
    "*.pkl",
    "*.tar",
    "*.tar.gz",
    "*.zip",
    "*.parquet",
    "*.arrow",
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores any file above 10 MB through LFS too
CDN_HOST = "localhost"  # a different origin than the endpoint's 127.0.0.1, as the real CDN is


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclasses.dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    blob_oid: str  # git blob sha1 of the content, or of the LFS pointer
    content: bytes | None = None  # regular files
    lfs_sha256: str | None = None  # LFS files: the content lives in the LFS store

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None


@dataclasses.dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, StoredFile]
    date: str


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for sha, c in self.commits.items() if sha.startswith(revision)]
            return matches[0] if len(matches) == 1 else None
        return None


@dataclasses.dataclass(frozen=True)
class Identity:
    user: str
    role: str  # "write" | "read"
    orgs: tuple[str, ...]

    def member_of(self, namespace: str) -> bool:
        return namespace == self.user or namespace in self.orgs


class HubError(Exception):
    """An error response, shaped like the Hub's (X-Error-Code / X-Error-Message + JSON body)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclasses.dataclass(frozen=True)
class LoggedRequest:
    method: str
    host: str
    path: str
    authorized: bool  # an Authorization header was sent (its value is never kept)
    status: int


class HubState:
    """Repos, the LFS object store and the tokens; every method runs under one lock."""

    def __init__(self, user: str, orgs: tuple[str, ...], write_token: str, read_token: str):
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.tokens = {write_token: Identity(user, "write", orgs), read_token: Identity(user, "read", orgs)}
        self.signing_key = secrets.token_bytes(16)
        self.requests: list[LoggedRequest] = []

    # -- auth ---------------------------------------------------------------------------------

    def identity(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        identity = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if identity is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return identity

    def sign(self, oid: str) -> str:
        return hmac.new(self.signing_key, oid.encode(), hashlib.sha256).hexdigest()[:32]

    def readable(self, repo_id: str, who: Identity | None) -> Repo:
        repo = self.repos.get(repo_id)
        hidden = repo is None or (repo.private and (who is None or not who.member_of(repo_id.split("/")[0])))
        if hidden:
            # The Hub does not tell a missing repo from one you may not see: 401 anonymous, 404 otherwise.
            raise HubError(401 if who is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def writable(self, repo_id: str, who: Identity | None) -> Repo:
        if who is None:
            raise HubError(401, "Invalid username or password.")
        repo = self.readable(repo_id, who)
        if who.role != "write" or not who.member_of(repo_id.split("/")[0]):
            raise HubError(
                403,
                f"You don't have the rights to write to {repo_id}: "
                "this token is read-only or not a member of its namespace",
            )
        return repo

    # -- repos and commits --------------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool, who: Identity | None) -> Repo:
        namespace = repo_id.split("/")[0]
        if who is None:
            raise HubError(401, "Invalid username or password.")
        if who.role != "write" or not who.member_of(namespace):
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo")
        repo = Repo(repo_id, private, _now())
        self.repos[repo_id] = repo
        content = GITATTRIBUTES.encode()
        self._commit(
            repo,
            "main",
            "initial commit",
            "",
            {".gitattributes": StoredFile(".gitattributes", len(content), git_blob_oid(content), content)},
        )
        return repo

    def _commit(self, repo: Repo, branch: str, title: str, message: str, files: dict[str, StoredFile]) -> Commit:
        parent = repo.branches.get(branch)
        tree = hashlib.sha1("".join(f"{p}\0{f.blob_oid}\n" for p, f in sorted(files.items())).encode()).hexdigest()
        body = (
            f"tree {tree}\n"
            + (f"parent {parent}\n" if parent else "")
            + f"author hub-server <hub@localhost> {time.time_ns()}\n\n{title}\n\n{message}\n"
        ).encode()
        sha = hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()
        commit = Commit(sha, parent, title, message, dict(files), _now())
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit

    def is_lfs_path(self, path: str, size: int, sample: bytes, gitattributes: bytes | None) -> bool:
        patterns = LFS_PATTERNS
        if gitattributes is not None:
            patterns = tuple(
                line.split()[0] for line in gitattributes.decode(errors="replace").splitlines() if "filter=lfs" in line
            )
        name = path.rsplit("/", 1)[-1]
        return (
            size >= LFS_SIZE_THRESHOLD
            or b"\0" in sample
            or any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)
        )

    def apply_commit(self, repo: Repo, revision: str, lines: list[dict[str, Any]]) -> Commit:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        head = repo.branches[revision]
        if parent and not head.startswith(parent):
            raise HubError(412, f"A commit has happened since the parent commit {parent}; head is {head}")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if key == "file":
                content = (
                    base64.b64decode(value["content"])
                    if value.get("encoding") == "base64"
                    else value["content"].encode()
                )
                files[path] = StoredFile(path, len(content), git_blob_oid(content), content)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in self.lfs_objects:
                    raise HubError(
                        422,
                        f"Your push was rejected because an LFS pointer pointed to a file that "
                        f"does not exist: {path} ({oid})",
                    )
                size = len(self.lfs_objects[oid])
                files[path] = StoredFile(path, size, git_blob_oid(lfs_pointer(oid, size)), lfs_sha256=oid)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for existing in [p for p in files if p.startswith(prefix)]:
                    del files[existing]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        return self._commit(repo, revision, header.get("summary") or "update", header.get("description", ""), files)


def _repo_tree(files: dict[str, StoredFile], base: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = base.strip("/") + "/" if base.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, stored in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(
                    folder,
                    {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0},
                )
        if recursive or len(parts) == 1:
            entry: dict[str, Any] = {"type": "file", "path": path, "oid": stored.blob_oid, "size": stored.size}
            if stored.is_lfs:
                entry["lfs"] = {
                    "oid": stored.lfs_sha256,
                    "size": stored.size,
                    "pointerSize": len(lfs_pointer(stored.lfs_sha256, stored.size)),
                }
            entries[path] = entry
    return list(entries.values())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _base_url(self) -> str:
        return self.server.base_url

    def _dispatch(self) -> None:
        self._status = 0
        # Read the whole body first, even for requests refused before looking at it: a body left
        # unread in a keep-alive connection would be parsed as the next request.
        self.body = self._read_body()
        state = self.server.state
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            with state.lock:
                who = state.identity(self.headers.get("Authorization"))
                for method, pattern, handler in _ROUTES:
                    match = pattern.fullmatch(url.path)
                    if match and self.command in method:
                        handler(
                            self, state, who, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        )
                        break
                else:
                    raise HubError(404, f"no route for {self.command} {url.path} on this test Hub")
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send_json({"error": error.message}, error.status, headers)
        except Exception as error:  # a bug in this server: answer 500 instead of dropping the connection
            self._send_json({"error": f"test Hub internal error: {type(error).__name__}: {error}"}, 500)
            raise
        finally:
            with state.lock:
                state.requests.append(
                    LoggedRequest(
                        self.command,
                        self.headers.get("Host", ""),
                        url.path,
                        bool(self.headers.get("Authorization")),
                        self._status,
                    )
                )

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # -- API routes ---------------------------------------------------------------------------

    def whoami(self, state: HubState, who: Identity | None) -> None:
        if who is None:
            raise HubError(401, "Invalid username or password.")
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(who.user.encode()).hexdigest()[:24],
                "name": who.user,
                "fullname": who.user,
                "orgs": [{"type": "org", "name": org} for org in who.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": f"{who.role} token", "role": who.role}},
            }
        )

    def validate_yaml(self, state: HubState, who: Identity | None) -> None:
        content = self._json_body().get("content", "")
        errors = []
        if content.startswith("---"):
            parts = content.split("---", 2)
            try:
                front = yaml.safe_load(parts[1]) if len(parts) == 3 else None
                if front is not None and not isinstance(front, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as error:
                errors.append({"message": f"invalid YAML: {error}"})
        if errors:
            self._send_json({"errors": errors, "warnings": []}, 400)
            return
        self._send_json({"errors": [], "warnings": []})

    def create_repo(self, state: HubState, who: Identity | None) -> None:
        payload = self._json_body()
        if payload.get("type", "model") != "model":
            raise HubError(400, "this test Hub only hosts model repos")
        name, organization = payload.get("name"), payload.get("organization")
        namespace = organization or (who.user if who else None)
        repo_id = f"{namespace}/{name}"
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise HubError(400, f"Invalid repo name {name!r}")
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        try:
            state.create_repo(repo_id, private, who)
        except HubError as error:
            if error.status == 409:
                self._send_json(
                    {"error": error.message, "url": f"{self._base_url()}/{repo_id}"},
                    409,
                    {"X-Error-Message": error.message},
                )
                return
            raise
        self._send_json({"url": f"{self._base_url()}/{repo_id}", "name": repo_id, "id": repo_id})

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def repo_info(self, state: HubState, who: Identity | None, repo_id: str, revision: str = "main") -> None:
        repo = state.readable(repo_id, who)
        commit = self._commit_of(repo, revision)
        blobs = self.query.get("blobs", "").lower() == "true"
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=stored.size, blobId=stored.blob_oid)
                if stored.is_lfs:
                    sibling["lfs"] = {
                        "sha256": stored.lfs_sha256,
                        "size": stored.size,
                        "pointerSize": len(lfs_pointer(stored.lfs_sha256, stored.size)),
                    }
            siblings.append(sibling)
        self._send_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(f.size for f in commit.files.values()),
            }
        )

    def tree(self, state: HubState, who: Identity | None, repo_id: str, revision: str, path: str = "") -> None:
        repo = state.readable(repo_id, who)
        commit = self._commit_of(repo, revision)
        recursive = self.query.get("recursive", "false").lower() == "true"
        if path and path not in commit.files and not any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
        self._send_json(_repo_tree(commit.files, path or "", recursive))

    def refs(self, state: HubState, who: Identity | None, repo_id: str) -> None:
        repo = state.readable(repo_id, who)
        self._send_json(
            {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in repo.branches.items()
                ],
                "converts": [],
                "tags": [],
            }
        )

    def commits(self, state: HubState, who: Identity | None, repo_id: str, revision: str) -> None:
        repo = state.readable(repo_id, who)
        commit: Commit | None = self._commit_of(repo, revision)
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": "hub-server"}],
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._send_json(history)

    def preupload(self, state: HubState, who: Identity | None, repo_id: str, revision: str) -> None:
        repo = state.writable(repo_id, who)
        commit = self._commit_of(repo, revision)
        payload = self._json_body()
        attributes = commit.files.get(".gitattributes")
        answers = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = state.is_lfs_path(path, size, sample, attributes.content if attributes else None)
            existing = commit.files.get(path)
            # What the client compares with its own oid to skip unchanged files: sha256 for LFS, blob sha1 else.
            oid = None if existing is None else (existing.lfs_sha256 if existing.is_lfs else existing.blob_oid)
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": answers, "commitOid": commit.sha})

    def commit(self, state: HubState, who: Identity | None, repo_id: str, revision: str) -> None:
        repo = state.writable(repo_id, who)
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            raise HubError(400, "a commit is sent as application/x-ndjson")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid NDJSON line: {error}") from None
        new = state.apply_commit(repo, revision, lines)
        self._send_json(
            {
                "success": True,
                "commitOid": new.sha,
                "hookOutput": "",
                "pullRequestUrl": None,
                "commitUrl": f"{self._base_url()}/{repo_id}/commit/{new.sha}",
            }
        )

    def xet_token(self, state: HubState, who: Identity | None, repo_id: str, kind: str, revision: str = "") -> None:
        raise HubError(
            501,
            "this test Hub implements the LFS basic transfer only, not Xet: set HF_HUB_DISABLE_XET=1 "
            "before huggingface_hub is imported",
        )

    # -- LFS ----------------------------------------------------------------------------------

    def lfs_batch(self, state: HubState, who: Identity | None, repo_id: str) -> None:
        payload = self._json_body()
        operation = payload.get("operation")
        repo = state.writable(repo_id, who) if operation == "upload" else state.readable(repo_id, who)
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(422, f"no supported transfer in {payload.get('transfers')}; this server offers: basic")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if operation == "upload" and oid not in state.lfs_objects:
                entry["actions"] = {
                    "upload": {
                        "href": f"{self._base_url()}/lfs-upload/{oid}?size={size}&sig={state.sign(oid)}",
                        "header": {},
                    },
                    "verify": {"href": f"{self._base_url()}/{repo.repo_id}.git/info/lfs/objects/verify", "header": {}},
                }
            elif operation == "download":
                if oid not in state.lfs_objects:
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    entry["actions"] = {"download": {"href": self._cdn_url(state, oid)}}
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def lfs_upload(self, state: HubState, who: Identity | None, oid: str) -> None:
        # A signed URL, like S3's: no Authorization header (the client sends none here).
        if not hmac.compare_digest(self.query.get("sig", ""), state.sign(oid)):
            raise HubError(403, "Request signature does not match")
        content = self.body
        if hashlib.sha256(content).hexdigest() != oid or len(content) != int(self.query.get("size", -1)):
            raise HubError(400, f"uploaded content does not match oid {oid} and its declared size")
        state.lfs_objects[oid] = content
        self._send(200, b"", {"ETag": f'"{hashlib.md5(content).hexdigest()}"'})

    def lfs_verify(self, state: HubState, who: Identity | None, repo_id: str) -> None:
        state.writable(repo_id, who)
        payload = self._json_body()
        stored = state.lfs_objects.get(payload.get("oid", ""))
        if stored is None or len(stored) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        self._send_json({"success": True})

    def _cdn_url(self, state: HubState, oid: str, filename: str = "") -> str:
        return f"http://{CDN_HOST}:{self.server.server_port}/lfs-cdn/{oid}?sig={state.sign(oid)}" + (
            f"&filename={quote(filename)}" if filename else ""
        )

    def lfs_cdn(self, state: HubState, who: Identity | None, oid: str) -> None:
        if not hmac.compare_digest(self.query.get("sig", ""), state.sign(oid)) or oid not in state.lfs_objects:
            raise HubError(403, "Request signature does not match")
        self._send_content(state.lfs_objects[oid], {"ETag": f'"{oid}"'})

    def _send_content(self, content: bytes, headers: dict[str, str]) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            part = content[start : end + 1]
            headers = {**headers, "Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(content)}"}
            self._send(206, part, headers, "application/octet-stream")
            return
        self._send(200, content, headers, "application/octet-stream")

    # -- downloads ----------------------------------------------------------------------------

    def resolve(self, state: HubState, who: Identity | None, repo_id: str, revision: str, path: str) -> None:
        repo = state.readable(repo_id, who)
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{stored.blob_oid}"', "Accept-Ranges": "bytes"}
        if stored.is_lfs:
            headers.update(
                {
                    "Location": self._cdn_url(state, stored.lfs_sha256, path),
                    "X-Linked-Etag": f'"{stored.lfs_sha256}"',
                    "X-Linked-Size": str(stored.size),
                }
            )
            self._send(302, b"", headers)
            return
        self._send_content(stored.content or b"", headers)


_REPO = r"(?P<repo_id>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*?)"
_REV = r"(?P<revision>[^/]+)"
_ROUTES: list[tuple[tuple[str, ...], re.Pattern[str], Any]] = [
    (("GET",), re.compile(r"/api/whoami-v2"), _Handler.whoami),
    (("POST",), re.compile(r"/api/validate-yaml"), _Handler.validate_yaml),
    (("POST",), re.compile(r"/api/repos/create"), _Handler.create_repo),
    (("GET",), re.compile(rf"/api/models/{_REPO}/xet-(?P<kind>read|write)-token(?:/{_REV})?"), _Handler.xet_token),
    (("GET",), re.compile(rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?"), _Handler.tree),
    (("GET",), re.compile(rf"/api/models/{_REPO}/refs"), _Handler.refs),
    (("GET",), re.compile(rf"/api/models/{_REPO}/commits/{_REV}"), _Handler.commits),
    (("POST",), re.compile(rf"/api/models/{_REPO}/preupload/{_REV}"), _Handler.preupload),
    (("POST",), re.compile(rf"/api/models/{_REPO}/commit/{_REV}"), _Handler.commit),
    (("GET",), re.compile(rf"/api/models/{_REPO}(?:/revision/{_REV})?"), _Handler.repo_info),
    (("POST",), re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), _Handler.lfs_batch),
    (("POST",), re.compile(rf"/{_REPO}\.git/info/lfs/objects/verify"), _Handler.lfs_verify),
    (("PUT",), re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), _Handler.lfs_upload),
    (("GET", "HEAD"), re.compile(r"/lfs-cdn/(?P<oid>[0-9a-f]{64})"), _Handler.lfs_cdn),
    (("GET", "HEAD"), re.compile(rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)"), _Handler.resolve),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    base_url: str


class HubServer:
    """The test Hub on 127.0.0.1 and a free port, in a background thread; a context manager."""

    def __init__(self, user: str = "tester", orgs: tuple[str, ...] = ("test-org",)):
        self.user, self.orgs = user, orgs
        self.write_token = "hf_write_" + secrets.token_hex(12)
        self.read_token = "hf_read_" + secrets.token_hex(12)
        self.state = HubState(user, orgs, self.write_token, self.read_token)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the test Hub is not running")
        return self._server.base_url

    def start(self, port: int = 0) -> HubServer:
        server = _Server(("127.0.0.1", port), _Handler)
        server.state = self.state
        server.base_url = f"http://127.0.0.1:{server.server_port}"
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what tests look at -------------------------------------------------------------------

    def requests(self) -> list[LoggedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def head(self, repo_id: str, branch: str = "main") -> str:
        with self.state.lock:
            return self.state.repos[repo_id].branches[branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of every file at a revision (LFS files resolved)."""
        with self.state.lock:
            commit = self.state.repos[repo_id].resolve(revision)
            assert commit is not None, f"{repo_id} has no revision {revision}"
            return {
                p: (self.state.lfs_objects[f.lfs_sha256] if f.is_lfs else f.content or b"")
                for p, f in commit.files.items()
            }

    def lfs_paths(self, repo_id: str, revision: str = "main") -> set[str]:
        with self.state.lock:
            commit = self.state.repos[repo_id].resolve(revision)
            assert commit is not None
            return {p for p, f in commit.files.items() if f.is_lfs}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="a local test Hub (LFS basic transfer; set HF_HUB_DISABLE_XET=1)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    hub = HubServer().start(args.port)
    print(f"HF_ENDPOINT={hub.url}\nwrite token: {hub.write_token}\nread-only token: {hub.read_token}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
