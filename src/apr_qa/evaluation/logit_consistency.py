"""Behavioural equivalence of a model and its reference, computed from logits.

Three views, each a pure function of tensors so it can be tested without a runtime:
- top-k agreement on the next-token logits: per prompt, half the share of the reference's top-k
  tokens that are also in the model's top-k, plus half the share whose logits differ by <= a tolerance;
- llama.cpp `--kl-divergence` statistics over every position (KLD, same top-1, delta-p, PPL);
- invariant I-1: greedy generations compared token by token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import torch

from . import stats


@dataclass(frozen=True)
class AgreementConfig:
    """k = 10, logits within 0.1, and 90 % both per prompt and across prompts."""

    top_k: int = 10
    logit_tolerance: float = 0.1
    min_agreement: float = 0.9


def top_k(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k largest (token, logit) pairs, descending; ties keep index order like Rust's stable sort."""
    values, order = torch.sort(logits.float(), descending=True, stable=True)
    return [(int(i), float(v)) for i, v in zip(order[:k].tolist(), values[:k].tolist(), strict=True)]


def top_k_agreement(orig: Sequence[tuple[int, float]], conv: Sequence[tuple[int, float]],
                    k: int, tolerance: float) -> float:
    """0.5 * |token overlap| / k + 0.5 * |shared tokens whose logits differ <= tolerance| / k."""
    orig_tokens = {idx for idx, _ in orig}
    conv_values: dict[int, float] = {}
    for idx, val in conv:
        conv_values.setdefault(idx, val)  # Rust's `find` takes the first match
    overlap = len(orig_tokens & conv_values.keys())
    logit_agreements = sum(1 for idx, val in orig
                           if idx in conv_values and abs(val - conv_values[idx]) <= tolerance)
    return 0.5 * overlap / k + 0.5 * logit_agreements / k


def top_k_consistency(prompt_ids: Sequence[str], reference_next: Sequence[torch.Tensor | list[tuple[int, float]]],
                      model_next: Sequence[torch.Tensor], config: AgreementConfig = AgreementConfig()) -> dict:
    """A prompt agrees when its top-k agreement score >= min_agreement; pass when the share of
    agreeing prompts >= min_agreement. Inputs are each prompt's last-position logits [vocab]; the
    reference's may be its top (token, logit) pairs already, descending (the golden reference file)."""
    per_prompt: list[dict[str, Any]] = []
    divergent: list[dict[str, Any]] = []
    for pid, ref, mod in zip(prompt_ids, reference_next, model_next, strict=True):
        if isinstance(ref, torch.Tensor):
            ref_top = top_k(ref, config.top_k)
        elif len(ref) >= config.top_k:
            ref_top = [(int(i), float(v)) for i, v in ref[:config.top_k]]
        else:
            raise ValueError(f"the reference keeps {len(ref)} top logits, fewer than k = {config.top_k}")
        mod_top = top_k(mod, config.top_k)
        score = top_k_agreement(ref_top, mod_top, config.top_k, config.logit_tolerance)
        per_prompt.append({"id": pid, "agreement": score})
        if score < config.min_agreement:
            divergent.append({"id": pid, "agreement": score,
                              "reference_top_k": [list(t) for t in ref_top],
                              "model_top_k": [list(t) for t in mod_top]})
    agreeing = len(per_prompt) - len(divergent)
    rate = agreeing / len(per_prompt) if per_prompt else 0.0
    return {
        "method": "top-k agreement on the next-token logits",
        "top_k": config.top_k,
        "logit_tolerance": config.logit_tolerance,
        "min_agreement": config.min_agreement,
        "agreement_rate": rate,
        "mean_agreement": stats.mean([p["agreement"] for p in per_prompt]) if per_prompt else None,
        "total_prompts": len(per_prompt),
        "divergent_count": len(divergent),
        "passed": bool(per_prompt) and rate >= config.min_agreement,
        "per_prompt": per_prompt,
        "divergent_samples": divergent,
    }


