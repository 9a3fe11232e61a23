"""Build a C source of the package into a shared library once, with the system compiler, cached.

The compiled quantizers (quant/kernels.c) and the packed matmul (runtime/matmul.c) share this: one
library per source text, compiler, flags and CPU, in $APR_QA_NATIVE_CACHE (else $XDG_CACHE_HOME/apr-qa
or ~/.cache/apr-qa), installed atomically so that concurrent jobs each see a whole file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CACHE_ENV = "APR_QA_NATIVE_CACHE"
# -march=native vectorizes for this CPU (the cache key includes its feature flags); a compiler
# without it gets a generic build.
NATIVE_FLAGS = ["-march=native"]


# The C sources this process built or loaded a library of: code its outputs depend on, which a
# workflow job records (apr_qa.workflow.fingerprint).
SOURCES: set[Path] = set()
T = TypeVar("T")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "apr-qa"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def compile_to(cc: str, source: Path, flags: list[str], target: Path, libs: tuple[str, ...] = ()) -> Path:
    """Compile `source` into `target`, atomically; a read-only cache builds into a private folder."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    except OSError:
        work = Path(tempfile.mkdtemp(prefix="apr-qa-native-"))
        target = work / target.name
    out = work / target.name
    try:
        subprocess.run([cc, *flags, "-o", str(out), str(source), *libs], check=True, capture_output=True, text=True)
        os.replace(out, target)
    finally:
        if work != target.parent:
            shutil.rmtree(work, ignore_errors=True)
    return target


def build(cc: str, source: Path, flags: list[str], stem: str, libs: tuple[str, ...] = ()) -> Path:
    """The library for this source, compiler and CPU, from the cache or built now (OSError if not)."""
    SOURCES.add(source)
    errors = []
    for attempt in (flags + NATIVE_FLAGS, flags):
        key = "\n".join([source.read_text(), cc, *attempt, *libs, platform.machine(), sys.platform,
                         _cpu_fingerprint()])
        target = cache_dir() / f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
        if target.exists():
            return target
        try:
            return compile_to(cc, source, attempt, target, libs)
        except subprocess.CalledProcessError as exc:
            errors.append(exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else str(exc))
    raise OSError("; ".join(errors))


def load(source: Path, flags: list[str], stem: str, libs: tuple[str, ...], bind: Callable[[Path], T],
         fallback: str) -> T | None:
    """The library of `source` built (or from the cache) and bound by `bind`; None, with a warning that
    names the `fallback` the caller uses instead, when there is no compiler or the build fails. The
    callers check the library against their reference ports before using it."""
    cc = compiler()
    if cc is None:
        warnings.warn(f"no C compiler found: {fallback}", RuntimeWarning, stacklevel=4)
        return None
    try:
        return bind(build(cc, source, flags, stem, libs))
    except OSError as exc:
        warnings.warn(f"cannot build {source.name} ({exc}): {fallback}", RuntimeWarning, stacklevel=4)
        return None
