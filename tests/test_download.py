"""The download stage against a real HuggingFace-compatible HTTP server on 127.0.0.1 (hub_mirror),
driven through huggingface_hub itself (no mocks): `apr-qa download` runs as a subprocess so the
HF_* environment is read exactly as in the workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apr_qa.workflow.checksums import git_blob_sha1, sha256
from apr_qa.hub.mirror import HubMirror

APR_QA = Path(sys.executable).parent / "apr-qa"
TOKEN = "hf_test_secret_token_0123456789"


@pytest.fixture
def repo(tmp_path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text('{"model": {}}')
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "README.md").write_text("not fetched")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    return folder


def download(tmp_path, hub: HubMirror | None, repo: str, *args: str, **env: str):
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base.update(HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_DISABLE_TELEMETRY="1", **env)
    if hub is not None:
        base["HF_ENDPOINT"] = hub.url
    manifest = tmp_path / "manifest.json"
    manifest.unlink(missing_ok=True)
    proc = subprocess.run([str(APR_QA), "download", repo, "--manifest", str(manifest), "--backoff", "0.05", *args],
                          env=base, capture_output=True, text=True)
    return proc, (json.loads(manifest.read_text()) if manifest.exists() else None)


def test_success_records_commit_and_verified_files(tmp_path, repo):
    with HubMirror({"org/tiny": repo}, token=TOKEN) as hub:
        proc, m = download(tmp_path, hub, "org/tiny", HF_TOKEN=TOKEN)
        commit = hub.repos["org/tiny"].commit
    assert proc.returncode == 0, proc.stderr
    assert m["status"] == "ok" and m["commit"] == commit and m["format"] == "safetensors"
    assert sorted(f["name"] for f in m["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    weights = next(f for f in m["files"] if f["name"] == "model.safetensors")
    assert weights["lfs"] and weights["sha256"] == sha256(repo / "model.safetensors")
    config = next(f for f in m["files"] if f["name"] == "config.json")
    assert not config["lfs"] and config["git_sha1"] == git_blob_sha1(repo / "config.json")
    assert Path(m["source"]).name == commit  # the snapshot folder of the resolved commit
    assert (tmp_path / "cache/models--org--tiny/refs/main").read_text() == commit
    assert {g["id"]: g["passed"] for g in m["gates"]} == {"D3": True, "D4": True, "D5": True, "D6": True, "G6": True}
    assert m["download_seconds"] > 0
    assert next(g for g in m["gates"] if g["id"] == "D6")["measured"] == m["download_seconds"]
    # the token authenticated the requests but is never printed or written
    everything = proc.stdout + proc.stderr + json.dumps(m)
    assert TOKEN not in everything


def test_slow_download_is_yellow_with_d6(tmp_path, repo):
    with HubMirror({"org/tiny": repo}) as hub:
        proc, m = download(tmp_path, hub, "org/tiny", "--slow-s", "1e-9")
    assert proc.returncode == 0, proc.stderr  # a warning: the model is still downloaded and converted
    d6 = next(g for g in m["gates"] if g["id"] == "D6")
    assert m["status"] == "ok" and not d6["passed"] and d6["level"] == "warn" and d6["threshold"] == "<= 1e-09 s"


def test_missing_token_is_refused_by_the_server(tmp_path, repo):
    with HubMirror({"org/tiny": repo}, token=TOKEN) as hub:
        proc, m = download(tmp_path, hub, "org/tiny")
    assert proc.returncode == 0 and m["status"] == "skipped" and m["gates"][0]["id"] == "D1"


def test_tampered_transfer_halts_with_d4(tmp_path, repo):
    with HubMirror({"org/tiny": repo}) as hub:
        data = bytearray((repo / "model.safetensors").read_bytes())
        data[100] ^= 0x01  # the served bytes no longer match the listing's sha256
        (repo / "model.safetensors").write_bytes(bytes(data))
        proc, m = download(tmp_path, hub, "org/tiny")
    assert proc.returncode == 3 and m is None
    assert "D4 checksum mismatch" in proc.stderr and "model.safetensors" in proc.stderr
    # the failure is recorded as measured, beside the manifest the failed job does not leave
    failed = json.loads((tmp_path / "manifest.failed.json").read_text())
    gates = {g["id"]: g for g in failed["gates"]}
    assert failed["status"] == "failed" and failed["failure"]["gate"] == "D4" and failed["failure"]["level"] == "halt"
    assert gates["D3"]["passed"] and not gates["D4"]["passed"] and gates["D4"]["level"] == "halt"
    (mismatch,) = gates["D4"]["details"]["mismatches"]
    assert mismatch["name"] == "model.safetensors" and mismatch["actual"] == sha256(repo / "model.safetensors")
    assert mismatch["expected"] != mismatch["actual"]
    assert gates["D4"]["measured"] == 2 and gates["D4"]["details"]["verified"] == 3  # the other files matched
    # a successful download removes the stale failure record
    with HubMirror({"org/tiny": repo}) as hub:
        proc, m = download(tmp_path, hub, "org/tiny")
    assert proc.returncode == 0 and m["status"] == "ok" and not (tmp_path / "manifest.failed.json").exists()


def test_missing_repo_skips_with_d1(tmp_path, repo):
    with HubMirror({"org/tiny": repo}) as hub:
        proc, m = download(tmp_path, hub, "org/absent")
    assert proc.returncode == 0
    assert m["status"] == "skipped" and m["gates"][0]["id"] == "D1" and not m["gates"][0]["passed"]
    assert "warning: skipping" in proc.stderr


def test_pickle_only_repo_is_refused_by_g6(tmp_path):
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with HubMirror({"org/pickled": folder}) as hub:
        proc, m = download(tmp_path, hub, "org/pickled")
        assert m["status"] == "skipped" and m["gates"][0]["id"] == "G6"
        proc, m = download(tmp_path, hub, "org/pickled", "--unsafe-allow-pickle")
    assert proc.returncode == 0 and m["status"] == "ok" and m["format"] == "pytorch"


def test_no_weights_skips_with_d2(tmp_path):
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"onnx")
    with HubMirror({"org/onnx": folder}) as hub:
        proc, m = download(tmp_path, hub, "org/onnx")
    assert proc.returncode == 0 and m["status"] == "skipped" and m["gates"][0]["id"] == "D2"


def test_transient_5xx_is_retried(tmp_path, repo):
    with HubMirror({"org/tiny": repo}) as hub:
        hub.fail_next("/api/models/org/tiny", count=2, status=503)
        hub.fail_next("/lfs/", count=1, status=502)
        proc, m = download(tmp_path, hub, "org/tiny")
        listings = [r for r in hub.requests if r.startswith("GET /api/models/org/tiny")]
    assert proc.returncode == 0, proc.stderr
    assert m["status"] == "ok" and len(listings) == 3
    assert proc.stderr.count("retrying") >= 2


def test_persistent_5xx_fails_with_d3(tmp_path, repo):
    with HubMirror({"org/tiny": repo}) as hub:
        hub.fail_next("/api/models/org/tiny", count=100, status=503)
        proc, m = download(tmp_path, hub, "org/tiny", "--retries", "2")
    assert proc.returncode == 1 and m is None and "D3" in proc.stderr
    failed = json.loads((tmp_path / "manifest.failed.json").read_text())
    assert failed["failure"] == {"gate": "D3", "level": "fail", "message": failed["gates"][0]["message"]}
    assert [(g["id"], g["passed"]) for g in failed["gates"]] == [("D3", False)]


def test_offline_uses_populated_cache(tmp_path, repo):
    with HubMirror({"org/tiny": repo}) as hub:
        _, online = download(tmp_path, hub, "org/tiny")
    # server gone, offline mode: the revision and every file come from the cache, still verified
    proc, offline = download(tmp_path, None, "org/tiny", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert offline["offline"] and offline["commit"] == online["commit"]
    assert [f["sha256"] for f in offline["files"]] == [f["sha256"] for f in online["files"]]
    blob = Path(os.path.realpath(next(f["path"] for f in offline["files"] if f["name"] == "model.safetensors")))
    blob.write_bytes(blob.read_bytes()[::-1])  # corrupt the cached blob
    proc, m = download(tmp_path, None, "org/tiny", HF_HUB_OFFLINE="1")
    assert proc.returncode == 3 and m is None and "D4" in proc.stderr


def test_offline_without_cache_skips(tmp_path):
    proc, m = download(tmp_path, None, "org/never-cached", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0 and m["status"] == "skipped" and m["gates"][0]["id"] == "D1"


def test_one_gguf_is_selected_from_many(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    for name in ("m.Q4_K_M.gguf", "m.Q8_0.gguf"):
        (folder / name).write_bytes(name.encode())
    with HubMirror({"org/gguf": folder}) as hub:
        proc, _ = download(tmp_path, hub, "org/gguf")
        assert proc.returncode == 2 and "choose one with `files:`" in proc.stderr
        proc, m = download(tmp_path, hub, "org/gguf", "--files", "*Q4_K_M.gguf")
    assert [f["name"] for f in m["files"]] == ["m.Q4_K_M.gguf"] and m["source"].endswith("m.Q4_K_M.gguf")
