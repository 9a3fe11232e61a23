"""Gate T9, conversion correctness: is the variant's next-token distribution where a correct conversion
of its level lands, or orders of magnitude beyond (a broken quantizer, a transposed projection, a wrong
block scale)?

The limit per level is one order of magnitude above llama.cpp's published mean KL divergence for that
quantization type (`llama-perplexity --kl-divergence` against the full-precision model, Llama-3-8B on
Wikipedia text): Q8_0 0.00136, Q4_K_M 0.031, Q4_0 0.072 nats, and 2.5e-5 between BF16 and FP16. A
correct conversion of a small model can sit several times above an 8B model's figure (small models are
the most sensitive to quantization), which the factor of ten leaves room for; a broken one lands at KLD
near or above 1, far beyond. Levels without a published figure take the figure of the coarser published
type they are at least as fine as (f16 and bf16: BF16's, since bf16 has the fewer mantissa bits; q6_k:
Q4_K_M's; q4_k, whose blocks have finer scales than Q4_0's: Q4_0's). The source and f32 hold the same
values as the reference: any divergence beyond rounding is a defect.

This gate says "converted correctly", not "good enough": the quality verdict on real text is gate Q1
(evaluation/corpus_gates.py), judged against MLPerf's 99 % / 99.9 % of reference accuracy. T9 is judged on
the mean KLD's 95 % interval clustered by prompt (evaluation/stats.cluster_interval): fail when its lower
end is above the limit, pass when its upper end is within it, inconclusive (warn) between.
"""

from __future__ import annotations

from ..dtypes import QUANT_LEVELS

FACTOR = 10.0  # one order of magnitude above the published figure
# llama.cpp's published mean KLD per type (Llama-3-8B vs its full-precision weights, Wikipedia text)
PUBLISHED_KLD = {"bf16": 2.5e-5, "q8_0": 0.00136, "q4_k_m": 0.031, "q4_0": 0.072}
# each level -> the published type whose figure bounds it (its registry entry's t9_anchor)
BOUNDED_BY = {name: level.t9_anchor for name, level in QUANT_LEVELS.items() if name != "f32"}
if unknown := {a for a in BOUNDED_BY.values() if a not in PUBLISHED_KLD}:
    raise ImportError(f"quantization levels anchored on types without a published KLD: {sorted(unknown)}")
IDENTICAL = 1e-9  # source and f32: the reference's own values, float rounding only


def max_mean_kld(level: str) -> float | None:
    """T9's limit for `level`, None for a level without one (the gate then fails and says so)."""
    if level in ("source", "f32"):
        return IDENTICAL
    anchor = BOUNDED_BY.get(level)
    return FACTOR * PUBLISHED_KLD[anchor] if anchor else None


def basis(level: str) -> str:
    """Where the level's limit comes from, in words (the evidence's details)."""
    if level in ("source", "f32"):
        return "identical values: float rounding only"
    anchor = BOUNDED_BY.get(level)
    if anchor is None:
        return "no published figure bounds this level"
    return f"{FACTOR:g} x llama.cpp's published mean KLD of {anchor.upper()} ({PUBLISHED_KLD[anchor]:g} nats)"
