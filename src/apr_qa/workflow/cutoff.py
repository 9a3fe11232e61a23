"""Early cutoff's params: the content digest of a checkpoint's output, for the rules that consume it.

Snakemake reruns every job downstream of a rerun job, even when the new output is byte-identical.
The workflow's consumers therefore take a producer's output as an `ancient()` input (a newer file
does not by itself trigger them) plus a param holding its *content digest* (`digest`): when the
checkpoint finishes, Snakemake re-evaluates its consumers' params, and only a changed digest reruns
them. Digests of large files come from the stat-keyed checksum cache (`checksums`), which the
producing rule fills, so planning never rehashes an unchanged .apr. Reads are memoized per version of
the file, so planning a large DAG does not reread a manifest every job's params ask for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import checksums
from ..hub.download import weights_key

T = TypeVar("T")
PENDING = "pending"  # the param while the producer has not run yet


def per_file_version(read: Callable[[str], T]) -> Callable[[str], T]:
    """read(path), once per version of the file: a checkpoint that rewrites the file changes its stat
    key (the checksum cache's: size, mtime, ctime, inode), so a re-evaluation after it reads the new
    bytes. Callers share the result: they must not modify it."""
    memo: dict[tuple, T] = {}

    def cached(path: str) -> T:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if key not in memo:
            memo[key] = read(path)
        return memo[key]

    return cached


file_sha256 = per_file_version(checksums.sha256)


@per_file_version
def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def recorded_sha256(path: str) -> str:
    """The artifact's sha256 as its producer recorded it (its .sha256.json): survives eviction of the
    artifact itself."""
    return read_json(path)["sha256"]


def weights_digest(path: str) -> str:
    """What of a download manifest matters to its consumers: the weight files' hashes, not the time."""
    return weights_key(read_json(path))


def digest(template: str, key: Callable[[str], str] | None = None) -> Callable[[Mapping[str, str]], str]:
    """Param: the content digest of `template`'s file for the job's wildcards (`key(path)`, else its
    sha256), or "pending" before it exists."""

    def param(wildcards: Mapping[str, str]) -> str:
        path = template.format(**dict(wildcards))
        if not os.path.exists(path):
            return PENDING
        return key(path) if key else file_sha256(path)

    return param


def digest_or_pending(path: str, key: Callable[[str], str] = file_sha256) -> str:
    return key(path) if os.path.exists(path) else PENDING
