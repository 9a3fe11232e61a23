"""A small HuggingFace-Hub-compatible HTTP server over local folders (tests and offline use).

It speaks the part of the hub protocol huggingface_hub's downloads use:
  GET  /api/models/{repo}[/revision/{rev}]   model info: commit `sha` and `siblings` with size,
                                             blobId (git sha1) and, for LFS files, lfs {sha256, size}
  HEAD|GET /{repo}/resolve/{rev}/{path}      small files: 200, ETag = git blob sha1;
                                             LFS files: 302 to a blob URL on another host name
                                             ("localhost" vs "127.0.0.1", like the hub's CDN), with
                                             X-Linked-Etag = sha256 and X-Linked-Size
  GET  /lfs/{sha256}                         the blob itself
  POST /api/models/{repo}/paths-info/{rev}   form `paths=...`: [{type, path, size, oid, lfs}] (what
                                             caching proxies such as olah ask before a resolve)
Every resolve response carries X-Repo-Commit. Errors carry X-Error-Code (RepoNotFound,
RevisionNotFound, EntryNotFound) as the hub does, which huggingface_hub maps to its exceptions.

The served repository state is fixed when the mirror starts (like a commit); changing a file on
disk afterwards makes the mirror serve bytes that no longer match its listing, which is how tests
model a corrupted transfer. `fail_next()` injects transient 5xx responses. Blobs honour a
`Range: bytes=N-[M]` request with 206 (how huggingface_hub resumes an `.incomplete` file), and
`block_delay_s` slows each 1 MiB block sent, so a test can interrupt a download mid-file;
`cut_next()` closes the connection after some bytes of a blob, as a dropped transfer does.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast
from urllib.parse import parse_qsl, unquote, urlsplit

from ..fsutil import sha256_file
from ..workflow.checksums import git_blob_sha1

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".onnx", ".h5", ".msgpack")
LFS_MIN_SIZE = 10 * 1024 * 1024


@dataclass
class HubFile:
    name: str
    path: Path
    size: int
    blob_id: str          # git sha1 of the content (for LFS files the real hub hashes the pointer; unused here)
    sha256: str | None    # set for LFS files


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]

    @classmethod
    def from_folder(cls, repo_id: str, folder: str | Path | list[Path]) -> HubRepo:
        """A repo of a folder's files, or of an explicit file list (served under their names)."""
        if isinstance(folder, list):
            found = {p.name: Path(p) for p in folder}
        else:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: not a directory")
            found = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                     if p.is_file() and not p.name.startswith(".")}
        files = {}
        for name, path in sorted(found.items()):
            size = path.stat().st_size
            lfs = name.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
            files[name] = HubFile(name, path, size, git_blob_sha1(path), sha256_file(path) if lfs else None)
        tree = "".join(f"{f.name}\0{f.sha256 or f.blob_id}\n" for f in files.values())
        return cls(repo_id, hashlib.sha1(f"{repo_id}\n{tree}".encode()).hexdigest(), files)

    def info(self) -> dict:
        siblings = []
        for f in self.files.values():
            s = {"rfilename": f.name, "size": f.size, "blobId": f.blob_id}
            if f.sha256 is not None:
                s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(s)
        return {"id": self.repo_id, "modelId": self.repo_id, "sha": self.commit, "private": False,
                "disabled": False, "gated": False, "tags": [], "siblings": siblings}


