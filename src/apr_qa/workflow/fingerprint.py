"""Code fingerprints: which code and library versions a workflow job's output depends on, recorded by
the job itself (the way compilers' depfiles and ccache work).

Every `apr-qa` process of a job adds what it loaded to the job's *code record* when it exits, if
$APR_QA_CODE_RECORD names one (cli.py): the package's modules in `sys.modules`, the C sources it
compiled or loaded (`native_build`), the distributions its imported modules came from, with versions,
and the Python version. The processes of one job (`cache restore && verify-checksums && convert ...`, the
scenarios a certification spawns) all merge into the same record.

Planning turns a record into the job's `code` param (`plan_key`): a digest of the recorded files'
current bytes and the recorded libraries' current versions. Snakemake's params trigger reruns the job
when it changes, so an edit to any module the job loaded, or an upgrade of any library it imported,
reruns it, and nothing else does. A job that starts importing a new module records it on its next run,
which happens because the module that imports it changed. The record also keeps the key the job ran
under, so that a rerun does not change the param a second time.

What a job never loads is not in its record: a q4_0 conversion loads the q4_0 codec only (quant/
loads a dtype's codec on first use), `apr-qa convert` loads commands/convert.py and not the other
command modules (cli.py imports the one command it runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

from .. import native_build
from ..cli import CODE_KEY_ENV, CODE_RECORD_ENV
from ..fsutil import write_text_atomic

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/apr_qa
NEW = "new"  # the key of a job that has no record yet (its first run)


# -- the job's side: record what this process loaded -------------------------------------------------

def loaded_files(modules: dict[str, ModuleType]) -> set[str]:
    """The package's files among `modules` (sys.modules) and the C sources of the native libraries
    loaded, relative to the package root."""
    out = set()
    for module in modules.values():
        path = getattr(module, "__file__", None)
        if path and (rel := _relative(Path(path))):
            out.add(rel)
    if "apr_qa.native_build" in modules:
        out.update(rel for source in native_build.SOURCES if (rel := _relative(source)))
    return out


def loaded_distributions(modules: dict[str, ModuleType], startup: frozenset[str] = frozenset()) -> dict[str, str]:
    """The installed distributions whose modules are among `modules` (not counting `startup`, what the
    interpreter loaded before the command started), with their versions, and the Python version (a new
    interpreter reruns everything)."""
    owners = _module_owners()
    names = {name.partition(".")[0] for name in modules} - startup
    out = {dist: version for name in names for dist, version in owners.get(name, [])}
    out.pop("apr-qa", None)  # the package's own files are hashed, not its version
    out["python"] = platform.python_version()
    return out


def merge_into(record: Path, key: str, modules: dict[str, ModuleType], startup: frozenset[str] = frozenset()) -> None:
    """Add the files and distributions of `modules` to `record` (under a lock: a job's processes may
    run concurrently), and store the digest they have now with the key the job runs under."""
    record.parent.mkdir(parents=True, exist_ok=True)
    with _locked(record.parent):
        files, dists = loaded_files(modules), loaded_distributions(modules, startup)
        old = _read(record)
        if old is not None and old.get("key") == key:
            files |= set(old["files"])
            dists = {**old["distributions"], **dists}
        names, versions = sorted(files), dict(sorted(dists.items()))
        body = {"key": key, "files": names, "distributions": versions, "digest": digest(names, versions)}
        write_text_atomic(record, json.dumps(body, indent=1) + "\n")


# -- the plan's side: the job's param ------------------------------------------------------------------

def plan_key(rule: str, record: str | Path, root: Path = PACKAGE_ROOT) -> str:
    """The `code` param of a job: `<rule>:new` before its first run; the key it last ran under while the
    recorded files and versions are unchanged; else `<rule>:<digest of what they are now>`."""
    body = _read(Path(record))
    if body is None:
        return f"{rule}:{NEW}"
    now = digest(body["files"], body["distributions"], root)
    return body["key"] if now == body["digest"] else f"{rule}:{now}"


def job_keys(results: str | Path, root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """Every recorded job under `results` (its record's path below .code/, without .json) -> its key."""
    base = Path(results) / ".code"
    return {p.relative_to(base).with_suffix("").as_posix(): plan_key(rule_of(p), p, root)
            for p in sorted(base.rglob("*.json"))}


def rule_of(record: Path) -> str:
    """The rule a record belongs to: the folder below .code/ (layout.code_record)."""
    parts = record.parts
    return parts[parts.index(".code") + 1].removesuffix(".json") if ".code" in parts[:-1] else "job"


def job_env(record: str, key: str) -> str:
    """The shell prefix that makes a job's `apr-qa` processes record into `record` (a new record per
    run: a rerun may load other modules than the run before)."""
    quoted = shlex.quote(record)
    return f"export {CODE_RECORD_ENV}={quoted} {CODE_KEY_ENV}={shlex.quote(key)}; rm -f {quoted};"


def digest(files: list[str], dists: dict[str, str], root: Path = PACKAGE_ROOT) -> str:
    """16 hex of sha256 over each file's path and bytes (a deleted file counts as changed) and each
    distribution's name and *current* version."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + _file_digest(root / rel) + b"\0")
    current = _installed_versions()
    for dist in sorted(dists):
        version = platform.python_version() if dist == "python" else current.get(dist, "absent")
        h.update(f"{dist}=={version}\0".encode())
    return h.hexdigest()[:16]


def explain(record: str | Path, root: Path = PACKAGE_ROOT) -> list[str]:
    """One line per recorded file and distribution, each marked `changed` where it differs now."""
    body = _read(Path(record))
    if body is None:
        raise FileNotFoundError(f"{record}: no code record (the job has not run)")
    current = _installed_versions()
    lines = [f"key {body['key']}; now {plan_key('job', record, root)}"]
    lines += [f"  {rel}" for rel in body["files"]]
    for dist, version in body["distributions"].items():
        now = platform.python_version() if dist == "python" else current.get(dist, "absent")
        lines.append(f"  {dist}=={now}" + ("" if now == version else f" (recorded {version}: changed)"))
    return lines


# -- helpers ---------------------------------------------------------------------------------------------

def _relative(path: Path) -> str | None:
    try:
        return path.resolve().relative_to(PACKAGE_ROOT).as_posix()
    except ValueError:
        return None


def _read(record: Path) -> dict | None:
    try:
        return json.loads(record.read_text())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _locked(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@functools.cache
def _file_digest(path: Path) -> bytes:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except FileNotFoundError:
        return b"missing"


def _site_state() -> str:
    """Changes whenever a distribution is installed, upgraded or removed (each adds or removes a
    *.dist-info folder, which changes its parent's mtime)."""
    parts = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            parts.append(f"{entry}:{os.stat(entry or '.').st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@functools.cache
def _distribution_table() -> dict:
    """{"owners": top-level module -> [[dist, version]], "versions": dist -> version}. Scanning every
    installed distribution takes most of a second, so the table is cached (native_build's cache folder)
    per state of the site folders."""
    cache = native_build.cache_dir() / f"distributions-{_site_state()}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(cache.read_text())
    versions: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(name, dist.version)
    owners = {module: sorted({(d, versions[d]) for d in dists if d in versions})
              for module, dists in metadata.packages_distributions().items()}
    table = {"owners": owners, "versions": versions}
    with contextlib.suppress(OSError):
        write_text_atomic(cache, json.dumps(table))
    return table


def _module_owners() -> dict[str, list[list[str]]]:
    return _distribution_table()["owners"]


def _installed_versions() -> dict[str, str]:
    return _distribution_table()["versions"]
