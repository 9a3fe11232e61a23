"""Encoders: embedding consistency against the reference, and a similarity sanity check.

Pure functions of embedding tensors ([N, hidden], one row per text), testable without a runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..dtypes import QUANT_LEVELS
from ..errors import AprQaError
from . import stats
from .prompts import TextPair

# Minimum cosine(model, reference) per quantization level (gate T5 for encoders; --min-cosine overrides):
# each level's registry entry (dtypes.QUANT_LEVELS); the source holds the reference's own values.
DEFAULT_MIN_COSINE = {"source": 0.99999, **{name: level.encoder_min_cosine for name, level in QUANT_LEVELS.items()}}


def min_cosine(level: str) -> float:
    """Gate T5's minimum for `level`; a level without one is an error, never a silent default."""
    if level not in DEFAULT_MIN_COSINE:
        raise AprQaError(f"no minimum cosine for quantization level {level!r} (known: "
                         f"{', '.join(DEFAULT_MIN_COSINE)}); give one with --min-cosine")
    return DEFAULT_MIN_COSINE[level]


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine similarity of matching rows, in float64."""
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).tolist()


def embedding_consistency(texts: Sequence[str], model: torch.Tensor, reference: torch.Tensor) -> dict:
    cos = cosine_rows(model, reference)
    diff = (model.double() - reference.double()).abs()
    return {"texts": len(texts), "cosine_min": min(cos), "cosine_mean": stats.mean(cos),
            "max_abs_diff": float(diff.max()),
            "worst": {"text": texts[min(range(len(cos)), key=cos.__getitem__)], "cosine": min(cos)}}


def pair_scores(pairs: Sequence[TextPair], embeddings: dict[str, torch.Tensor]) -> dict[str, float]:
    """cosine(a, b) of each pair, by pair id."""
    if not pairs:
        return {}
    a = torch.stack([embeddings[p.a] for p in pairs])
    b = torch.stack([embeddings[p.b] for p in pairs])
    return dict(zip((p.id for p in pairs), cosine_rows(a, b), strict=True))


def similarity_sanity(paraphrase: dict[str, float], unrelated: dict[str, float]) -> dict:
    """Every paraphrase pair must score above every unrelated pair.

    margin = min(paraphrase) - max(unrelated) (> 0 when the check passes); ordered_fraction is the
    share of (paraphrase, unrelated) combinations in the right order.
    """
    if not paraphrase or not unrelated:
        return {"passed": None, "margin": None, "ordered_fraction": None,
                "paraphrase": paraphrase, "unrelated": unrelated}
    ordered = sum(p > u for p in paraphrase.values() for u in unrelated.values())
    margin = min(paraphrase.values()) - max(unrelated.values())
    return {"passed": margin > 0, "margin": margin,
            "ordered_fraction": ordered / (len(paraphrase) * len(unrelated)),
            "min_paraphrase": min(paraphrase.values()), "max_unrelated": max(unrelated.values()),
            "paraphrase": paraphrase, "unrelated": unrelated}
