"""Corpus-level evaluation, as llama.cpp's `llama-perplexity --kl-divergence` measures a quantization.

The reference (the model's source weights at float32) is run once per model over `n_chunks` windows of
`n_ctx` tokens of a real text (evaluation/corpus_text.py). As llama.cpp does, the first half of each
window is context only and every later position is scored: the logits at position j predict token j+1,
for j from n_ctx/2 to n_ctx-2 (n_ctx/2 - 1 scored tokens per window). The reference file keeps, per
scored position, the reference's `top_k` log-probabilities (ids and values) and its log-probability
of the actual next token: a compact file every variant and stack reads instead of the 1.6 GB of full
logits llama.cpp keeps for a 49k vocabulary.

KL(reference || variant) from the top-k: sum over the reference's top-k of p (log p - log q), plus the
rest of the vocabulary merged into one bucket, p_tail log(p_tail / q_tail). Merging can only lower a KL
divergence (the log-sum inequality), so the figure is a lower bound of the exact one; the file also keeps
the reference's full log-probs at the first window's first EXACT_POSITIONS positions (12 MB for a 49k
vocabulary), and every evaluation measures the gap there and records it.

Statistics and their resolution. Positions in one window share their context, so they are not
independent: every standard error here is computed from the per-window means (a cluster estimate, more
conservative than llama.cpp's per-token one), intervals use Student's t with windows - 1 degrees of freedom
(a handful of windows cannot claim a normal quantile), and the same-top-1 rate's Wilson interval uses the
effective number of positions n / design effect. The interval half-width is each statistic's resolution.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AprQaError, FormatError
from ..fsutil import write_npz
from . import stats
from .corpus_text import Corpus, sentences, token_chunks
from .logit_consistency import topk_kld

FORMAT = "apr-qa-corpus-reference/2"
EXACT_POSITIONS = 64  # first-window positions whose full reference log-probs are kept (the top-k gap)
KLD_PERCENTILES = {"median": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}
DELTA_P_PERCENTILES = {"p1": 1.0, "p5": 5.0, "p10": 10.0, "median": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}


def scored_slice(n_ctx: int) -> slice:
    """Positions whose logits are scored (each predicts the next token): the second half, as llama.cpp."""
    return slice(n_ctx // 2, n_ctx - 1)


def chunks_for(tokens: int, n_ctx: int) -> int:
    """Windows needed for at least `tokens` scored tokens (at least 2, so a standard error exists)."""
    per = n_ctx - 1 - n_ctx // 2
    if per < 1:
        raise AprQaError(f"a window of {n_ctx} tokens scores nothing (at least 4 needed)")
    return max(2, math.ceil(tokens / per))


# -- the reference file ------------------------------------------------------------------------------

@dataclass
class Reference:
    """Decoders: tokens and the reference's log-probs. Encoders (meta kind "encoder"): the corpus
    sentences in `texts` and the reference's embeddings of them in `embeddings`."""
    meta: dict[str, Any]
    tokens: np.ndarray       # int32 [chunks, n_ctx]
    topk_ids: np.ndarray     # int32 [chunks, scored, k]
    topk_logp: np.ndarray    # float32 [chunks, scored, k]
    token_logp: np.ndarray   # float32 [chunks, scored]: log p_ref(actual next token)
    exact_logp: np.ndarray | None = None  # float32 [EXACT_POSITIONS, vocab]: the first window's full log-probs
    texts: tuple[str, ...] = ()
    embeddings: np.ndarray | None = None  # float32 [texts, hidden]

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "decoder")

    @property
    def n_ctx(self) -> int:
        return int(self.tokens.shape[1])


def log_probs(model, chunk: list[int]) -> torch.Tensor:
    scored = scored_slice(len(chunk))  # logits of the scored positions only: the rest are context
    logits = model.logits([chunk], start=scored.start)[0][: scored.stop - scored.start].float()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("non-finite logits on the corpus")
    return torch.log_softmax(logits, dim=-1)


