"""Every model of config/seed-models.yaml (the architecture matrix a user certifies with hub access)
through the real workflow, offline: a tiny random model of each entry's architecture is served under
the entry's repository name, then Snakemake downloads, converts, validates, evaluates and certifies
all ten with the smoke tier. Random weights answer garbage, so G4 blocks the certifications; what
this proves is that every architecture of the matrix plans, converts, passes its conversion gates,
loads and runs, and gets a certification."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import tiny_encoders
import tiny_models
import tiny_phi
from test_workflow_snakemake import BIN, PROMPTS, ROOT, _env
from workflow_ws import TEST_CORPUS

pytestmark = pytest.mark.slow
SEED_CONFIG = ROOT / "config/seed-models.yaml"
ENCODER_PAIRS = """\
embedding:
  paraphrase_pairs: [{id: same, a: "hello world", b: "hello world"}]
  unrelated_pairs: [{id: other, a: "hello world", b: "one two three"}]
"""


def _seed_models() -> list[dict]:
    return yaml.safe_load(SEED_CONFIG.read_text())["models"]


def _tiny_repo(entry: dict, folder: Path):
    """A tiny model of the entry's architecture: a HF folder, or (GGUF entries) a list of one GGUF
    named to match the entry's `files` pattern (its tensors are Q8_0: K-quants need rows of 256)."""
    builders = {
        "distilbert": tiny_encoders.make_tiny_distilbert, "albert": tiny_encoders.make_tiny_albert,
        "mobilebert": lambda p: tiny_encoders.make_tiny_mobilebert(p, masked_lm=True),
        "phi": tiny_phi.make_tiny_phi, "tinyllama": tiny_models.make_tiny_llama,
        "stablelm": tiny_phi.make_tiny_stablelm,
    }
    kind = next(k for k in builders if entry["id"].startswith(k))
    hf_dir = tiny_models.once(folder / kind, builders[kind])
    if entry["format"] != "gguf":
        return hf_dir
    writer = {"phi": tiny_phi.make_tiny_phi_gguf, "tinyllama": tiny_models.make_tiny_gguf}[kind]
    name = entry["files"][0].replace("*", f"tiny-{entry['id']}")
    return [writer(hf_dir, folder / name, qtype="Q8_0")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from apr_qa.hub.mirror import HubMirror

    root = tmp_path_factory.mktemp("seed")
    repos = {entry["repo"]: _tiny_repo(entry, root / "tiny") for entry in _seed_models()}
    with HubMirror(repos) as hub:
        env = dict(_env(root), HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(root / "cache"))
        for entry in _seed_models():
            args = ["download", entry["repo"], "--manifest", str(root / "m.json")]
            args += [a for pattern in entry.get("files", []) for a in ("--files", pattern)]
            proc = subprocess.run([str(BIN / "apr-qa"), *args], env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
    ws = root / "ws"
    for name in ("Snakefile", "rules", "envs", "profiles", "src"):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).symlink_to(ROOT / name)
    (ws / "config/prompts").mkdir(parents=True)
    shutil.copy(ROOT / "config/schema.yaml", ws / "config/schema.yaml")
    shutil.copytree(ROOT / "config/playbooks", ws / "config/playbooks")
    # random weights rank no real paraphrase: the encoders' sanity pair is a text and itself
    (ws / "config/prompts/test.yaml").write_text(PROMPTS % "(?s).*" + ENCODER_PAIRS)
    # the seed file as a user runs it, pointed at the local cache and cut to a fast evaluation
    cfg = yaml.safe_load(SEED_CONFIG.read_text())
    cfg.update({"tier": "smoke", "failure_policy": "collect-all", "checksum_cache": "results/.checksums",
                "hub": {"cache_dir": str(root / "cache"), "offline": True, "endpoint": None},
                "oracle": False, "variants": ["q8_0"],
                "validation": {"tolerances": None},
                "corpus": TEST_CORPUS,
                "evaluation": {"prompts": "config/prompts/test.yaml", "device": "cpu", "threads": 1,
                               "extra_args": "--max-new-tokens 2"}})
    (ws / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    return ws


def test_every_seed_model_plans():
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "2", "--configfile", str(SEED_CONFIG)],
                          cwd=ROOT, env=_env(ROOT), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = proc.stdout + proc.stderr
    for entry in _seed_models():
        assert f"results/download/{entry['id']}/manifest.json" in planned


def test_every_seed_architecture_certifies(workspace):
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "results/report.md"], cwd=workspace,
                          env=dict(_env(workspace), OMP_WAIT_POLICY="PASSIVE"), capture_output=True, text=True)
    assert (workspace / "results/report.md").exists(), proc.stderr[-6000:]
    for entry in _seed_models():
        evidence = workspace / f"results/certify/{entry['id']}/evidence.json"
        assert evidence.exists(), f"{entry['id']}: no certification\n{proc.stderr[-4000:]}"
        data = json.loads(evidence.read_text())
        assert "blocked" not in data, f"{entry['id']}: {data['blocked']}"
        gates = {g["id"]: g for g in data["gates"]}
        # architecture known, converted within tolerance, evaluated, loads, never crashes
        for gate in ("C0", "C8", "T1", "G0", "G1", "G3"):
            assert gates[gate]["passed"], f"{entry['id']} {gate}: {gates[gate]['message']}"
