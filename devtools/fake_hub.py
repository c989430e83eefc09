"""A loopback stand-in for the Hugging Face Hub, so tests run the REAL download code.

It answers the few endpoints `huggingface_hub` calls for `model_info(files_metadata=True)`
and `hf_hub_download` at a pinned revision, with the headers that library reads
(X-Repo-Commit, ETag/X-Linked-Etag, X-Linked-Size, X-Error-Code). Point `HF_ENDPOINT`
at `hub.url`. Dataset repos (`add_files(..., repo_type="dataset")`) answer `dataset_info` and
`hf_hub_download(repo_type="dataset")` under /api/datasets/ and /datasets/. Files over
`lfs_threshold` bytes are served as LFS files (etag = sha256, as the real hub does);
`tamper()` serves other bytes than the metadata promises, to prove the bundler checks content
against the hub's LFS sha256.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class _Repo:
    repo_id: str
    revision: str
    files: dict[str, bytes]
    lfs_threshold: int
    served: dict[str, bytes] = field(default_factory=dict)
    declared: dict[str, int] = field(default_factory=dict)
    """Files listed with a size but no content (a real 8B model's shards, for size plans)."""

    def is_lfs(self, name: str) -> bool:
        return len(self.files[name]) >= self.lfs_threshold

    def sibling(self, name: str) -> dict:
        if name in self.declared:
            size = self.declared[name]
            fake = hashlib.sha256(f"{self.repo_id}/{name}".encode()).hexdigest()
            return {"rfilename": name, "size": size, "blobId": fake[:40],
                    "lfs": {"sha256": fake, "size": size, "pointerSize": 134}}  # fmt: skip
        data = self.files[name]
        if self.is_lfs(name):
            pointer = lfs_pointer(data)
            return {
                "rfilename": name,
                "size": len(data),
                "blobId": git_blob_id(pointer),
                "lfs": {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": len(pointer),
                },
            }
        return {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}

    def etag(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(name) else git_blob_id(data)


class FakeHub:
    """`with FakeHub() as hub: revision = hub.add_folder("org/tiny", path)`; env HF_ENDPOINT=hub.url."""

    def __init__(self, lfs_threshold: int = 1024) -> None:
        self.lfs_threshold = lfs_threshold
        self.delay = 0.0
        """Seconds to wait before each file body, so a test can kill a client mid-download."""
        self.repos: dict[str, _Repo] = {}
        self.dataset_repos: dict[str, _Repo] = {}
        """Dataset repos, apart: a dataset may share its ORG/NAME with a model."""
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- content -----------------------------------------------------------------------

    def add_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> str:
        """Publish `files` as one commit of `repo_id`; returns its (deterministic) 40-hex id."""
        h = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        revision = h.hexdigest()
        repos = self.dataset_repos if repo_type == "dataset" else self.repos
        repos[repo_id] = _Repo(repo_id, revision, dict(files), self.lfs_threshold)
        return revision

    def add_folder(self, repo_id: str, folder: Path | str, extra: dict[str, bytes] | None = None) -> str:
        folder = Path(folder)
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        }
        return self.add_files(repo_id, {**files, **(extra or {})})

    def add_listing(self, repo_id: str, revision: str, sizes: dict[str, int]) -> None:
        """List `sizes` as `repo_id`@`revision` without content: model_info answers with these
        files and sizes, and any download of them fails (a size plan must not download)."""
        self.repos[repo_id] = _Repo(repo_id, revision, {}, self.lfs_threshold, declared=dict(sizes))

    def tamper(self, repo_id: str, name: str, data: bytes, repo_type: str = "model") -> None:
        """Serve `data` for `name` while the metadata still describes the published file."""
        (self.dataset_repos if repo_type == "dataset" else self.repos)[repo_id].served[name] = data

    def downloads(self) -> list[str]:
        """Paths of file bodies served (GET on /resolve/), in order."""
        with self._lock:
            return [p for m, p in self.log if m == "GET" and "/resolve/" in p]

    # --- server ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- protocol ----------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        with self._lock:
            self.log.append(("HEAD" if head else "GET", path))
        parts = path.strip("/").split("/")
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
            return self._model_info(req, f"{parts[2]}/{parts[3]}", "/".join(parts[5:]), head)
        if len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "revision":
            return self._model_info(req, f"{parts[2]}/{parts[3]}", "/".join(parts[5:]), head, dataset=True)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            repo_id, rev, name = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
            return self._resolve(req, repo_id, rev, name, head, dataset=True)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(req, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
        return self._error(req, 404, "EntryNotFound", "no such endpoint", head)

    def _send(self, req, status: int, headers: dict[str, str], body: bytes, head: bool) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)

    def _error(
        self, req, status: int, code: str, message: str, head: bool, commit: str | None = None
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(req, status, headers, json.dumps({"error": message}).encode(), head)

    def _repo(self, req, repo_id: str, revision: str, head: bool, dataset: bool = False) -> _Repo | None:
        repo = (self.dataset_repos if dataset else self.repos).get(repo_id)
        if repo is None:
            self._error(req, 401, "RepoNotFound", "Repository not found", head)
            return None
        if revision != repo.revision:
            self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
            return None
        return repo

    def _model_info(self, req, repo_id: str, revision: str, head: bool, dataset: bool = False) -> None:
        repo = self._repo(req, repo_id, revision, head, dataset)
        if repo is None:
            return
        body = {
            "_id": repo.revision[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.revision,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [repo.sibling(n) for n in sorted({*repo.files, *repo.declared})],
        }
        self._send(req, 200, {"Content-Type": "application/json"}, json.dumps(body).encode(), head)

    def _resolve(
        self, req, repo_id: str, revision: str, name: str, head: bool, dataset: bool = False
    ) -> None:
        repo = self._repo(req, repo_id, revision, head, dataset)
        if repo is None:
            return
        if name not in repo.files:
            return self._error(req, 404, "EntryNotFound", f"{name} does not exist", head, repo.revision)
        data = repo.served.get(name, repo.files[name])
        if not head and self.delay:
            time.sleep(self.delay)
        etag = repo.etag(name)
        headers = {
            "X-Repo-Commit": repo.revision,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if repo.is_lfs(name):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(repo.files[name]))
            headers["ETag"] = f'"{git_blob_id(lfs_pointer(repo.files[name]))}"'
        else:
            headers["ETag"] = f'"{etag}"'
        status = 200
        rng = req.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start : end + 1]
            status = 206
        self._send(req, status, headers, data, head)