def build_reference(model, corpus: Corpus, *, tokens: int, n_ctx: int, top_k: int,
                    about: dict[str, Any]) -> Reference:
    """Run `model` (the reference) over the corpus and keep what the variants are compared with."""
    limit = getattr(model, "max_positions", None)
    n_ctx = min(n_ctx, limit) if limit else n_ctx
    chunks = token_chunks(corpus, model.tokenizer, n_ctx, chunks_for(tokens, n_ctx))
    ids, values, actual = [], [], []
    exact = None
    for chunk in chunks:
        logp = log_probs(model, chunk)
        exact = logp[:EXACT_POSITIONS].numpy() if exact is None else exact
        top = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)  # sorted: index 0 is the top-1
        nxt = torch.tensor(chunk[scored_slice(n_ctx).start + 1:], dtype=torch.long)
        ids.append(top.indices.to(torch.int32).numpy())
        values.append(top.values.numpy())
        actual.append(logp.gather(1, nxt[:, None])[:, 0].numpy())
    meta = {"format": FORMAT, "kind": "decoder", "corpus": corpus.name, "corpus_sha256": corpus.sha256,
            "n_ctx": n_ctx, "chunks": len(chunks), "top_k": int(ids[0].shape[-1]),
            "scored_per_chunk": int(ids[0].shape[0]), **about}
    return Reference(meta, np.asarray(chunks, dtype=np.int32), np.stack(ids), np.stack(values), np.stack(actual),
                     exact)


def build_encoder_reference(model, corpus: Corpus, *, tokens: int, about: dict[str, Any]) -> Reference:
    """Encoders: the reference's embeddings of the corpus's first sentences (evaluation/corpus_text.py)."""
    limit = getattr(model, "max_positions", None) or 512
    texts = sentences(corpus, model.tokenizer, tokens, limit)
    embeddings = torch.cat([model.embed(texts[i:i + 64]).float().cpu() for i in range(0, len(texts), 64)])
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("non-finite reference embeddings on the corpus")
    meta = {"format": FORMAT, "kind": "encoder", "corpus": corpus.name, "corpus_sha256": corpus.sha256,
            "texts": len(texts), **about}
    empty = np.zeros((0, 4), dtype=np.int32)
    return Reference(meta, empty, np.zeros((0, 1, 1), np.int32), np.zeros((0, 1, 1), np.float32),
                     np.zeros((0, 1), np.float32), texts=tuple(texts), embeddings=embeddings.numpy())


def write_reference(ref: Reference, path: str | Path) -> None:
    arrays: dict[str, Any] = {"meta": np.array(json.dumps(ref.meta, sort_keys=True)), "tokens": ref.tokens,
                              "topk_ids": ref.topk_ids, "topk_logp": ref.topk_logp, "token_logp": ref.token_logp}
    if ref.exact_logp is not None:
        arrays["exact_logp"] = ref.exact_logp
    if ref.kind == "encoder":
        arrays.update(texts=np.array(ref.texts, dtype=np.str_), embeddings=ref.embeddings)
    write_npz(path, arrays)


def read_reference(path: str | Path) -> Reference:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ref = Reference(meta, z["tokens"], z["topk_ids"], z["topk_logp"], z["token_logp"])
            if "exact_logp" in z:
                ref.exact_logp = z["exact_logp"]
            if meta.get("kind") == "encoder":
                ref.texts, ref.embeddings = tuple(str(t) for t in z["texts"]), z["embeddings"]
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"not a corpus reference file: {' '.join(str(exc).split())}", path) from None
    if meta.get("format") != FORMAT:
        raise FormatError(f"corpus reference format {meta.get('format')!r}, expected {FORMAT}", path)
    if ref.kind == "encoder":
        if ref.embeddings is None or ref.embeddings.shape[0] != len(ref.texts):
            raise FormatError("corpus reference texts and embeddings disagree in count", path)
        return ref
    chunks, n_ctx = ref.tokens.shape
    scored = n_ctx - 1 - n_ctx // 2
    if ref.topk_ids.shape[:2] != (chunks, scored) or ref.topk_logp.shape != ref.topk_ids.shape \
            or ref.token_logp.shape != (chunks, scored):
        raise FormatError("corpus reference arrays disagree in shape", path)
    return ref


# -- scoring a variant -------------------------------------------------------------------------------

@dataclass
class Scored:
    """Per scored position [chunks, scored]; what the statistics and the gates are computed from."""
    kld: np.ndarray
    same_top1: np.ndarray       # bool: the variant's top token is the reference's
    nll: np.ndarray             # -log q(actual next token)
    nll_reference: np.ndarray
    delta_p: np.ndarray         # q(actual) - p(actual)
    correct: np.ndarray         # bool: the variant's top token is the actual next token
    correct_reference: np.ndarray
    first_logq: torch.Tensor    # the first window's log-probs, for measuring the top-k approximation


