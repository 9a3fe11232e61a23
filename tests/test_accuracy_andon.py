"""The accuracy-degradation Andon on a real evaluation: a variant whose weights are perturbed in the
test loses exactly the golden prompts whose tokens were touched, so its accuracy drop is known by
construction; 1 of 16 prompts lost (6.25 points) is yellow (T7 warn), 3 of 16 (18.75 points) red
(T8 fail), each with a Five Whys record naming the lost prompts. Plus the band arithmetic, the
per-level logit limits (T9) and the first-token part of I-5, on measured records."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from apr_qa.certify import five_whys
from apr_qa.evaluation import accuracy_andon, gates, protocol
from apr_qa.evaluation.prompts import load_golden
from apr_qa.evaluation.runner import evaluate

N_PROMPTS = 16  # one lost prompt = 6.25 points: inside the yellow band (5, 10]
OPTS = dict(runs=1, max_new_tokens=6, greedy_tokens=6)


def _single_token_prompts(model, n: int) -> list[int]:
    """Token ids that encode back to themselves alone, one per prompt (ordinary text, no specials)."""
    tok = model.tokenizer
    chosen = []
    for t in range(40, 384):
        text = tok.decode([t])
        if text.strip() and text.isprintable() and tok.encode(text) == [t]:
            chosen.append(t)
    return chosen[: 3 * n]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    """A golden set whose expected answers are the reference's own sampled continuations (so the
    reference scores 100 %), and the token of each prompt, chosen so that no continuation of another
    prompt contains it: perturbing a prompt's token then changes that prompt's runs and no other."""
    from apr_qa.runtime import load_model

    root = tmp_path_factory.mktemp("andon")
    opts = protocol.EvalOptions(**OPTS)
    model = load_model(tiny_llama, device="cpu", dtype=torch.float32)
    candidates = _single_token_prompts(model, N_PROMPTS)
    runs = {}
    for t in candidates:
        g = model.generate([model.tokenizer.decode([t])], opts.max_new_tokens, temperature=opts.temperature,
                           top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed, stop_on_eos=True)[0]
        runs[t] = g
    chosen: list[int] = []
    for t in candidates:  # greedy pick: t's continuation avoids chosen tokens, and theirs avoid t
        if t not in runs[t].token_ids and all(t not in runs[c].token_ids and c not in runs[t].token_ids
                                                for c in chosen) and runs[t].text:
            chosen.append(t)
        if len(chosen) == N_PROMPTS:
            break
    assert len(chosen) == N_PROMPTS, "the tiny model's vocabulary gives too few independent prompts"
    prompts = [{"id": f"p{i:02d}", "input": model.tokenizer.decode([t]), "category": "sanity",
                "expected_pattern": r"\A" + re.escape(runs[t].text) + r"\Z"} for i, t in enumerate(chosen)]
    golden_path = root / "golden.yaml"
    golden_path.write_text(yaml.safe_dump({"metadata": {"version": "test"}, "prompts": prompts}))
    return {"root": root, "golden": load_golden(golden_path), "tokens": chosen, "reference": tiny_llama}


def perturbed_variant(src: Path, dst: Path, rows: list[int]) -> Path:
    """The reference with the embedding rows of `rows` replaced by large seeded noise."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    emb = state["model.embed_tokens.weight"].clone()
    gen = torch.Generator().manual_seed(7)
    emb[rows] = 2.0 * torch.randn((len(rows), emb.shape[1]), generator=gen)
    state["model.embed_tokens.weight"] = emb
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def gate(ev, gate_id):
    return next(g for g in ev.gates if g.id == gate_id)


@pytest.mark.parametrize("lost, band", [(0, "green"), (1, "yellow"), (3, "red")])
def test_forced_accuracy_drop(setup, lost, band):
    golden, tokens = setup["golden"], setup["tokens"]
    variant = perturbed_variant(setup["reference"], setup["root"] / f"variant-{lost}", tokens[:lost])
    ev = evaluate(variant, setup["reference"], golden, protocol.EvalOptions(**OPTS))
    andon = ev.sections["accuracy_andon"]
    assert andon["reference"]["value"] == 1.0  # the golden answers are the reference's own runs
    assert sorted(x["id"] for x in andon["lost"]) == [f"p{i:02d}" for i in range(lost)]
    assert andon["degradation_points"] == pytest.approx(100 * lost / N_PROMPTS)
    assert andon["band"] == band
    t7, t8 = gate(ev, "T7"), gate(ev, "T8")
    assert (t7.passed, t8.passed) == {"green": (True, True), "yellow": (False, True), "red": (False, False)}[band]
    assert (t7.level, t8.level) == ("warn", "fail")
    for g in (t7, t8):
        if g.passed:
            assert "five_whys" not in g.details
            continue
        fw = g.details["five_whys"]  # every failure has its chain, the warning included
        assert fw["gate"] == g.id and fw["root_cause"] and fw["countermeasure"]
        assert "lost: p00 1 -> 0" in " ".join(fw["whys"])
    # the report's view of the evaluation file: one Five Whys per failed gate, whatever its level
    dicts = [g.to_dict() for g in ev.gates]
    failed_ids = [g["id"] for g in dicts if not g["passed"]]
    assert [fw["gate"] for fw in five_whys.stage_failures(dicts)] == failed_ids