class HubMirror:
    """`with HubMirror({"org/name": folder}) as hub: os.environ["HF_ENDPOINT"] = hub.url`."""

    def __init__(self, repos: dict[str, str | Path | list[Path]], host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, block_delay_s: float = 0.0):
        self.block_delay_s = block_delay_s
        self.repos = {rid: HubRepo.from_folder(rid, folder) for rid, folder in repos.items()}
        self.token = token
        self.requests: list[str] = []
        self._failures: list[list] = []  # [path prefix, remaining count, status]
        self._cuts: list[list] = []      # [path prefix, remaining count, bytes sent before closing]
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self._server.server_address[:2])  # an AF_INET server
        return f"http://{host}:{port}"

    def fail_next(self, path_prefix: str, count: int = 1, status: int = 503) -> None:
        with self._lock:
            self._failures.append([path_prefix, count, status])

    def cut_next(self, path_prefix: str, after_bytes: int, count: int = 1) -> None:
        with self._lock:
            self._cuts.append([path_prefix, count, after_bytes])

    def _injected_cut(self, path: str) -> int | None:
        with self._lock:
            for cut in self._cuts:
                if path.startswith(cut[0]) and cut[1] > 0:
                    cut[1] -= 1
                    return cut[2]
        return None

    def _injected_failure(self, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if path.startswith(failure[0]) and failure[1] > 0:
                    failure[1] -= 1
                    return failure[2]
        return None

    def start(self) -> HubMirror:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HubMirror:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _handler(mirror: HubMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet; requests are recorded instead
            pass

        def do_GET(self) -> None:
            self._route(send_body=True)

        def do_HEAD(self) -> None:
            self._route(send_body=False)

        def do_POST(self) -> None:
            path = unquote(urlsplit(self.path).path)
            mirror.requests.append(f"POST {path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            parts = path.strip("/").split("/")
            if parts[:2] != ["api", "models"] or len(parts) != 6 or parts[4] != "paths-info":
                return self._error(404, "NotFound", f"no route for POST {path}", True)
            repo = self._repo_at("/".join(parts[2:4]), parts[5], True)
            if repo is None:
                return
            names = [v for k, v in parse_qsl(body) if k == "paths"]
            infos = []
            for f in (repo.files[n] for n in names if n in repo.files):
                info = {"type": "file", "path": f.name, "size": f.size, "oid": f.blob_id}
                if f.sha256 is not None:
                    info["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                infos.append(info)
            self._send(200, {"Content-Type": "application/json"}, json.dumps(infos).encode())

        def _send(self, status: int, headers: dict[str, str], body: bytes | Path = b"", send_body: bool = True,
                  length: int | None = None, start: int = 0) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if length is None:
                length = len(body) if isinstance(body, bytes) else body.stat().st_size
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if not send_body:
                return
            if isinstance(body, Path):
                left = length
                cut = mirror._injected_cut(unquote(urlsplit(self.path).path))
                if cut is not None:
                    left = min(left, cut)
                    self.close_connection = True
                with open(body, "rb") as f:
                    f.seek(start)
                    while left > 0 and (block := f.read(min(1 << 20, left))):
                        left -= len(block)
                        self.wfile.write(block)
                        if mirror.block_delay_s:
                            time.sleep(mirror.block_delay_s)
            else:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, send_body: bool, extra: dict | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, {"X-Error-Code": code, "X-Error-Message": message,
                                "Content-Type": "application/json", **(extra or {})}, body, send_body)

        def _route(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            mirror.requests.append(f"{self.command} {path}")
            status = mirror._injected_failure(path)
            if status is not None:
                return self._error(status, "ServiceUnavailable", "injected failure", send_body)
            if mirror.token is not None and not path.startswith("/lfs/"):
                if self.headers.get("Authorization") != f"Bearer {mirror.token}":
                    return self._error(401, "RepoNotFound", "Invalid credentials in Authorization header", send_body)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self._model_info(parts[2:], send_body)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), send_body)
            if len(parts) == 2 and parts[0] == "lfs":
                return self._blob(parts[1], send_body)
            self._error(404, "NotFound", f"no route for {path}", send_body)

        def _repo_at(self, repo_id: str, revision: str, send_body: bool) -> HubRepo | None:
            repo = mirror.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found", send_body)
                return None
            if revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
                return None
            return repo

        def _model_info(self, parts: list[str], send_body: bool) -> None:
            repo_id = "/".join(parts[:2])
            revision = "/".join(parts[3:]) if len(parts) > 3 and parts[2] == "revision" else "main"
            repo = self._repo_at(repo_id, revision, send_body)
            if repo is not None:
                self._send(200, {"Content-Type": "application/json"}, json.dumps(repo.info()).encode(), send_body)

        def _resolve(self, repo_id: str, revision: str, name: str, send_body: bool) -> None:
            repo = self._repo_at(repo_id, revision, send_body)
            if repo is None:
                return
            commit = {"X-Repo-Commit": repo.commit}
            f = repo.files.get(name)
            if f is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist at {revision}", send_body, commit)
            if f.sha256 is None:
                return self._send(200, {**commit, "ETag": f'"{f.blob_id}"', "Content-Type": "application/octet-stream"},
                                  f.path, send_body, length=f.path.stat().st_size)
            port = cast(tuple[str, int], self.server.server_address)[1]
            self._send(302, {**commit, "Location": f"http://localhost:{port}/lfs/{f.sha256}",
                             "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                             "ETag": f'"{f.blob_id}"'}, b"", send_body)

        def _blob(self, digest: str, send_body: bool) -> None:
            for repo in mirror.repos.values():
                for f in repo.files.values():
                    if f.sha256 != digest:
                        continue
                    size = f.path.stat().st_size
                    headers = {"ETag": f'"{digest}"', "Content-Type": "application/octet-stream",
                               "Accept-Ranges": "bytes"}
                    wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                    if wanted and int(wanted[1]) < size:
                        start, end = int(wanted[1]), min(int(wanted[2] or size - 1), size - 1)
                        mirror.requests.append(f"RANGE {start}-{end} /lfs/{digest}")
                        return self._send(206, {**headers, "Content-Range": f"bytes {start}-{end}/{size}"},
                                          f.path, send_body, length=end + 1 - start, start=start)
                    return self._send(200, headers, f.path, send_body, length=size)
            self._error(404, "EntryNotFound", f"no blob {digest}", send_body)

    return Handler
