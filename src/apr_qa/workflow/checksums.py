"""SHA-256 of artifacts, with a stat-keyed cache so a no-op run never rehashes an unchanged file.

A cache entry is valid while the file's (size, mtime_ns, ctime_ns, inode) are unchanged: any write
to the file, a replacement by rename, or a copy changes at least one of them. ctime cannot be set
from user space, so even a write followed by `touch -d` to restore the mtime invalidates the entry.
`verify(..., use_cache=False)` rehashes regardless.

Entries live in a directory (one small JSON file per hashed path, named by the path's hash), so
concurrent jobs never contend for a shared file and each entry is replaced atomically. Files under
DIRECT_BELOW bytes (evidence JSON, records) are hashed directly and never cached: reading them costs
less than reading and writing an entry, and planning a large workflow digests thousands of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..fsutil import sha256_file, write_text_atomic

CACHE_ENV = "APR_QA_CHECKSUM_CACHE"
DIRECT_BELOW = 256 * 1024


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _entry_path(cache_dir: Path, path: Path) -> Path:
    return cache_dir / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")


def cache_dir_from_env() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else None


def sha256(path: str | Path, cache_dir: str | Path | None = None, use_cache: bool = True) -> str:
    """The file's SHA-256 hex digest, from the cache when its stat key still matches."""
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_dir_from_env()
    if cache_dir is None or os.stat(path).st_size < DIRECT_BELOW:
        return sha256_file(path)
    path = Path(path).resolve()
    entry = _entry_path(cache_dir, path)
    key = _stat_key(path)
    if use_cache:
        try:
            cached = json.loads(entry.read_text())
            if cached["path"] == str(path) and cached["stat"] == key:
                return cached["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = sha256_file(path)
    if _stat_key(path) == key:  # not modified while we were reading it
        write_text_atomic(entry, json.dumps({"path": str(path), "stat": key, "sha256": digest}) + "\n")
    return digest


def git_blob_sha1(path: str | Path) -> str:
    """Git's object id of a file ("blob <size>\\0" + content): the hub's id for non-LFS files."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path, cache_dir: str | Path | None = None) -> dict:
    path = Path(path)
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256(path, cache_dir)}