def score(model, ref: Reference) -> Scored:
    """Run `model` (a variant, on any stack with `logits([ids])`) over the reference's exact tokens."""
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and int(ref.topk_ids.max()) >= vocab:
        raise AprQaError(f"the corpus reference has token ids up to {int(ref.topk_ids.max())}; the model's "
                         f"vocabulary has {vocab}")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("kld", "same", "nll", "dp", "ok")}
    first_logq = None
    for c, chunk in enumerate(ref.tokens.tolist()):
        logq = log_probs(model, chunk)
        first_logq = logq if first_logq is None else first_logq
        ids = torch.from_numpy(ref.topk_ids[c])
        nxt = torch.tensor(chunk[scored_slice(ref.n_ctx).start + 1:], dtype=torch.long)
        lq = logq.gather(1, nxt[:, None])[:, 0].double()
        top = logq.argmax(-1)
        cols["kld"].append(topk_kld(ids, torch.from_numpy(ref.topk_logp[c]), logq).numpy())
        cols["same"].append((top == ids[:, 0].long()).numpy())
        cols["nll"].append((-lq).numpy())
        cols["dp"].append((lq.exp() - torch.from_numpy(ref.token_logp[c]).double().exp()).numpy())
        cols["ok"].append((top == nxt).numpy())
    assert first_logq is not None
    actual = ref.tokens[:, scored_slice(ref.n_ctx).start + 1:]
    return Scored(np.stack(cols["kld"]), np.stack(cols["same"]), np.stack(cols["nll"]),
                  -ref.token_logp.astype(np.float64), np.stack(cols["dp"]), np.stack(cols["ok"]),
                  ref.topk_ids[:, :, 0] == actual, first_logq)


def approximation_error(ref: Reference, first_logq: torch.Tensor) -> dict[str, Any]:
    """The top-k KLD against the exact one on the first window's first positions, whose full reference
    log-probs the file keeps, so every result states how far the compact reference is from exact."""
    if ref.exact_logp is None:
        raise FormatError("the corpus reference keeps no exact log-probs to measure its top-k approximation",
                          ref.meta.get("model", "corpus reference"))
    n = ref.exact_logp.shape[0]
    p = torch.from_numpy(ref.exact_logp).double()
    q = first_logq[:n].double()
    exact = (p.exp() * (p - q)).sum(-1).clamp_min(0.0)
    approx = topk_kld(torch.from_numpy(ref.topk_ids[0, :n]), torch.from_numpy(ref.topk_logp[0, :n]), q)
    gap = (exact - approx).abs()
    return {"positions": int(exact.numel()), "kld_exact_mean": float(exact.mean()),
            "kld_top_k_mean": float(approx.mean()), "max_abs_error": float(gap.max()),
            "relative_error_of_mean": float((exact.mean() - approx.mean()).abs() / exact.mean())
            if float(exact.mean()) > 0 else 0.0}


# -- statistics --------------------------------------------------------------------------------------

def cluster_mean(values: np.ndarray) -> tuple[float, float]:
    """Mean of [chunks, positions] values and its standard error from the per-chunk means."""
    per_chunk = values.astype(np.float64).mean(axis=1)
    se = float(per_chunk.std(ddof=1) / math.sqrt(len(per_chunk))) if len(per_chunk) > 1 else math.inf
    return float(per_chunk.mean()), se


def half_width(se: float, windows: int) -> float:
    """95 % interval half-width of a mean over `windows` per-window means (Student's t)."""
    from scipy.stats import t

    return float(t.ppf(0.975, windows - 1) * se) if windows > 1 and math.isfinite(se) else math.inf


def rate_interval(flags: np.ndarray) -> dict[str, Any]:
    """A rate over positions with its 95 % Wilson interval at the effective sample size (Kish: n over
    the design effect, the clustered variance over the independent one)."""
    n = flags.size
    rate, se = cluster_mean(flags)
    iid = math.sqrt(rate * (1 - rate) / n) if 0 < rate < 1 else 0.0
    n_eff = n if iid == 0 or not math.isfinite(se) else n / max(1.0, (se / iid) ** 2)
    low, high = stats.wilson_interval(round(rate * n_eff), max(1, round(n_eff))) or (0.0, 1.0)
    return {"rate": rate, "count": int(flags.sum()), "n": n, "effective_n": n_eff, "ci_low": float(low),
            "ci_high": float(high), "resolution": (float(high) - float(low)) / 2}