def test_bands_and_degradation():
    assert accuracy_andon.degradation_points(0.8, 0.8) == 0.0
    assert accuracy_andon.degradation_points(0.5, 0.6) == pytest.approx(-10.0)  # better than the reference
    assert [accuracy_andon.band(p) for p in (0.0, 5.0, 5.01, 10.0, 10.01, None)] == \
        ["green", "green", "yellow", "yellow", "red", "red"]


def _kld(mean: float, same: float, positions: int = 215) -> dict:
    return {"positions": positions, "kld": {"mean": mean, "max": mean * 10, "p99": mean * 5},
            "same_top1": {"rate": same, "count": round(same * positions)}}


@pytest.mark.parametrize("level, mean, same, ok", [
    ("q8_0", 1.46e-3, 0.981, True),    # the measured SmolLM2 q8_0 figures pass with room
    ("q8_0", 0.39, 0.684, False),      # q4_0's figures are far beyond q8_0's limits
    ("q4_0", 0.39, 0.684, True),
    ("f32", 1e-6, 1.0, False),         # f32 must be exact
    ("q4_k", 0.062, 0.70, False),      # KLD fine, same top-1 below the level's 80 %
])
def test_logit_limits(level, mean, same, ok):
    g = gates.gate_t9_logits(_kld(mean, same), level)
    assert g.passed == ok and g.level == "fail"
    if not ok:
        assert g.message and five_whys.analyze(g).root_cause


def test_same_top1_is_judged_by_its_confidence_interval():
    # one flipped near-tie among 17 positions (a tiny model) is no evidence of a rate below 95 %...
    assert gates.gate_t9_logits(_kld(3e-5, 16 / 17, positions=17), "q8_0").passed
    # ...while the same shortfall measured over 215 positions is
    assert not gates.gate_t9_logits(_kld(3e-5, 0.90, positions=215), "q8_0").passed
    # and f32 tolerates no flip at all
    assert not gates.gate_t9_logits(_kld(0.0, 214 / 215), "f32").passed


def test_i5_gates_the_first_token():
    check = {"passed": True, "mismatches": [], "texts": 12}
    assert gates.gate_i5(check, (9, 9), "f16").passed
    assert not gates.gate_i5(check, (8, 9), "f16").passed   # half precision: every prompt
    # quantized: the level's same-top-1 limit (q4_0: 55 %), judged by the 95 % interval's upper end
    assert gates.gate_i5(check, (6, 9), "q4_0").passed      # 67 %
    assert gates.gate_i5(check, (3, 9), "q4_0").passed      # 33 %, but up to 65 % at 9 prompts
    assert not gates.gate_i5(check, (2, 9), "q4_0").passed  # 22 %: up to 54.7 %, below the limit


def test_report_sections_without_a_certification(setup, tmp_path):
    """The report's tier-independent sections from a real evaluation JSON: the Five Whys of every
    failed stage gate (the yellow T7 included) and the Pareto frontier priced per device-hour."""
    from apr_qa.certify import andon_blocks
    from apr_qa.evaluation.report_json import build_report

    golden = setup["golden"]
    opts = protocol.EvalOptions(**OPTS)
    variant = perturbed_variant(setup["reference"], tmp_path / "variant", setup["tokens"][:1])
    rows = []
    for name, model in (("yellow", variant), ("ref", setup["reference"])):
        ev = evaluate(model, setup["reference"], golden, opts)
        doc = build_report(ev, golden, opts, "cpu", "start", "end", 1.0)
        assert doc["cost"]["device_seconds_per_1k_tokens"] > 0 and doc["accuracy_andon"]["band"] in ("green", "yellow")
        rows.append({"model": "tiny", "variant": name, "stages": {"evaluate": {"gates": doc["gates"]}},
                     "_eval": doc, "_size": 1000 + len(rows)})
    blocks = andon_blocks.stage_five_whys(rows)
    items = blocks[2][1]
    heads = [head for head, _ in items]
    assert any(h.startswith("**T7** (warn, tiny/yellow, evaluate)") for h in heads)
    assert all(subs[-1].startswith("root cause: ") for _, subs in items)
    pareto_out = andon_blocks.pareto_blocks(rows, tmp_path, usd_per_device_hour=0.10)
    table = next(b for b in pareto_out if b[0] == "table")
    by_name = {r[0]: r for r in table[2]}
    assert by_name["tiny/ref"][1] == "1.000" and by_name["tiny/yellow"][1] == "0.938"  # 15/16 runs
    assert all(r[4] != "-" for r in table[2])  # priced: a cost per 1k tokens for every variant
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "cost per 1k tokens" in (tmp_path / "pareto.svg").read_text()


def test_five_whys_for_stage_failures_without_details():
    """Gates from an Andon event (a failed command) or an old evidence file: a chain is derived anyway."""
    from apr_qa.certify import andon_blocks

    fws = five_whys.stage_failures([{"id": "C2", "level": "fail", "passed": False, "message": "bad header"},
                                    {"id": "T1", "level": "fail", "passed": True}])
    assert len(fws) == 1 and fws[0]["gate"] == "C2" and "bad header" in fws[0]["whys"][0]
    rows = [{"model": "m", "variant": "q4_0", "stages": {
        "convert": {"colour": "red", "level": "fail", "gates": [], "reason": "exit status 137"}}}]
    (_, _, (_, items)) = andon_blocks.stage_five_whys(rows)
    assert "exit status 137" in items[0][1][0] and items[0][1][1].startswith("root cause: ")
