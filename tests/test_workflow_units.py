"""Checksum cache and the andon gate logic, on real files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from apr_qa.errors import AprQaError
from apr_qa.fsutil import sha256_file
from apr_qa.workflow import andon, checksums


def test_checksum_cache_hit_miss_and_invalidation(tmp_path):
    cache = tmp_path / "cache"
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(checksums.DIRECT_BELOW))
    first = checksums.sha256(f, cache)
    assert first == sha256_file(f) and len(list(cache.iterdir())) == 1
    # a cache hit is served from the entry: prove it by planting a different digest for the same stat key
    entry = next(cache.iterdir())
    record = json.loads(entry.read_text())
    entry.write_text(json.dumps({**record, "sha256": "planted"}))
    assert checksums.sha256(f, cache) == "planted"
    assert checksums.sha256(f, cache, use_cache=False) == first
    # any rewrite changes the stat key (size, mtime_ns, ctime_ns or inode): rehashed
    f.write_bytes(f.read_bytes()[::-1])
    assert checksums.sha256(f, cache) == sha256_file(f) != first


def test_small_files_are_hashed_directly_without_an_entry(tmp_path):
    cache = tmp_path / "cache"
    f = tmp_path / "evidence.json"
    f.write_bytes(b"{}" * 100)
    assert checksums.sha256(f, cache) == sha256_file(f)
    assert not cache.exists() or not list(cache.iterdir())


def test_restoring_mtime_does_not_fool_the_cache(tmp_path):
    cache = tmp_path / "cache"
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * checksums.DIRECT_BELOW)
    st = f.stat()
    before = checksums.sha256(f, cache)
    with open(f, "r+b") as fh:
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime, same inode
    assert checksums.sha256(f, cache) != before  # ctime moved


def test_git_blob_sha1_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False) as t:
        t.write(b"hello\n")
    try:
        assert checksums.git_blob_sha1(t.name) == "ce013625030ba8dba906f756967f9e9ca394464a"
    finally:
        os.unlink(t.name)


def _evidence(tmp_path, *gates) -> Path:
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps({"gates": [dict(id=i, name=n, passed=p, measured=m, threshold=t, level=lv, message="")
                                          for i, n, p, m, t, lv in gates]}))
    return path


@pytest.mark.parametrize("policy, level, stops", [
    ("stop-on-p0", "fail", False), ("stop-on-p0", "halt", True), ("stop-on-first", "fail", True),
    ("collect-all", "halt", True), ("collect-all", "fail", False),
])
def test_gate_enforcement_and_policies(tmp_path, capsys, policy, level, stops):
    state, marker = tmp_path / "andon", tmp_path / "ok"
    ev = _evidence(tmp_path, ("T2", "latency", False, 9.0, "< 5", "warn"),
                   ("T4", "accuracy", False, 0.2, "> 0.5", level))
    rc = andon.enforce(ev, "evaluate", "m/q4_0", state, policy, marker)
    assert rc == (3 if level == "halt" else 1) and not marker.exists()
    err = capsys.readouterr().err
    assert "gate T4 (accuracy) on m/q4_0: measured 0.2, threshold > 0.5" in err and "gate T2" in err
    assert (state / "STOP").exists() == stops
    assert andon.load_events(state)[0]["gates"][0]["id"] == "T4"


def test_warnings_only_pass_and_clear_old_events(tmp_path):
    state, marker = tmp_path / "andon", tmp_path / "ok"
    bad = _evidence(tmp_path, ("V1", "loads", False, "no", "yes", "fail"))
    assert andon.enforce(bad, "validate", "m/f16", state, "stop-on-p0", marker) == 1
    good = _evidence(tmp_path, ("V1", "loads", True, "yes", "yes", "fail"),
                     ("T5", "equiv", False, 0.8, ">= 0.9", "warn"))
    assert andon.enforce(good, "validate", "m/f16", state, "stop-on-p0", marker) == 0
    assert marker.exists() and andon.load_events(state) == []


def test_andon_run_records_halts_and_refuses_while_stopped(tmp_path, capsys):
    state = tmp_path / "andon"
    cmd = [sys.executable, "-c", "import sys; print('apr-qa: gate failed: x: D4 checksum mismatch', file=sys.stderr);"
                                 " sys.exit(3)"]
    assert andon.run(cmd, "download", "m", state, "stop-on-p0") == 3
    event = andon.load_events(state)[0]
    assert event["level"] == "halt" and event["gates"][0]["id"] == "D4"
    assert andon.stop_reason(state)["subject"] == "m"
    ok = [sys.executable, "-c", "pass"]
    assert andon.run(ok, "convert", "m/f16", state, "stop-on-p0") == 1  # refused: line stopped
    assert "line stopped" in capsys.readouterr().err
    assert andon.reset(state) and andon.run(ok, "convert", "m/f16", state, "stop-on-p0") == 0


def test_andon_run_keeps_evidence_of_tripped_gates(tmp_path):
    state, ev = tmp_path / "andon", tmp_path / "ev.json"
    cmd = [sys.executable, "-c", f"open({str(ev)!r}, 'w').write('{{}}'); raise SystemExit(1)"]
    assert andon.run(cmd, "validate", "m/f16", state, "stop-on-p0", evidence=ev) == 0
    ev.unlink()
    assert andon.run(cmd[:2] + ["raise SystemExit(1)"], "validate", "m/f16", state, "stop-on-p0", evidence=ev) == 1


def test_unknown_policy_is_an_error():
    with pytest.raises(AprQaError):
        andon.stops_line("fail", "yolo")
