"""`apr-qa oracle`: our runtime vs transformers; it must pass on real weights and fail on a broken runtime."""

from __future__ import annotations

import json

import pytest

from apr_qa.cli import main

ROOT_PROMPTS = "config/prompts/golden-v1.yaml"


def oracle(source, tmp_path):
    out = tmp_path / "oracle.json"
    code = main(["oracle", str(source), "--prompts", ROOT_PROMPTS, "--json", str(out)])
    return code, json.loads(out.read_text())


def test_tiny_llama_matches(tiny_llama, tmp_path):
    code, record = oracle(tiny_llama, tmp_path)
    assert code == 0 and record["passed"] and record["kind"] == "decoder"
    assert record["max_relative_diff"] <= 1e-4 and len(record["per_text"]) == 9


def test_tiny_bert_matches(tiny_bert, tmp_path):
    code, record = oracle(tiny_bert, tmp_path)
    assert code == 0 and record["passed"] and record["compared"] == "last hidden state"
    assert record["skipped_texts"]  # the tiny BERT has 64 positions; longer prompts are listed, not cut


class _SkewedNorm:
    """torch.nn.functional as the runtime sees it, except RMSNorm is off by 1 % (a real-looking bug)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def rms_norm(self, *args, **kwargs):
        return self._real.rms_norm(*args, **kwargs) * 1.01


def skew_rms_norm(monkeypatch) -> None:
    """Only our runtime's RMSNorm changes: torch's (through the norms module's view of F) and the C one."""
    import apr_qa.runtime.norms as norms

    monkeypatch.setattr(norms, "F", _SkewedNorm(norms.F))
    fast = norms.rms_norm
    monkeypatch.setattr(norms, "rms_norm", lambda *args: None if (y := fast(*args)) is None else y * 1.01)


def test_a_wrong_runtime_fails_gate_o1(tiny_llama, tmp_path, monkeypatch, capsys):
    skew_rms_norm(monkeypatch)
    code, record = oracle(tiny_llama, tmp_path)
    assert code == 1 and record["passed"] is False and "DISAGREES" in record["verdict"]
    err = capsys.readouterr().err
    assert "gate O1 failed" in err and "expected <= 0.0001" in err  # which gate, on what, expected vs actual
    # the record survives the failed job's removed output, for the report
    assert json.loads((tmp_path / "oracle.failed.json").read_text())["passed"] is False


def test_a_model_transformers_cannot_load_is_not_verified(tiny_llama, tmp_path):
    """Our runtime reads the architecture; transformers needs a model_type it knows: not a failure of our
    runtime, but no verification either, and the record says why."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "apr_qa_unknown_type"}))
    code, record = oracle(model, tmp_path)
    assert code == 0 and record["status"] == "unsupported" and record["passed"] is None
    assert "cannot load" in record["reason"] and "not verified" in record["verdict"]


@pytest.mark.real_model
def test_smollm2_gguf_matches(smollm2_gguf, tmp_path):
    code, record = oracle(smollm2_gguf, tmp_path)
    assert code == 0, record


def test_report_shows_a_disagreeing_runtime(tiny_llama, tmp_path, monkeypatch):
    results = tmp_path / "results"
    (results / "oracle").mkdir(parents=True)
    good_json = results / "oracle/good.json"
    assert main(["oracle", str(tiny_llama), "--prompts", ROOT_PROMPTS, "--json", str(good_json)]) == 0
    skew_rms_norm(monkeypatch)
    assert main(["oracle", str(tiny_llama), "--prompts", ROOT_PROMPTS,
                 "--json", str(results / "oracle/bad.json")]) == 1  # gate O1 fails the job
    (results / "oracle/bad.json").unlink()  # as Snakemake removes a failed job's output
    out = tmp_path / "report.md"
    main(["report", "--results", str(results), "--models", "good,bad", "--variants", "f16", "--out", str(out)])
    text = out.read_text()
    section = text[text.index("## Runtime oracle"):]
    good = next(line for line in section.splitlines() if line.startswith("| good"))
    bad = next(line for line in section.splitlines() if line.startswith("| bad"))
    assert "pass" in good and "RED: runtime disagrees" in bad and "DISAGREES" in bad