@dataclass
class PositionStats:
    """Per-position values over all prompts, before summarizing."""

    kld: list[float]
    same_top: list[bool]
    delta_p: list[float]         # p_model(next) - p_reference(next), positions with a next token
    nll_model: list[float]
    nll_reference: list[float]
    sizes: list[int] = field(default_factory=list)  # positions per sequence (kld, same_top), in order


def position_stats(reference: Sequence[torch.Tensor], model: Sequence[torch.Tensor],
                   token_ids: Sequence[Sequence[int]]) -> PositionStats:
    """KL(reference || model) at every position, top-1 agreement, and next-token probabilities.

    `reference[i]`, `model[i]` are [T_i, vocab] logits for the token sequence `token_ids[i]`.
    Computed in float64 so that identical logits give exactly zero.
    """
    out = PositionStats([], [], [], [], [])
    for ref, mod, ids in zip(reference, model, token_ids, strict=True):
        if ref.shape != mod.shape or ref.shape[0] != len(ids):
            raise ValueError(f"logit shapes differ: reference {tuple(ref.shape)}, model "
                             f"{tuple(mod.shape)}, {len(ids)} tokens")
        lp_ref = torch.log_softmax(ref.double(), dim=-1)
        lp_mod = torch.log_softmax(mod.double(), dim=-1)
        out.kld += (lp_ref.exp() * (lp_ref - lp_mod)).sum(-1).tolist()
        out.sizes.append(len(ids))
        out.same_top += (ref.argmax(-1) == mod.argmax(-1)).tolist()
        if len(ids) > 1:
            nxt = torch.tensor(list(ids[1:]), dtype=torch.long).unsqueeze(-1)
            ref_lp = lp_ref[:-1].gather(-1, nxt).squeeze(-1)
            mod_lp = lp_mod[:-1].gather(-1, nxt).squeeze(-1)
            out.delta_p += (mod_lp.exp() - ref_lp.exp()).tolist()
            out.nll_reference += (-ref_lp).tolist()
            out.nll_model += (-mod_lp).tolist()
    return out


