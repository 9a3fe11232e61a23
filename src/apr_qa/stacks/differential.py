"""Differential certification: two stacks on identical weights, compared per token (`apr-qa diff-stacks`).

Both evaluations scored the same prompt tokens teacher-forced (every position's logits on the same
token sequence), so their logits are comparable position by position: KL(first || second), same
top-1, and the largest logit difference relative to the first's logit range. A prompt the two stacks
tokenized differently is left out and listed (invariant I-5 of each evaluation says why).

The limit (gate X1, warn: the stack is flagged, as the transformers oracle flags our runtime) is on
the mean KLD and the same-top-1 rate. Two stacks running the same blocks differ by float summation
order and by how they compute a quantized matmul: llama.cpp quantizes the activations to 8 bits
(Q8_0 / Q8_K) before the dot product with q8_0/q4_0/q4_k blocks, our runtime keeps them float32.
Measured on SmolLM2-135M-Instruct, builtin vs llamacpp (llama-cpp-python 0.3.36), the golden-v1
prompts (215 positions), and for scale each stack against the float32 source in our runtime:
  variant  builtin||llamacpp          source||builtin   source||llamacpp
  f32      KLD 5.8e-7, top-1 100 %    0                 5.8e-7     (float summation order only)
  f16      KLD 2.3e-6, top-1 100 %                                 (llama.cpp's f16 activations)
  q8_0     KLD 0.0031, top-1 96.7 %   0.0015            0.0046     (llama.cpp's 8-bit activations)
  q4_0     KLD 0.0040, top-1 96.7 %   0.39              0.40
  q4_k     KLD 0.0062, top-1 93.5 %   0.062             0.066      (181 padded tensors re-encoded as Q8_0
                                                                   by the export: not quite the same weights)
The limit, mean KLD <= 0.03 and same top-1 >= 88 %, is about five times the largest measured KLD and
three standard errors of the top-1 rate below its lowest, and far below what a stack running other
weights gives (tests/test_stacks.py, a perturbed copy of the tiny llama: mean KLD 0.38, top-1 2 %).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any



from ..errors import AprQaError
from ..evaluation import logit_consistency
from ..evidence import Evidence
from .logits_file import read_logits

MAX_MEAN_KLD = 0.03
MIN_SAME_TOP1 = 0.88
GATE_ID = "X1"
GATE_NAME = "stacks agree on identical weights (mean KLD, same top-1)"


def _load_evaluation(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AprQaError(f"not an evaluation JSON: {' '.join(str(exc).split())}", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("stack"), dict):
        raise AprQaError("the evaluation names no stack (written by `apr-qa eval` before stacks existed?)", path)
    return data


def _logits_of(path: Path, data: dict[str, Any]) -> dict | None:
    """The evaluation's per-token logits; None when it has none to give (an encoder, or a stack that
    returns top logits or none), which the comparison records rather than fails on."""
    block = data["stack"].get("logits")
    if not isinstance(block, dict):
        raise AprQaError("the evaluation recorded no per-token logits (run `apr-qa eval --logits FILE`)", path)
    if not block.get("prompts"):
        return None
    return read_logits(_beside(path, block["path"]), block["sha256"])


def compare_stacks(first: Path, second: Path) -> dict[str, Any]:
    """The differential record of two evaluations of the same model file on two stacks."""
    a, b = _load_evaluation(first), _load_evaluation(second)
    if a["model"]["sha256"] != b["model"]["sha256"]:
        raise AprQaError(f"evaluates another model file than {first} (sha256 differs): stacks are compared "
                         "on identical weights only", second)
    skipped = [d["stack"]["not_applicable"] for d in (a, b) if d["stack"].get("not_applicable")]
    la = lb = None
    if not skipped:
        la, lb = _logits_of(first, a), _logits_of(second, b)
        skipped = [f"{d['stack']['name']} has no per-token logits (an encoder, or a stack returning top logits or "
                   "none)" for d, lg in ((a, la), (b, lb)) if lg is None]
    if skipped or la is None or lb is None:  # nothing to compare, no gate
        return {"schema_version": 1, "model": {"path": a["model"]["path"], "sha256": a["model"]["sha256"],
                                               "variant": a.get("variant") or b.get("variant")},
                "stacks": [{"evaluation": str(p), "name": d["stack"]["name"], "kind": d["stack"]["kind"]}
                           for p, d in ((first, a), (second, b))],
                "not_compared": skipped[0], "gates": []}
    compared, left_out = [], []
    ref, mod, tokens = [], [], []
    for pid, (ids_a, logits_a) in la.items():
        if pid not in lb:
            left_out.append({"id": pid, "why": f"not in {second.name}"})
            continue
        ids_b, logits_b = lb[pid]
        if ids_a != ids_b:
            left_out.append({"id": pid, "why": "the stacks tokenized the prompt differently"})
            continue
        if logits_a.shape != logits_b.shape:
            raise AprQaError(f"prompt {pid}: logits {tuple(logits_b.shape)}, {first.name} has "
                             f"{tuple(logits_a.shape)}", second)
        compared.append(pid)
        ref.append(logits_a)
        mod.append(logits_b)
        tokens.append(ids_a)
    if not compared:
        raise AprQaError(f"no prompt with the same tokens in both evaluations ({first} and {second})")
    summary = logit_consistency.kld_summary(logit_consistency.position_stats(ref, mod, tokens))
    rel = max(float((x - y).abs().max() / (x.max() - x.min())) for x, y in zip(ref, mod, strict=True))
    gate = differential_gate(summary, a["stack"]["name"], b["stack"]["name"])
    return {
        "schema_version": 1,
        "model": {"path": a["model"]["path"], "sha256": a["model"]["sha256"], "variant": a.get("variant")},
        "stacks": [_side(first, a), _side(second, b)],
        "direction": f"KL({a['stack']['name']} || {b['stack']['name']}), teacher-forced on the same tokens",
        "prompts_compared": compared,
        "prompts_left_out": left_out,
        "kl_divergence": summary,
        "max_relative_logit_diff": rel,
        "limit": {"max_mean_kld": MAX_MEAN_KLD, "min_same_top1": MIN_SAME_TOP1},
        "gates": [gate.to_dict()],
    }


def _beside(json_path: Path, recorded: str) -> Path:
    """The logits file as recorded, or beside its JSON when the results folder moved."""
    path = Path(recorded)
    return path if path.is_file() else Path(json_path).parent / path.name


def _side(path: Path, data: dict) -> dict[str, Any]:
    s = data["stack"]
    scores = {}
    if (kld := (data.get("logit_consistency") or {}).get("kl_divergence")) is not None:
        scores = {"mean_kld_vs_reference": kld["kld"]["mean"], "same_top1_vs_reference": kld["same_top1"]["rate"]}
    acc = data.get("accuracy") or {}
    throughput = data.get("throughput") or {}
    tps = (throughput.get("decode_tokens_per_s") or {}).get("mean")
    prefill = (throughput.get("prefill_tokens_per_s") or {}).get("mean")
    return {"evaluation": str(path), "name": s["name"], "kind": s["kind"], "fingerprint": s.get("fingerprint"),
            "greedy_accuracy": (acc.get("greedy") or {}).get("value"), "decode_tokens_per_s": tps,
            "prefill_tokens_per_s": prefill, **scores,
            "verdict": (data.get("verdict") or {}).get("worst_failed_level"),
            "build": (s.get("details") or {}).get("build")}


def differential_gate(summary: dict, first: str, second: str) -> Evidence:
    mean, same = summary["kld"]["mean"], summary["same_top1"]["rate"]
    ok = mean <= MAX_MEAN_KLD and same >= MIN_SAME_TOP1
    msg = "" if ok else (f"{second} disagrees with {first} on identical weights: mean KLD {mean:.6f}, "
                         f"same top-1 {100 * same:.2f} %")
    return Evidence(GATE_ID, GATE_NAME, ok, {"mean_kld": mean, "same_top1": same},
                    f"mean KLD <= {MAX_MEAN_KLD} and same top-1 >= {100 * MIN_SAME_TOP1:.0f} %", "warn", msg)


def summary_line(record: dict[str, Any]) -> str:
    names = " vs ".join(s["name"] for s in record["stacks"])
    if "not_compared" in record:
        return f"apr-qa diff-stacks: {names} on {record['model']['path']}: not compared: {record['not_compared']}"
    k = record["kl_divergence"]
    gate = record["gates"][0]
    return (f"apr-qa diff-stacks: {names} on {record['model']['path']}: mean KLD {k['kld']['mean']:.3g} "
            f"(max {k['kld']['max']:.3g}), same top-1 {100 * k['same_top1']['rate']:.2f} % over {k['positions']} "
            f"positions; {GATE_ID} {'pass' if gate['passed'] else 'FLAGGED'}")