def accuracy_ratio(correct: np.ndarray, correct_reference: np.ndarray) -> dict[str, Any]:
    """The variant's next-token accuracy over the reference's on the same positions, with a 95 % interval.

    The two are paired: only the positions where one is right and the other wrong move the ratio. The
    difference of the accuracies gets the Agresti-Min interval for paired proportions (half a pseudo-count
    in each cell of the 2x2 table, so that no disagreement in a small sample is not read as certainty),
    widened by the design effect of the windows and with Student's t over the windows; dividing by the
    reference's accuracy gives the ratio's interval."""
    n, windows = correct.size, correct.shape[0]
    acc, acc_ref = float(correct.mean()), float(correct_reference.mean())
    if acc_ref == 0:
        return {"value": None, "accuracy": acc, "accuracy_reference": acc_ref, "ci_low": None, "ci_high": None}
    gained = int((correct & ~correct_reference).sum())
    lost = int((~correct & correct_reference).sum())
    b, c, n2 = lost + 0.5, gained + 0.5, n + 2
    var_paired = ((b + c) - (c - b) ** 2 / n2) / n2 ** 2
    diff = correct.astype(np.float64) - correct_reference
    _, se_windows = cluster_mean(diff)
    se_positions = float(diff.std() / math.sqrt(n))
    measurable = se_positions > 0 and math.isfinite(se_windows)
    design_effect = max(1.0, (se_windows / se_positions) ** 2) if measurable else 1.0
    half = half_width(math.sqrt(var_paired * design_effect), windows) / acc_ref
    ratio = acc / acc_ref
    return {"value": ratio, "accuracy": acc, "accuracy_reference": acc_ref, "gained": gained, "lost": lost,
            "design_effect": design_effect, "ci_low": max(0.0, ratio - half), "ci_high": ratio + half,
            "resolution": half}


def summarize(s: Scored) -> dict[str, Any]:
    kld = s.kld.astype(np.float64)
    windows = kld.shape[0]
    kld_mean, kld_se = cluster_mean(kld)
    ln_ratio, ln_se = cluster_mean(s.nll - s.nll_reference)  # ln PPL(variant) - ln PPL(reference)
    dp = s.delta_p.astype(np.float64)
    return {
        "tokens_scored": int(kld.size),
        "ppl": math.exp(float(s.nll.mean())),
        "ppl_reference": math.exp(float(s.nll_reference.mean())),
        "ln_ppl_ratio": {"value": ln_ratio, "se": ln_se, "resolution": half_width(ln_se, windows)},
        "kld": {"mean": kld_mean, "se": kld_se, "resolution": half_width(kld_se, windows),
                **{k: float(np.percentile(kld, q)) for k, q in KLD_PERCENTILES.items()}, "max": float(kld.max())},
        "same_top1": rate_interval(s.same_top1),
        "delta_p": {"mean": float(dp.mean()), "rms": float(np.sqrt((dp ** 2).mean())),
                    **{k: float(np.percentile(dp, q)) for k, q in DELTA_P_PERCENTILES.items()}},
        "next_token_accuracy": accuracy_ratio(s.correct, s.correct_reference),
        "kld_histogram": kld_histogram(kld),
    }


def kld_histogram(kld: np.ndarray) -> dict[str, list]:
    """Counts of per-token KLD in log10 bins from 1e-6 to 1e2 (the report plots the distribution)."""
    edges = np.logspace(-6, 2, 33)
    counts, _ = np.histogram(np.clip(kld, edges[0], edges[-1]), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def embedding_agreement(ref: Reference, embeddings: torch.Tensor) -> dict[str, Any]:
    """Encoders: cosine of each corpus sentence's embedding with the reference's (mean, min, percentiles)."""
    assert ref.embeddings is not None
    cos = torch.nn.functional.cosine_similarity(embeddings.double(), torch.from_numpy(ref.embeddings).double(),
                                                dim=-1).numpy()
    se = float(cos.std(ddof=1) / math.sqrt(len(cos))) if len(cos) > 1 else None
    return {"texts": int(cos.size), "cosine": {"mean": float(cos.mean()), "se": se,
                                               "resolution": half_width(se, len(cos)) if se is not None else None,
                                               "min": float(cos.min()),
                                               **{k: float(np.percentile(cos, q)) for k, q in
                                                  (("p10", 10.0), ("p1", 1.0), ("p0_1", 0.1))}}}
