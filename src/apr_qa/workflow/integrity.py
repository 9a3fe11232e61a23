"""Integrity of what the results claim: every file a checksum record names still has its bytes.

The workflow writes two kinds of checksum record: the download manifest (`files`: one entry per
downloaded file with its `path` and `sha256`) and the artifact record beside each .apr
(`{"path", "size", "sha256"}`, from `apr-qa checksum --json`); the checksum cache's entries
(`{"path", "stat", "sha256"}`) have the single-file shape too. Files are hashed through the
stat-keyed cache (apr_qa.workflow.checksums), so checking an unchanged file costs a stat and a
small read, while a file whose size or times changed is rehashed before it is trusted again.

`problem()` says what is wrong with one record without raising (planning uses it to decide what
to rebuild); `verify_records()` raises on the first mismatch (the `verify-checksums` command).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AprQaError, GateFailure
from .checksums import sha256


def rebuild_hint(record: Path, doc: dict[str, Any]) -> str:
    if isinstance(doc.get("files"), list):
        return f"download it again: snakemake --forcerun {record}"
    return "delete it (or run snakemake --forcerun on it) to rebuild it"


def read_record(record: Path) -> dict[str, Any]:
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        raise AprQaError(f"cannot read checksum record: {exc}", record) from None
    if not isinstance(doc, dict) or not (isinstance(doc.get("files"), list) or "sha256" in doc):
        raise AprQaError("not a checksum record (neither a download manifest with `files` nor a "
                         "{path, sha256} record)", record)
    return doc


def entries(record: Path, doc: dict[str, Any]) -> list[tuple[Path, str, int | None]]:
    """(file, recorded sha256, recorded size or None) for every file the record names."""
    if isinstance(doc.get("files"), list):
        items = doc["files"]
    else:
        items = [doc]
    out = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("sha256"), str)):
            raise AprQaError(f"checksum record entry without path and sha256: {item!r}"[:200], record)
        out.append((_locate(record, Path(item["path"])), item["sha256"], item.get("size")))
    return out


def _locate(record: Path, path: Path) -> Path:
    """A relative path is relative to the workflow's directory (where the records are written from);
    run from elsewhere, an artifact beside its own record is still found."""
    if path.is_absolute() or path.exists():
        return path
    beside = record.parent / path.name
    return beside if beside.exists() else path


def _evicted(doc: dict[str, Any]) -> bool:
    """A download manifest whose revision the model cache evicted: its files are away on purpose."""
    from ..hub.model_cache import evicted

    return isinstance(doc.get("files"), list) and evicted(doc)


def check_file(path: Path, want_sha: str, want_size: int | None) -> str | None:
    """None when the file still has the recorded bytes, else why not."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if want_size is not None and size != want_size:
        return f"size {size} differs from the recorded {want_size}"
    got = sha256(path)
    if got != want_sha:
        return f"sha256 {got} differs from the recorded {want_sha}"
    return None


def problem(record: Path) -> tuple[Path, str] | None:
    """(file, what is wrong) for the first file of `record` that lost its recorded bytes; None when
    all are intact or the record itself is absent (nothing is claimed yet)."""
    if not record.exists():
        return None
    try:
        doc = read_record(record)
        if _evicted(doc):
            return None
        for path, want, size in entries(record, doc):
            why = check_file(path, want, size)
            if why is not None:
                return path, why
    except AprQaError as exc:
        return record, str(exc)
    return None


def _stat_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


_planned: dict[tuple, tuple[Path, str] | None] = {}
_named: dict[tuple, list[Path]] = {}


def problem_unless_unchanged(record: Path) -> tuple[Path, str] | None:
    """problem(), remembered while the record and every file it names keep their stat keys (the
    checksum cache's validity rule). Planning asks after every finished checkpoint; this makes an
    unchanged record cost a few stats instead of re-reading it and its cache entries."""
    record_key = _stat_key(record)
    if record_key is None:
        return None
    version = (str(record), record_key)
    if version not in _named:
        try:
            _named[version] = [path for path, _, _ in entries(record, read_record(record))]
        except AprQaError:
            _named[version] = []
    located = [_locate(record, p) for p in _named[version]]  # a relative path may resolve differently now
    key = (version, *((str(p), _stat_key(p)) for p in located))
    if key not in _planned:
        _planned[key] = problem(record)
    return _planned[key]


def verify_records(records: list[Path]) -> int:
    """Check every file every record names; returns how many. Raises a halt-level D4 GateFailure
    naming the first file that lost its bytes, and an error for a record that names no file."""
    total = 0
    for record in records:
        doc = read_record(record)
        if _evicted(doc):
            print(f"{record}: its revision was evicted from the model cache; the recorded sha256s stand "
                  "(`apr-qa cache restore` fetches and checks it again)", file=sys.stderr)
            continue
        files = entries(record, doc)
        if not files:
            status = f" (status {doc['status']})" if "status" in doc else ""
            raise AprQaError(f"checksum record lists no files{status}: nothing to verify", record)
        for path, want, size in files:
            why = check_file(path, want, size)
            if why == "missing":
                raise AprQaError(f"missing, but named by the checksum record {record}; {rebuild_hint(record, doc)}",
                                 path)
            if why is not None:
                raise GateFailure(f"D4 checksum mismatch: {why} ({record}); {rebuild_hint(record, doc)}", "halt", path)
        total += len(files)
    return total


@dataclass
class Claims:
    """What the results claim of one model: its download manifest, the artifacts built from it (every
    variant's), the artifacts that exist only for a downloaded model (certification, oracle record),
    and the checksum records to verify (the manifest and each .apr record)."""

    manifest: Path
    artifacts: list[Path]
    if_downloaded: list[Path]
    records: list[Path]


_announced: set[str] = set()


def state(claims: list[Claims]) -> str:
    """The report's integrity param: "intact", or every claimed artifact that is missing (the report
    job's run has Snakemake rebuild it) and every record whose files lost their bytes (its
    verify-checksums halts on it; each is announced once per process)."""
    problems, halting = [], []
    for c in claims:
        if not c.manifest.exists():
            problems += [f"{c.manifest}: missing"] if any(p.exists() for p in c.artifacts) else []
            continue
        if json.loads(c.manifest.read_text()).get("status") != "ok":
            continue
        problems += [f"{p}: missing" for p in c.artifacts + c.if_downloaded if not p.exists()]
        for record in c.records:
            found = problem_unless_unchanged(record)
            if found and (record == c.manifest or found[1] != "missing"):  # a missing .apr is rebuilt
                halting.append(f"{found[0]}: {found[1]}")
    for p in halting:
        if p not in _announced:
            _announced.add(p)
            print(f"INTEGRITY: {p}; the report job halts on it", file=sys.stderr)
    return "; ".join(problems + halting) or "intact"
