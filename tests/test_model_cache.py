"""The JIT model cache (apr_qa.hub.model_cache) on a real HF cache, filled by `apr-qa download`
through the local HuggingFace-compatible hub (hub_mirror); every command runs as a subprocess so the
HF_* and APR_QA_MODEL_CACHE environment is read exactly as in the workflow."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

from apr_qa.hub.mirror import HubMirror
from apr_qa.hub.model_cache import report_blocks

APR_QA = Path(sys.executable).parent / "apr-qa"
WEIGHTS = 20_000  # bytes of each tiny model's weights
REVISION = WEIGHTS + 100  # about a revision's size on disk (weights + config.json)


def policy(cap_bytes: float = 1e9, **extra) -> dict:
    return {"max_size_gb": cap_bytes / 1e9, **extra}


@pytest.fixture
def hub(tmp_path):
    repos = {}
    for i in range(5):
        folder = tmp_path / "repos" / f"m{i}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "index": i}))
        (folder / "model.safetensors").write_bytes(random.Random(i).randbytes(WEIGHTS))
        repos[f"org/m{i}"] = folder
    with HubMirror(repos) as mirror:
        yield mirror


def apr_qa(tmp_path, hub, *args, cache_policy=None, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "APR_QA_MODEL_CACHE"))}
    base.update(HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_TELEMETRY="1", **env)
    if hub is not None:
        base["HF_ENDPOINT"] = hub.url
    if cache_policy is not None:
        base["APR_QA_MODEL_CACHE"] = json.dumps(cache_policy)
    return subprocess.run([str(APR_QA), *args], env=base, capture_output=True, text=True)


def fetch(tmp_path, hub, repo, cache_policy, **env) -> Path:
    manifest = tmp_path / "manifests" / f"{repo.replace('/', '_')}.json"
    proc = apr_qa(tmp_path, hub, "download", repo, "--manifest", str(manifest), cache_policy=cache_policy, **env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(manifest.read_text())["status"] == "ok"
    return manifest


def release(tmp_path, manifest, outcome, cache_policy, **env):
    proc = apr_qa(tmp_path, None, "cache", "release", str(manifest), "--outcome", outcome, cache_policy=cache_policy,
                  **env)
    assert proc.returncode == 0, proc.stderr
    return proc


def cached(tmp_path) -> list[str]:
    info = scan_cache_dir(tmp_path / "cache")
    assert not info.warnings, info.warnings  # every repo folder is a complete, consistent cache entry
    return sorted(r.repo_id for r in info.repos if r.revisions)


def cache_size(tmp_path) -> int:
    return scan_cache_dir(tmp_path / "cache").size_on_disk


def evicted_log(tmp_path) -> list[dict]:
    path = tmp_path / "cache.apr-qa" / "evictions.json"
    return json.loads(path.read_text()) if path.exists() else []


def test_cap_is_respected_over_a_sequence_of_downloads(tmp_path, hub):
    cap = 2.5 * REVISION  # room for two revisions
    p = policy(cap, evict_after_certify=False)
    for i in range(5):
        manifest = fetch(tmp_path, hub, f"org/m{i}", p)
        assert f"org/m{i}" in cached(tmp_path)
        assert cache_size(tmp_path) <= cap
        release(tmp_path, manifest, "fail", p)  # done (kept 3 days unless the cap needs the room)
    assert cached(tmp_path) == ["org/m3", "org/m4"]
    assert [e["repo"] for e in evicted_log(tmp_path)] == ["org/m0", "org/m1", "org/m2"]
    assert all(e["reason"].startswith("LRU") for e in evicted_log(tmp_path))


def test_lru_order_counts_a_later_use(tmp_path, hub):
    p = policy(3.5 * REVISION, evict_after_certify=False)
    manifests = [fetch(tmp_path, hub, f"org/m{i}", p) for i in range(3)]
    for m in manifests:
        release(tmp_path, m, "fail", p)
    time.sleep(0.05)
    release(tmp_path, fetch(tmp_path, hub, "org/m0", p), "fail", p)  # m0 found cached: a use
    fetch(tmp_path, hub, "org/m3", p)  # needs one slot: the least recently used goes
    assert cached(tmp_path) == ["org/m0", "org/m2", "org/m3"]
    ls = json.loads(apr_qa(tmp_path, None, "cache", "ls", "--json", cache_policy=p).stdout)
    assert [r["repo"] for r in ls["revisions"]] == ["org/m2", "org/m0", "org/m3"]  # least recently used first
    assert [r["repo"] for r in ls["revisions"] if r["leased_by"]] == ["org/m3"]


def test_pinned_repo_is_never_evicted(tmp_path, hub):
    p = policy(1.5 * REVISION, evict_after_certify=False)
    assert apr_qa(tmp_path, None, "cache", "pin", "org/m0").returncode == 0
    for i in range(3):
        manifest = fetch(tmp_path, hub, f"org/m{i}", p)
        assert cached(tmp_path) == sorted({"org/m0", f"org/m{i}"})  # m0 pinned: the others made room
        release(tmp_path, manifest, "pass", p)
    assert cached(tmp_path) == ["org/m0"]  # over the cap: every revision but the pinned one went
    gc = apr_qa(tmp_path, None, "cache", "gc", "--max-size-gb", "0", cache_policy=p)
    assert gc.returncode == 0 and cached(tmp_path) == ["org/m0"] and "pinned or leased" in gc.stderr
    assert apr_qa(tmp_path, None, "cache", "unpin", "org/m0").returncode == 0
    assert apr_qa(tmp_path, None, "cache", "gc", "--max-size-gb", "0").returncode == 0
    assert cached(tmp_path) == []
    bad = apr_qa(tmp_path, None, "cache", "unpin", "org/m0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not pinned" in bad.stderr


def test_a_revision_a_pending_job_needs_is_never_evicted(tmp_path, hub):
    p = policy(1.5 * REVISION)
    first = fetch(tmp_path, hub, "org/m0", p)  # its conversions are still queued: the lease holds
    second = apr_qa(tmp_path, hub, "download", "org/m1", "--manifest", str(tmp_path / "m1.json"), cache_policy=p)
    assert second.returncode == 0 and "pinned or leased by pending jobs" in second.stderr
    assert cached(tmp_path) == ["org/m0", "org/m1"]  # over the cap, but nothing a job needs was evicted
    assert apr_qa(tmp_path, None, "cache", "gc", cache_policy=p).returncode == 0
    assert cached(tmp_path) == ["org/m0", "org/m1"]
    release(tmp_path, first, "fail", p)  # m0's model is done: the cap may take it now
    assert apr_qa(tmp_path, None, "cache", "gc", cache_policy=p).returncode == 0
    assert cached(tmp_path) == ["org/m1"]
    # a lease left by a run that died protects for lease_hours only
    assert apr_qa(tmp_path, None, "cache", "gc", "--max-size-gb", "0", cache_policy=p).returncode == 0
    assert cached(tmp_path) == ["org/m1"]  # still leased
    assert apr_qa(tmp_path, None, "cache", "gc", "--max-size-gb", "0",
                  cache_policy=dict(p, lease_hours=0)).returncode == 0
    assert cached(tmp_path) == []


def test_two_concurrent_gc_calls_leave_a_consistent_cache(tmp_path, hub):
    p = policy(10 * REVISION, evict_after_certify=False)
    for i in range(5):
        release(tmp_path, fetch(tmp_path, hub, f"org/m{i}", p), "fail", p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(tmp_path / "cache"))
    cmd = [str(APR_QA), "cache", "gc", "--max-size-gb", str(2.5 * REVISION / 1e9)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert cached(tmp_path) == ["org/m3", "org/m4"] and cache_size(tmp_path) <= 2.5 * REVISION
    log = evicted_log(tmp_path)
    assert sorted(e["repo"] for e in log) == ["org/m0", "org/m1", "org/m2"]  # each eviction done and logged once
    state = json.loads((tmp_path / "cache.apr-qa" / "state.json").read_text())
    assert sorted(k.split("@")[0] for k in state["outcomes"]) == ["org/m3", "org/m4"]


def test_retention_by_outcome(tmp_path, hub):
    p = policy(evict_after_certify=False)  # pass 7 d, fail 3 d, blocked 1 d
    for i, outcome in enumerate(["pass", "fail", "blocked"]):
        release(tmp_path, fetch(tmp_path, hub, f"org/m{i}", p), outcome, p)
    assert cached(tmp_path) == ["org/m0", "org/m1", "org/m2"]  # nothing has expired yet
    state_file = tmp_path / "cache.apr-qa" / "state.json"

    def age_outcomes(days: float) -> None:  # the recorded outcome times, as if that many days passed
        state = json.loads(state_file.read_text())
        for rec in state["outcomes"].values():
            rec["at"] = time.time() - days * 86400
        state_file.write_text(json.dumps(state))

    age_outcomes(2)
    assert apr_qa(tmp_path, None, "cache", "gc", "--dry-run", cache_policy=p).stderr.startswith(
        "would evict org/m2@")
    assert cached(tmp_path) == ["org/m0", "org/m1", "org/m2"]  # a dry run deletes nothing
    assert apr_qa(tmp_path, None, "cache", "gc", cache_policy=p).returncode == 0
    assert cached(tmp_path) == ["org/m0", "org/m1"]
    age_outcomes(4)
    assert apr_qa(tmp_path, None, "cache", "gc", cache_policy=p).returncode == 0
    assert cached(tmp_path) == ["org/m0"]
    assert [e["reason"] for e in evicted_log(tmp_path)] == ["retention: blocked, kept 1 d", "retention: fail, kept 3 d"]
    # evict_after_certify: a pass goes as soon as it is recorded (m3 now, and m0 recorded earlier)
    release(tmp_path, fetch(tmp_path, hub, "org/m3", p), "pass", policy())
    assert cached(tmp_path) == []


def test_evicted_revision_keeps_its_manifest_valid_and_is_restored_just_in_time(tmp_path, hub):
    p = policy()
    manifest = fetch(tmp_path, hub, "org/m0", p)
    doc = json.loads(manifest.read_text())
    release(tmp_path, manifest, "pass", p)
    assert cached(tmp_path) == [] and not any(Path(f["path"]).exists() for f in doc["files"])
    check = apr_qa(tmp_path, None, "verify-checksums", str(manifest))
    assert check.returncode == 0 and "evicted from the model cache" in check.stderr
    blocks = report_blocks([doc])  # the report's "Model cache" section
    assert blocks[0] == ("h2", "Model cache") and blocks[-1][0] == "table"
    assert blocks[-1][2][0][1:] == [f"org/m0@{doc['commit'][:12]}", "0.0", "certified (pass): evict_after_certify"]
    offline = apr_qa(tmp_path, None, "cache", "restore", str(manifest), HF_HUB_OFFLINE="1")
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in offline.stderr
    restored = apr_qa(tmp_path, hub, "cache", "restore", str(manifest), cache_policy=p)
    assert restored.returncode == 0, restored.stderr
    assert cached(tmp_path) == ["org/m0"] and all(Path(f["path"]).exists() for f in doc["files"])
    check = apr_qa(tmp_path, None, "verify-checksums", str(manifest))
    assert check.returncode == 0 and "2 files match" in check.stderr
    ls = json.loads(apr_qa(tmp_path, None, "cache", "ls", "--json").stdout)
    assert ls["revisions"][0]["leased_by"] == [str(manifest.resolve())]  # the rerunning job's lease


def test_offline_downloads_evict_nothing(tmp_path, hub):
    p = policy(1.5 * REVISION)
    for i in range(2):
        release(tmp_path, fetch(tmp_path, hub, f"org/m{i}", p), "fail", p)
    assert cached(tmp_path) == ["org/m1"]
    # offline the cache is the only copy: a download from it and the release after it evict nothing
    release(tmp_path, fetch(tmp_path, None, "org/m1", policy(0), HF_HUB_OFFLINE="1"), "pass", policy(0),
            HF_HUB_OFFLINE="1")
    assert cached(tmp_path) == ["org/m1"]


def test_bad_state_is_a_one_line_error(tmp_path):
    (tmp_path / "cache.apr-qa").mkdir()
    (tmp_path / "cache.apr-qa" / "state.json").write_text("{not json")
    proc = apr_qa(tmp_path, None, "cache", "ls")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "state.json" in proc.stderr
    proc = apr_qa(tmp_path, None, "cache", "ls", cache_policy={"max_size": 1})
    assert proc.returncode == 2 and "unknown keys max_size" in proc.stderr