def topk_kld(ref_ids: torch.Tensor, ref_logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per position KL(reference || model) from the reference's top-k log-probs (ids, values) and the
    model's full log-probs: the top-k terms plus the rest of the vocabulary merged into one tail bucket,
    p_tail log(p_tail / q_tail). Merging can only lower a KL divergence (the log-sum inequality), so
    this is a lower bound of the exact value; with k covering nearly all the mass it is close to it."""
    p = ref_logp.double().exp()
    q_top = logq.gather(-1, ref_ids.long()).double()
    head = (p * (ref_logp.double() - q_top)).sum(-1)
    p_tail = (1.0 - p.sum(-1)).clamp_min(0.0)
    q_tail = (1.0 - q_top.exp().sum(-1)).clamp_min(1e-300)
    tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-300).log() - q_tail.log()), 0.0)
    return (head + tail).clamp_min(0.0)


def position_stats_topk(ref_ids: Sequence[torch.Tensor], ref_logp: Sequence[torch.Tensor],
                        ref_next_logp: Sequence[torch.Tensor], model: Sequence[torch.Tensor],
                        token_ids: Sequence[Sequence[int]]) -> PositionStats:
    """position_stats against a compact reference: per sequence its top-k log-probs [T, k] (index 0 the
    top-1) and the log-prob of each actual next token [T - 1]; the KLD is topk_kld's lower bound."""
    out = PositionStats([], [], [], [], [])
    for ids_k, lp_k, ref_lp, mod, ids in zip(ref_ids, ref_logp, ref_next_logp, model, token_ids, strict=True):
        if mod.shape[0] != len(ids) or ids_k.shape[0] != len(ids):
            raise ValueError(f"logit shapes differ: reference {tuple(ids_k.shape)} top-k, model "
                             f"{tuple(mod.shape)}, {len(ids)} tokens")
        # float32 log-softmax as the reference's was computed (golden_reference.build), then float64:
        # identical logits give exactly zero
        lp_mod = torch.log_softmax(mod.float(), dim=-1).double()
        out.kld += topk_kld(ids_k, lp_k, lp_mod).tolist()
        out.sizes.append(len(ids))
        out.same_top += (lp_mod.argmax(-1) == ids_k[:, 0].long()).tolist()
        if len(ids) > 1:
            nxt = torch.tensor(list(ids[1:]), dtype=torch.long).unsqueeze(-1)
            mod_lp = lp_mod[:-1].gather(-1, nxt).squeeze(-1)
            ref_lp = ref_lp.double()
            out.delta_p += (mod_lp.exp() - ref_lp.exp()).tolist()
            out.nll_reference += (-ref_lp).tolist()
            out.nll_model += (-mod_lp).tolist()
    return out


def _sequence_means(values: list[float], sizes: list[int]) -> list[float]:
    out, start = [], 0
    for size in sizes:
        if size:
            out.append(math.fsum(values[start:start + size]) / size)
        start += size
    return out


def kld_summary(ps: PositionStats) -> dict:
    """The statistics llama-perplexity --kl-divergence prints, from per-position values."""
    n = len(ps.kld)
    if n == 0:
        raise ValueError("no positions to compare")
    same = sum(ps.same_top) / n
    clustered = stats.cluster_interval(ps.kld, ps.sizes) if ps.sizes else None
    typical = stats.geometric_interval(_sequence_means(ps.kld, ps.sizes)) if ps.sizes else None
    result: dict[str, Any] = {
        "positions": n,
        "sequences": len(ps.sizes) or None,
        "kld": {"mean": stats.mean(ps.kld), "se": stats.standard_error(ps.kld),
                # the interval a gate judges: clustered by sequence (positions of one prompt are not independent)
                "mean_ci95": [clustered[2], clustered[3]] if clustered else None,
                "se_clustered": clustered[1] if clustered else None,
                # the typical sequence's mean KLD (geometric mean over sequences), the bound a fail is judged on
                "sequence_geometric_ci95": list(typical) if typical else None,
                "max": max(ps.kld), "min": min(ps.kld),
                **stats.percentiles(ps.kld, stats.KLD_PERCENTILES)},
        "same_top1": {"rate": same, "se": stats.binomial_se(same, n), "count": sum(ps.same_top)},
        "delta_p": None,
        "perplexity": None,
    }
    if ps.delta_p:
        sq = [d * d for d in ps.delta_p]
        rms = math.sqrt(stats.mean(sq))
        result["delta_p"] = {
            "scored_tokens": len(ps.delta_p),
            "mean": stats.mean(ps.delta_p), "se": stats.standard_error(ps.delta_p),
            "rms": rms,
            # llama.cpp: the uncertainty of mean(dp^2), propagated through the square root
            "rms_se": 0.5 * stats.standard_error(sq) / rms if rms > 0 else 0.0,
            "max": max(ps.delta_p), "min": min(ps.delta_p),
            **stats.percentiles(ps.delta_p, stats.DELTA_P_PERCENTILES),
        }
        ln_ratio = [m - r for m, r in zip(ps.nll_model, ps.nll_reference, strict=True)]
        mean_ln_ratio = stats.mean(ln_ratio)
        result["perplexity"] = {
            "model": math.exp(stats.mean(ps.nll_model)),
            "reference": math.exp(stats.mean(ps.nll_reference)),
            "ratio": math.exp(mean_ln_ratio),
            "ln_ratio_mean": mean_ln_ratio,
            "ln_ratio_se": stats.standard_error(ln_ratio),
            "ln_ppl_correlation": stats.pearson(ps.nll_model, ps.nll_reference),
        }
    return result


def greedy_identity(model_ids: Sequence[int], reference_ids: Sequence[int]) -> dict:
    """I-1: inference(convert(m)) == inference(m), compared on greedy token ids."""
    model_ids, reference_ids = list(model_ids), list(reference_ids)
    first = next((i for i, (a, b) in enumerate(zip(model_ids, reference_ids, strict=False)) if a != b), None)
    if first is None and len(model_ids) != len(reference_ids):
        first = min(len(model_ids), len(reference_ids))
    return {"identical": first is None, "first_divergence": first,
            "first_token_identical": first != 0 and bool(model_ids) and bool(reference_ids),
            "model_tokens": len(model_ids), "reference_tokens": len(reference_ids)}
