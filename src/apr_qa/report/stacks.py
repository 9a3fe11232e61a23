"""The report's differential section: each stack's scores side by side, and its divergence from builtin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .render import number as _num
from ..stacks.differential import GATE_ID, MAX_MEAN_KLD, MIN_SAME_TOP1


def read_differentials(results: Path, models: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """Every differential record under `results` (one per model, variant and stack compared with builtin)."""
    import json

    from ..layout import path

    out = []
    for model in models:
        for variant in variants:
            folder = path(results, "differential", model=model, variant=variant, stack="-").parent
            for file in sorted(folder.glob("*.json")):
                try:
                    out.append({**json.loads(file.read_text()), "model_id": model})  # the workflow's name
                except (OSError, ValueError):
                    continue  # a record being written, or damaged: the rule that writes it fails on its own
    return out


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def differential_blocks(records: list[dict[str, Any]]) -> list[tuple]:
    """Blocks (apr_qa.report.render) from differential records (`apr-qa diff-stacks` output); [] when none."""
    if not records:
        return []
    rows = []
    for r in sorted(records, key=lambda r: (r["model"]["path"], r["model"].get("variant") or "",
                                            r["stacks"][1]["name"])):
        first, second = r["stacks"]
        model = r.get("model_id") or Path(r["model"]["path"]).name
        if "not_compared" in r:
            rows.append([model, r["model"].get("variant") or "-", second["name"], *["-"] * 7,
                         f"not compared: {r['not_compared']}"])
            continue
        k, gate = r["kl_divergence"], r["gates"][0]
        for side in (first, second):
            rows.append([model, r["model"].get("variant") or "-", side["name"], _pct(side.get("greedy_accuracy")),
                         _num(side.get("prefill_tokens_per_s"), ".0f"), _num(side.get("decode_tokens_per_s"), ".1f"),
                         _num(side.get("mean_kld_vs_reference")),
                         _pct(side.get("same_top1_vs_reference")),
                         "-" if side is first else _num(k["kld"]["mean"]),
                         "-" if side is first else _pct(k["same_top1"]["rate"]),
                         "-" if side is first else ("pass" if gate["passed"] else f"FLAGGED ({GATE_ID})")])
    builds = sorted({(side["name"], side["build"]) for r in records for side in r["stacks"] if side.get("build")})
    return [("h2", "Stacks (differential certification)"),
            ("p", "Each variant on every configured stack, scored against the same float32 reference, and each "
                  "stack's per-token logits against builtin's on identical weights and tokens (KL(builtin || "
                  f"stack), same top-1). Gate {GATE_ID} (warn) flags a stack beyond mean KLD {MAX_MEAN_KLD} or "
                  f"same top-1 {100 * MIN_SAME_TOP1:.0f} % (docs/stacks.md: the calibration). With a tier, each "
                  "stack's own certification (gateways, MQS, status) is in the Certification table, beside "
                  "builtin's."),
            ("table", ["model", "variant", "stack", "greedy accuracy", "prefill tok/s", "decode tok/s",
                       "KLD vs reference",
                       "top-1 vs reference", "KLD vs builtin", "top-1 vs builtin", GATE_ID], rows),
            *[("p", f"Build of {name} (the CPU features it was compiled for and uses, as it reports them): "
                    f"`{build}`") for name, build in builds]]

