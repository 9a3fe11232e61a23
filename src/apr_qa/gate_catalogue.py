"""The gate catalogue: every gate the stages and the certification check, in one table.

Each entry says which stage checks it, its level (warn flags only; fail skips the model/variant;
halt stops the line under every failure policy), its threshold, what it measures, which certification gateway
a tripped stage gate fails when the workflow certifies a blocked model (G0 integrity, G1 loads, G2
produces output, G3 no crashes, G4 not garbage) and the MQS category it counts towards.
docs/gates.md is generated from this table (`apr-qa sync-generated`); adding a gate is one entry
here plus the code that checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .layout import STAGES


@dataclass(frozen=True)
class Gate:
    id: str
    stage: str  # download | convert | validate | evaluate | certify
    level: str  # warn | fail | halt (or a rule, for gates whose level depends on the variant)
    threshold: str
    measures: str  # what it checks: validate's gates carry this as their evidence name
    gateway: str | None  # the gateway a tripped stage gate fails (None: the gate is a gateway itself)
    category: str | None  # MQS category (QUAL PERF STAB COMP EDGE REGR); gateways gate the score instead


CERTIFY = "certify"
CATALOGUE_STAGES = (*STAGES, CERTIFY)
LEVELS = ("warn", "fail", "halt")

# fmt: off
GATES: tuple[Gate, ...] = (
    # download: the hub repository and its files
    Gate("D1", "download", "warn", "repository (or its offline cache snapshot) found", "repository exists; "
         "a missing one skips the model", "G1", "STAB"),
    Gate("D2", "download", "warn", "safetensors or gguf weights", "format supported; none skips the model",
         "G1", "STAB"),
    Gate("D3", "download", "fail", "every chosen file fetched (retries with backoff)", "download complete",
         "G1", "STAB"),
    Gate("D4", "download", "halt", "every file's sha256 equals the hub's (and the pins)", "checksums valid; also "
         "re-checked before every stage that reads the files and by the report", "G1", "STAB"),
    Gate("D5", "download", "warn", "total size <= download.max_size_gb", "size reasonable", "G1", "STAB"),
    Gate("D6", "download", "warn", "<= 600 s", "download time (fetch and verify)", None, "STAB"),
    Gate("G6", "download", "warn", "safetensors or gguf (pickle only with allow_pickle)", "format safety: "
         "pickle-only weights skip the model", "G1", "QUAL"),
    # validate: the conversion contract, source against .apr
    Gate("C0", "validate", "fail", "a registered architecture", "architecture supported", "G1", "COMP"),
    Gate("C1", "validate", "fail", "safetensors | gguf | pytorch", "format detected", "G1", "COMP"),
    Gate("C2", "validate", "fail", "the source parses", "source parses", "G1", "COMP"),
    Gate("C3", "validate", "fail", "every source tensor present in the .apr", "all tensors extracted", "G0", "COMP"),
    Gate("C4", "validate", "fail", "> 0 bytes", ".apr written", "G1", "COMP"),
    Gate("C5", "validate", "halt", "the .apr magic bytes", "magic bytes", "G1", "COMP"),
    Gate("C6", "validate", "halt", "source == .apr == metadata parameter count", "parameter count matches source",
         "G0", "COMP"),
    Gate("C7", "validate", "halt", "0 mismatched shapes", "tensor shapes match source", "G0", "COMP"),
    Gate("C8", "validate", "halt", "per-dtype KL, cosine and relative RMSE tolerances (validate.DEFAULT_TOLERANCES), "
         "every tensor against the source", "numerical precision (KL, cosine, relative RMSE)", "G0", "COMP"),
    Gate("V1", "validate", "fail", "opens, every CRC valid", ".apr loads", "G1", "COMP"),
    Gate("V2", "validate", "fail", "0 problems", "metadata schema", "G0", "COMP"),
    Gate("I-2", "validate", "fail", "0 missing, 0 extra names", "tensor-name bijection", "G0", "COMP"),
    Gate("I-3", "validate", "fail", "0 fallbacks; a known quantization level", "no silent dtype fallback",
         "G0", "COMP"),
    Gate("I-4", "validate", "fail", "per-dtype tolerance on each tensor's mean, std, min and max",
         "tensor statistics preserved", "G0", "COMP"),
    # evaluate: the golden prompt set on the .apr, the source as reference
    Gate("T1", "evaluate", "fail", "every run produces output", "inference runs (output generated)", "G2", "QUAL"),
    Gate("T2", "evaluate", "warn", "< the per-prompt timeout", "latency bounded", None, "PERF"),
    Gate("T3", "evaluate", "warn", "< the memory limit", "memory bounded", None, "PERF"),
    Gate("T4", "evaluate", "fail", "> 0.5 (embeddings: paraphrase margin > 0)", "accuracy on the sanity prompts "
         "(embeddings: paraphrases score above unrelated pairs)", "G4", "QUAL"),
    Gate("T5", "evaluate", "warn (encoders); decoders: information, not a gate",
         "encoders: embedding cosine >= the level's minimum; decoders: top-k agreement of the next-token logits "
         "recorded, not gated (a fixed 0.1-logit tolerance fails every healthy quantized level; T9 gates the logits)",
         "behavioural equivalence with the source", "G4", "REGR"),
    Gate("T6", "evaluate", "warn", "<= 5 s median per request", "latency per request (median)", None, "PERF"),
    Gate("T7", "evaluate", "warn", "upper end of the paired 95 % interval of the accuracy degradation (same prompts "
         "and seeds) <= 5 points, for exact match and, on prompts with a reference_answer, token F1: passes only if "
         "both pass, fails if either fails; an interval spanning 5 points is inconclusive (warn)",
         "accuracy degradation against the source (yellow band)", "G4", "REGR"),
    Gate("T8", "evaluate", "fail (inconclusive: warn)", "fails when the lower end of the paired 95 % interval of "
         "the accuracy degradation is above 10 points, for exact match or token F1 (either fails it; it passes only "
         "if both pass); an interval spanning 10 points is inconclusive (warn)",
         "accuracy degradation against the source (red band)", "G4", "REGR"),
    Gate("T9", "evaluate", "fail (inconclusive: warn)", "mean KLD on the golden prompts at most 10 x llama.cpp's "
         "published mean KLD for the level (evaluation.conversion_limits), judged on its 95 % interval clustered by "
         "prompt; same-top-1 with its resolution recorded", "converted correctly (a broken conversion lands orders "
         "of magnitude beyond)", "G4", "REGR"),
    Gate("Q1", "evaluate", "fail (inconclusive: warn)", "next-token accuracy on the corpus >= 99 % of the "
         "reference's (16-bit levels 99.9 %: MLPerf's targets), judged on the ratio's 95 % interval; an interval "
         "spanning the target is inconclusive (warn)", "quality on real text (corpus, docs/corpus.md)", "G4", "QUAL"),
    Gate("O1", "evaluate", "fail", "max |ours - transformers| <= 1e-4 of the value range, per text, at float32 "
         "(decoder logits, encoder last hidden states)", "runtime oracle: our runtime agrees with transformers on the "
         "source weights before any reference is computed from it; a model transformers cannot load is recorded "
         "as not verified", "G2", "REGR"),
    Gate("X1", "evaluate", "warn", "mean KLD <= 0.03 and same top-1 >= 88 % against builtin on the same tokens",
         "stacks agree on identical weights (differential certification, docs/stacks.md); a stack beyond is "
         "flagged", None, "QUAL"),
    Gate("I-1", "evaluate", "fail at f32/source (identical), fail at f16/bf16 (first token), warn when quantized",
         "identical greedy tokens (embeddings: max |difference| 0, else the variant's cosine)",
         "round-trip identity against the source", "G4", "REGR"),
    Gate("I-5", "evaluate", "fail", "identical ids and decoded text on every text; the first generated token "
         "identical (quantized: on at least the level's same-top-1 share of prompts)",
         "tokenizer round trip (model vs reference tokenizer)", "G4", "REGR"),
    # certify: the gateways of the model's certification; any failure zeroes the MQS
    Gate("G0", CERTIFY, "halt", "0 mismatches", "integrity: config matches tensor metadata", None, None),
    Gate("G1", CERTIFY, "fail", "every variant loads", "model loads", None, None),
    Gate("G2", CERTIFY, "fail", "every scenario produces output", "basic inference produces output", None, None),
    Gate("G3", CERTIFY, "halt", "0 crashes", "no crashes", None, None),
    Gate("G4", CERTIFY, "fail", "<= 0.25 of the outputs garbage", "output is not garbage", None, None),
)
# fmt: on

BY_ID: dict[str, Gate] = {g.id: g for g in GATES}
# The gateway of a failure that names no catalogued gate (a stage command that died): a crash.
CRASH_GATEWAY = "G3"
# Gate ids as the commands print them on their one-line gate messages (the Andon reads them).
GATE_ID = re.compile(r"\b(?:" + "|".join(re.escape(g.id) for g in sorted(GATES, key=lambda g: -len(g.id))) + r")\b")


def gate(gate_id: str) -> Gate:
    try:
        return BY_ID[gate_id]
    except KeyError:
        raise KeyError(f"unknown gate {gate_id!r} (docs/gates.md lists them)") from None


def stage_gates(stage: str) -> tuple[Gate, ...]:
    return tuple(g for g in GATES if g.stage == stage)


def gateway_of(gate_id: str) -> str:
    """The gateway a tripped stage gate fails; a failure without a catalogued gate is a crash (G3)."""
    entry = BY_ID.get(gate_id)
    return entry.gateway if entry is not None and entry.gateway else CRASH_GATEWAY


def markdown() -> str:
    """docs/gates.md."""
    lines = [
        "# Gate catalogue",
        "",
        "<!-- Generated from src/apr_qa/gate_catalogue.py by `apr-qa sync-generated`; do not edit. -->",
        "",
        "Every gate the workflow's stages and the model certification check. Levels: **warn** flags only; "
        "**fail** skips the model/variant (its job fails, the rest continue); **halt** stops the line "
        "under every failure policy (results/andon/STOP) until `apr-qa andon reset`. A tripped "
        "stage gate fails the listed certification gateway when the workflow certifies a model whose "
        "variant the gates blocked; a stage command that died without naming a gate counts as a crash "
        f"({CRASH_GATEWAY}). The category is the MQS category the gate's record counts towards.",
    ]
    for stage in CATALOGUE_STAGES:
        gates = stage_gates(stage)
        if not gates:
            continue
        lines += ["", f"## {stage}", "", "| gate | level | threshold | measures | gateway | category |",
                  "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(c) for c in (g.id, g.level, g.threshold, g.measures, g.gateway, g.category))
                  + " |" for g in gates]
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    return (text or "-").replace("|", "\\|")
