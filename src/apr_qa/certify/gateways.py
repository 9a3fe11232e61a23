"""Gateways G0-G4 as evidence records. Any of them failing zeroes the MQS (mqs.score).

G0 compares the model's config with its tensor table; G1-G4 summarise the scenario records that
scenarios.py produced (details: outcome, stage, category, output, garbage).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from ..evidence import Evidence
from .mqs import GATEWAYS

MAX_GARBAGE_FRACTION = 0.25  # the tool fails G4 when more than a quarter of the outputs are garbage

# Tensor-name patterns (HF layout, [out, in]) of the llama family and BERT.
_EMBED = re.compile(r"(^|\.)(embed_tokens|word_embeddings)\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_Q = re.compile(r"\.(self_attn\.q_proj|attention\.self\.query)\.weight$")
_K = re.compile(r"\.(self_attn\.k_proj|attention\.self\.key)\.weight$")
_UP = re.compile(r"\.(mlp\.up_proj|intermediate\.dense)\.weight$")
_LM_HEAD = re.compile(r"(^|\.)lm_head\.weight$")


@dataclass
class IntegrityCheck:
    field: str
    config: Any
    tensors: Any
    tensor: str
    ok: bool


def integrity_checks(config: dict[str, Any], tensors: Iterable[tuple[str, tuple[int, ...]]]) -> list[IntegrityCheck]:
    """Each config.json dimension that the tensor shapes can confirm, config value vs tensor value."""
    shapes = {name: tuple(shape) for name, shape in tensors}
    checks: list[IntegrityCheck] = []

    def add(field: str, tensor_value: Any, tensor: str) -> None:
        if config.get(field) is not None:
            checks.append(IntegrityCheck(field, config[field], tensor_value, tensor, config[field] == tensor_value))

    def first(pattern: re.Pattern) -> list[str]:
        return sorted(n for n in shapes if pattern.search(n))

    embeds = first(_EMBED)
    if embeds and len(shapes[embeds[0]]) == 2:
        add("vocab_size", shapes[embeds[0]][0], embeds[0])
        add("hidden_size", shapes[embeds[0]][1], embeds[0])
    for name in first(_LM_HEAD)[:1]:
        add("vocab_size", shapes[name][0], name)
    layers = {int(m.group(1)) for n in shapes if (m := _LAYER.search(n))}
    if layers:
        add("num_hidden_layers", len(layers), f"layer indices {min(layers)}..{max(layers)}")
        if layers != set(range(len(layers))):
            checks.append(IntegrityCheck("layer indices", "0..n-1", sorted(layers), "layers", False))
    heads = config.get("num_attention_heads")
    hidden = config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if head_dim:
        kv = config.get("num_key_value_heads") or heads
        for pattern, field, expected in ((_Q, "num_attention_heads", heads), (_K, "num_key_value_heads", kv)):
            for name in first(pattern):
                rows = shapes[name][0]
                implied = rows // head_dim if rows % head_dim == 0 else rows / head_dim
                checks.append(IntegrityCheck(field, expected, implied, name, implied == expected))
    for name in first(_UP):
        add("intermediate_size", shapes[name][0], name)
    return checks


def g0_integrity(path: str | Path) -> Evidence:
    """G0 on a .apr file (metadata hf_config + tensor table) or any source the converter reads."""
    from ..errors import AprQaError

    path = Path(path)
    try:
        if path.suffix == ".apr":
            from ..apr import AprReader

            with AprReader(path) as reader:
                config = reader.metadata.get("hf_config") or {}
                table = [(e.name, e.shape) for e in reader.entries]
        else:
            from ..sources import open_source

            source = open_source(path)
            try:
                config, table = source.config, [(t.name, t.shape) for t in source.tensors()]
            finally:
                source.close()
    except AprQaError as exc:
        return Evidence("G0", GATEWAYS["G0"], False, None, "config matches tensors", "halt", str(exc))
    checks = integrity_checks(config, table)
    bad = [c for c in checks if not c.ok]
    if not checks:
        message = f"{path}: no config dimension could be checked against the tensors (config keys or tensor names unknown)"
    else:
        message = "; ".join(f"{c.field}: config {c.config} vs {c.tensors} from {c.tensor}" for c in bad[:3])
    return Evidence("G0", GATEWAYS["G0"], bool(checks) and not bad, {"checked": len(checks), "mismatched": len(bad)},
                    {"mismatched": 0}, "halt", message if bad or not checks else "",
                    {"path": str(path), "checks": [asdict(c) for c in checks]})


def scenario_gateways(records: list[Evidence]) -> list[Evidence]:
    """G1-G4 from the scenario records (those with details["scenario"])."""
    scen = [r for r in records if "scenario" in r.details and r.details.get("outcome") != "skip"]

    def sid(r: Evidence) -> str:
        return r.details["scenario"]["id"]

    load_failed = [r for r in scen if r.details.get("stage") == "load" and r.details["outcome"] != "pass"]
    variants = {(r.details["scenario"]["variant"], r.details["scenario"]["backend"]) for r in scen}
    bad_variants = {(r.details["scenario"]["variant"], r.details["scenario"]["backend"]) for r in load_failed}
    g1 = Evidence("G1", GATEWAYS["G1"], not bad_variants and bool(variants),
                  f"{len(variants) - len(bad_variants)}/{len(variants)} variants loaded", "all load", "fail",
                  "; ".join(f"{sid(r)}: {r.details.get('reason', '')}" for r in load_failed[:3])
                  or ("no scenario ran" if not variants else ""),
                  {"failed": [sid(r) for r in load_failed]})

    judged = [r for r in scen if r.details.get("category") != "EDGE" and r.details.get("stage") == "generate"]
    silent = [r for r in judged if r.details["outcome"] in ("fail", "timeout") and not r.details.get("output")
              and not r.details.get("values_checked")]
    g2 = Evidence("G2", GATEWAYS["G2"], not silent, f"{len(judged) - len(silent)}/{len(judged)} produced output",
                  "every scenario produces output", "fail",
                  "; ".join(f"{sid(r)}: {r.details.get('reason', '')}" for r in silent[:3]),
                  {"failed": [sid(r) for r in silent]})

    crashes = [r for r in scen if r.details["outcome"] == "crash"]
    g3 = Evidence("G3", GATEWAYS["G3"], not crashes, len(crashes), 0, "halt",
                  "; ".join(f"{sid(r)}: {r.details.get('reason', '')}" for r in crashes[:3]),
                  {"crashes": [{"scenario": sid(r), "returncode": r.details.get("returncode"),
                                "signal": r.details.get("signal"), "stage": r.details.get("stage"),
                                "stderr_tail": r.details.get("stderr_tail", "")} for r in crashes]})

    produced = [r for r in judged if "garbage" in r.details]
    garbage = [r for r in produced if r.details["garbage"]["reasons"]]
    fraction = len(garbage) / len(produced) if produced else 0.0
    g4 = Evidence("G4", GATEWAYS["G4"], fraction <= MAX_GARBAGE_FRACTION, round(fraction, 4), MAX_GARBAGE_FRACTION,
                  "fail", "; ".join(f"{sid(r)}: {', '.join(r.details['garbage']['reasons'])} in "
                                    f"{r.details.get('output', '')[:60]!r}" for r in garbage[:3]),
                  {"garbage": [{"scenario": sid(r), "reasons": r.details["garbage"]["reasons"],
                                "output": r.details.get("output", "")[:200]} for r in garbage],
                   "outputs_checked": len(produced)})
    return [g1, g2, g3, g4]
