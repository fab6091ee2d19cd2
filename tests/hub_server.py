"""A Hub-compatible HTTP server for tests, on 127.0.0.1 only.

It speaks enough of the Hugging Face Hub protocol (as huggingface_hub 2.4 uses it) for
``snapshot_download``, ``hf_hub_download``, ``list_models``, ``create_repo``, ``upload_folder`` and
``create_commit(create_pr=True)``. Repos live in memory with commits, branches and pull requests, and
faults can be injected: a file served altered under its original metadata, a connection reset
mid-download, a repo that does not exist. Point ``HF_ENDPOINT`` at ``server.url``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "hf_test_token"
"""The one token the server accepts for writes."""

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
SOCKET_TIMEOUT_S = 10


def git_blob_id(data: bytes) -> str:
    """The git blob id of ``data``, which the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One repo: commits (id -> files), refs (branch or "refs/pr/N" -> commit) and pull requests."""

    repo_id: str
    repo_type: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    pull_requests: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    def commit(self, files: dict[str, bytes], message: str) -> str:
        """Store a commit holding exactly ``files``; returns its 40-hex id."""
        key = [self.repo_id, message, len(self.commits), sorted((p, git_blob_id(d)) for p, d in files.items())]
        sha = hashlib.sha1(json.dumps(key).encode()).hexdigest()
        self.commits[sha] = dict(files)
        return sha

    def resolve(self, revision: str) -> str | None:
        """The commit a branch, PR ref or commit id names, or None."""
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


def _read_files(files) -> dict[str, bytes]:
    if isinstance(files, dict):
        return dict(files)
    folder = Path(files)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubServer:
    """The server and its in-memory repos; use as a context manager or call ``start``/``stop``."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.tampered: dict[tuple[str, str, str, str], bytes] = {}
        self.dropped: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering; later connections are refused."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def add_commit(self, repo_id: str, files, *, branch: str = "main", repo_type: str = "model",
                   message: str = "update", tags=()) -> str:
        """Commit ``files`` (name -> bytes, or a folder) as the whole content of ``branch``; creates the repo."""
        with self.lock:
            repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_id, repo_type))
            repo.tags = sorted(set(repo.tags) | set(tags))
            sha = repo.commit(_read_files(files), message)
            repo.refs[branch] = sha
            return sha

    def move_branch(self, repo_id: str, branch: str, commit: str, repo_type: str = "model") -> None:
        """Point ``branch`` at an existing commit."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            assert commit in repo.commits, commit
            repo.refs[branch] = commit

    def tamper(self, repo_id: str, path: str, commit: str, data: bytes | None = None, repo_type: str = "model") -> None:
        """Serve other bytes for ``path`` at ``commit`` while tree, ETag and size still describe the original.

        By default the last byte is flipped, so the size matches and only a checksum can tell.
        """
        original = self.repo(repo_id, repo_type).commits[commit][path]
        if data is None:
            data = original[:-1] + bytes([original[-1] ^ 0xFF])
        self.tampered[(repo_type, repo_id, commit, path)] = data

    def drop_downloads(self, repo_id: str, path: str, repo_type: str = "model") -> None:
        """Reset the connection halfway through every GET of ``path`` until :meth:`heal`."""
        self.dropped.add((repo_type, repo_id, path))

    def heal(self) -> None:
        """Undo every :meth:`tamper` and :meth:`drop_downloads`."""
        self.tampered.clear()
        self.dropped.clear()


def closed_endpoint() -> str:
    """A 127.0.0.1 URL nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class SilentEndpoint:
    """A 127.0.0.1 port that accepts connections and never answers, like a hung server."""

    def __enter__(self) -> str:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self._sock.close()


_API_TYPES = {"models": "model", "datasets": "dataset"}
_URL_PREFIX = {"model": "", "dataset": "datasets/"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = SOCKET_TIMEOUT_S
    server_version = "FakeHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format, *args) -> None:  # keep pytest output quiet
        pass

    # -- responses -------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._send(status, json.dumps({"error": message}).encode(), extra)

    # -- routing ---------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        with self.hub.lock:
            self.hub.requests.append((self.command, url.path))
        if parts[:1] == ["api"]:
            self._api(parts[1:], query)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("model", parts)
        elif len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            self._resolve("dataset", parts[1:])
        else:
            self._error(404, None, "not found")

    def _find(self, repo_type: str, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        return repo

    def _api(self, parts: list[str], query: dict) -> None:
        if self.command == "GET" and parts == ["models"]:
            return self._list_models(query)
        if self.command == "POST" and parts == ["repos", "create"]:
            return self._create_repo()
        if self.command == "POST" and parts == ["validate-yaml"]:
            self._body()
            return self._json({"errors": [], "warnings": []})
        if len(parts) < 3 or parts[0] not in _API_TYPES:
            return self._error(404, None, "not found")
        repo_type, repo_id, rest = _API_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
        repo = self._find(repo_type, repo_id)
        if repo is None:
            return None
        if self.command == "GET" and (not rest or rest[0] == "revision"):
            return self._info(repo, rest[1] if len(rest) > 1 else "main")
        if self.command == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            return self._tree(repo, rest[1], "/".join(rest[2:]))
        if self.command == "POST" and rest[:1] in (["preupload"], ["commit"]) and len(rest) == 2:
            if not self._authorized():
                return None
            if rest[0] == "preupload":
                return self._preupload()
            return self._commit(repo, rest[1], query.get("create_pr") == ["1"])
        return self._error(404, None, "not found")

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._body()
        self._error(401, None, "Invalid credentials in Authorization header")
        return False

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # -- read endpoints --------------------------------------------------------------------------
    def _commit_or_404(self, repo: Repo, revision: str) -> str | None:
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    def _info(self, repo: Repo, revision: str) -> None:
        sha = self._commit_or_404(repo, revision)
        if sha is not None:
            files = repo.commits[sha]
            self._json({"id": repo.repo_id, "sha": sha, "private": False, "tags": repo.tags,
                        "siblings": [{"rfilename": p} for p in sorted(files)]})

    def _tree(self, repo: Repo, revision: str, prefix: str) -> None:
        sha = self._commit_or_404(repo, revision)
        if sha is not None:
            files = repo.commits[sha]
            self._json([{"type": "file", "path": p, "size": len(d), "oid": git_blob_id(d)}
                        for p, d in sorted(files.items()) if p.startswith(prefix)])

    def _list_models(self, query: dict) -> None:
        wanted = set(query.get("filter", []))
        self._json([{"id": r.repo_id, "sha": r.refs.get("main"), "tags": r.tags, "private": False}
                    for (kind, _), r in sorted(self.hub.repos.items()) if kind == "model" and wanted <= set(r.tags)])

    def _resolve(self, repo_type: str, parts: list[str]) -> None:
        repo_id, revision, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        repo = self._find(repo_type, repo_id)
        sha = self._commit_or_404(repo, revision) if repo is not None else None
        if sha is None:
            return
        files = repo.commits[sha]
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": sha})
        data = files[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(data)}"'}
        served = self.hub.tampered.get((repo_type, repo_id, sha, path), data)
        if self.command == "GET" and (repo_type, repo_id, path) in self.hub.dropped:
            return self._reset_midway(served, headers)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(served)

    def _reset_midway(self, data: bytes, headers: dict) -> None:
        """Send the headers and half the body, then reset the TCP connection (RST, not FIN)."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        self._aborted = True

    def finish(self) -> None:
        if not getattr(self, "_aborted", False):
            super().finish()

    # -- write endpoints -------------------------------------------------------------------------
    def _create_repo(self) -> None:
        if not self._authorized():
            return
        payload = json.loads(self._body())
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._error(409, None, "You already created this model repo")
            repo = self.hub.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type)
            repo.refs["main"] = repo.commit({".gitattributes": GITATTRIBUTES}, "initial commit")
        self._json({"url": f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}", "name": repo_id})

    def _preupload(self) -> None:
        files = json.loads(self._body())["files"]
        self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                              for f in files]})

    def _commit(self, repo: Repo, revision: str, create_pr: bool) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with self.hub.lock:
            base = repo.resolve(revision)
            if base is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = dict(repo.commits[base])
            summary = "commit"
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value["summary"]
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    return self._error(400, None, f"this test server does not take {key!r} operations")
            sha = repo.commit(files, summary)
            page = f"{self.hub.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"
            pr_url = None
            if create_pr:
                number = len(repo.pull_requests) + 1
                repo.refs[f"refs/pr/{number}"] = sha
                repo.pull_requests.append({"num": number, "title": summary, "target": revision, "commit": sha})
                pr_url = f"{page}/discussions/{number}"
            else:
                repo.refs[revision] = sha
        self._json({"success": True, "commitOid": sha, "commitUrl": f"{page}/commit/{sha}", "pullRequestUrl": pr_url})
