"""The golden reference: what the model's source weights at float32 do on the golden prompts, computed
once per model (`apr-qa golden-reference`) and read by every variant's and every stack's evaluation.

Decoders: the sampled runs with their seeds (paired with the variant's for the accuracy Andon), one
greedy generation per prompt (invariant I-1, greedy accuracy), the tokenizer probe (I-5), and,
teacher-forced on each prompt's tokens, the reference's top-k log-probabilities per position plus the
log-probability of the actual next token (gate T9's KLD, same top-1, delta-p) and its raw top logits
at the last position (the top-k agreement). A variant is scored on the reference's own token ids, so
every variant and stack is compared on exactly the same tokens. Keeping the top `TOP_K` log-probs
instead of the full vocabulary makes the KLD a lower bound of the exact one (the log-sum inequality,
evaluation/corpus.py); the corpus evaluation measures that gap, about 5 % of the mean at k = 256.

Encoders: the reference's embedding of every golden text and pair text, and the tokenizer probe.

A greedy stack (stacks/adapter.py) decodes deterministically, so the reference's runs for it are one
greedy generation per prompt repeated: greedy decoding of the same tokens gives the same tokens every time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AprQaError, FormatError
from ..fsutil import write_npz
from . import protocol, tokenizer_check
from .prompts import GoldenSet

FORMAT = "apr-qa-golden-reference/1"
TOP_K = 256          # log-probs kept per teacher-forced position
LAST_TOP = 64        # raw logits kept at each prompt's last position (top-k agreement, k <= this)
# the options that make the reference's sampled runs pair with a variant's, run for run
RUN_OPTIONS = ("runs", "seed", "max_new_tokens", "temperature", "top_k", "top_p", "timeout_s", "greedy_tokens")


@dataclass
class Greedy:
    """One greedy generation (the fields the comparisons read)."""
    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int


@dataclass
class GoldenReference:
    meta: dict[str, Any]                       # format, kind, prompts_sha256, options, model (describe_weights)
    tokenizer: list[dict]                      # tokenizer_check.probe of the reference
    runs: dict[str, Any] | None = None         # decoders: protocol.run_generation's "records" of the reference
    greedy: list[Greedy] | None = None         # one greedy generation of greedy_tokens per prompt (I-1)
    greedy_runs: list[Greedy] | None = None    # one of max_new_tokens per prompt: a greedy stack's runs
    token_ids: list[list[int]] | None = None   # per prompt, the reference tokenizer's ids
    topk_ids: list[np.ndarray] | None = None   # per prompt int32 [T, k], sorted: index 0 is the top-1
    topk_logp: list[np.ndarray] | None = None  # per prompt float32 [T, k]
    next_logp: list[np.ndarray] | None = None  # per prompt float32 [T - 1]: log p(actual next token)
    last_top: list[list[tuple[int, float]]] | None = None  # per prompt: raw (id, logit) at the last position
    embeddings: dict[str, np.ndarray] | None = None  # encoders: text -> float32 [hidden]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def model(self) -> dict[str, Any]:
        return self.meta["model"]


def build_from_source(source: str | Path, golden: GoldenSet, opts: protocol.EvalOptions,
                      device: str | torch.device = "cpu") -> GoldenReference:
    """Load the source weights at float32 (dequantized: the exact values of its weights), build, free."""
    import gc

    from ..runtime import load_model
    from ..runtime import describe_weights

    about = {"model": describe_weights(source)}
    model = load_model(source, device=device, dtype=torch.float32, weights="dequantized")
    try:
        return build(model, golden, opts, about)
    except ValueError as exc:  # non-finite reference output
        raise AprQaError(f"cannot use the reference: {exc}", source) from None
    finally:
        del model
        gc.collect()


def build(model, golden: GoldenSet, opts: protocol.EvalOptions, about: dict[str, Any],
          top_k: int = TOP_K) -> GoldenReference:
    """Run `model` (the source weights at float32) over the golden set once."""
    meta = {"format": FORMAT, "kind": model.kind, "prompts_sha256": golden.sha256, "prompts": str(golden.path),
            "options": {k: getattr(opts, k) for k in RUN_OPTIONS}, "device": str(model.device.type), **about}
    probe = tokenizer_check.probe(model.tokenizer, tokenizer_check.texts(golden))
    if model.kind != "decoder":
        limit = getattr(model, "max_positions", None)
        texts = [t for t in golden.embedding_texts() if not limit or len(model.tokenizer.encode(t)) <= limit]
        vectors = model.embed(texts).float().cpu()
        _require_finite(vectors, "reference embedding")
        return GoldenReference(meta, probe, embeddings=dict(zip(texts, vectors.numpy(), strict=True)))
    runs = protocol.run_generation(model, golden, opts)
    greedy = _greedy(protocol.greedy_pass(model, golden, opts))
    greedy_runs = (greedy if opts.max_new_tokens == opts.greedy_tokens
                   else _greedy(protocol.greedy_pass(model, golden, opts, opts.max_new_tokens)))
    ref = GoldenReference({**meta, "top_k": top_k, "last_top": LAST_TOP}, probe, runs, greedy, greedy_runs,
                          [model.tokenizer.encode(p.input) for p in golden.prompts], [], [], [], [])
    for ids in ref.token_ids or []:
        logits = model.logits([ids])[0].float()
        _require_finite(logits, "reference logits")
        logp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
        nxt = torch.tensor(ids[1:], dtype=torch.long)
        assert ref.topk_ids is not None and ref.topk_logp is not None and ref.next_logp is not None
        assert ref.last_top is not None
        ref.topk_ids.append(top.indices.to(torch.int32).numpy())
        ref.topk_logp.append(top.values.numpy())
        ref.next_logp.append(logp[:-1].gather(1, nxt[:, None])[:, 0].numpy())
        last = torch.topk(logits[-1], min(LAST_TOP, logits.shape[-1]))
        ref.last_top.append(list(zip(last.indices.tolist(), last.values.tolist(), strict=True)))
    return ref


def _greedy(generations) -> list[Greedy]:
    return [Greedy(list(g.token_ids), g.text, g.finish_reason, len(g.prompt_ids)) for g in generations]


def _require_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"non-finite {what}")


def reference_runs(ref: GoldenReference, golden: GoldenSet, opts: protocol.EvalOptions) -> list[dict]:
    """The reference's run records paired with an evaluation made with `opts` (check() has passed):
    its sampled runs, or for a greedy stack its greedy generation repeated `opts.runs` times."""
    assert ref.runs is not None and ref.greedy_runs is not None
    if opts.temperature > 0:
        return ref.runs["records"]
    return [protocol.run_record(p, run, opts.seed + run, g.text, g.finish_reason, g.prompt_tokens,
                                len(g.token_ids))
            for run in range(opts.runs) for p, g in zip(golden.prompts, ref.greedy_runs, strict=True)]


def check(ref: GoldenReference, golden: GoldenSet, opts: protocol.EvalOptions, path: str | Path) -> None:
    """A reference made for other prompts or other run options cannot be paired (check_kind: the model)."""
    if ref.meta["prompts_sha256"] != golden.sha256:
        raise AprQaError(f"the golden reference was made for other prompts ({ref.meta['prompts']}, sha256 "
                         f"{ref.meta['prompts_sha256'][:12]}); these are {golden.path} ({golden.sha256[:12]})", path)
    if ref.kind != "decoder":
        return
    made = ref.meta["options"]
    wanted = {k: getattr(opts, k) for k in RUN_OPTIONS}
    if opts.temperature == 0:  # greedy: the reference's greedy generation stands for every run
        keys = ["max_new_tokens", "greedy_tokens"]
    else:
        keys = list(RUN_OPTIONS)
    differ = [f"{k}={made[k]!r} (asked {wanted[k]!r})" for k in keys if made[k] != wanted[k]]
    if differ:
        raise AprQaError("the golden reference was made with other run options: " + ", ".join(differ)
                         + "; rebuild it with `apr-qa golden-reference` and the same options", path)


def check_kind(ref: GoldenReference, kind: str, path: str | Path) -> None:
    if ref.kind != kind:
        raise AprQaError(f"the golden reference is {_a(ref.kind)}'s; the model is {_a(kind)}", path)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


# -- the file ----------------------------------------------------------------------------------------

def write(ref: GoldenReference, path: str | Path) -> None:
    """One .npz: `meta` (JSON: options, runs, greedy, tokenizer probe, token ids), the per-position arrays
    concatenated over prompts (`lengths` splits them), encoders' embeddings keyed by `texts`."""
    # the runs' records only: their timings belong to the reference's machine, and the file stays
    # byte-identical when rebuilt from the same weights
    runs = {"records": ref.runs["records"]} if ref.runs is not None else None
    doc = {"meta": ref.meta, "tokenizer": ref.tokenizer, "runs": runs,
           "greedy": [g.__dict__ for g in ref.greedy] if ref.greedy is not None else None,
           "greedy_runs": [g.__dict__ for g in ref.greedy_runs] if ref.greedy_runs is not None else None,
           "token_ids": ref.token_ids, "last_top": ref.last_top}
    arrays: dict[str, Any] = {"doc": np.array(json.dumps(doc, sort_keys=True))}
    if ref.kind == "decoder":
        assert ref.topk_ids is not None and ref.topk_logp is not None and ref.next_logp is not None
        arrays.update(lengths=np.array([len(a) for a in ref.topk_ids], dtype=np.int64),
                      topk_ids=np.concatenate(ref.topk_ids), topk_logp=np.concatenate(ref.topk_logp),
                      next_logp=np.concatenate(ref.next_logp))
    else:
        assert ref.embeddings is not None
        arrays.update(texts=np.array(list(ref.embeddings), dtype=np.str_),
                      embeddings=np.stack(list(ref.embeddings.values())))
    write_npz(path, arrays)


def read(path: str | Path) -> GoldenReference:
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = json.loads(str(z["doc"]))
            meta = doc["meta"]
            if meta.get("format") != FORMAT:
                raise FormatError(f"golden reference format {meta.get('format')!r}, expected {FORMAT}", path)
            ref = GoldenReference(meta, doc["tokenizer"])
            if meta["kind"] == "decoder":
                ref.runs, ref.token_ids = doc["runs"], doc["token_ids"]
                ref.greedy = [Greedy(**g) for g in doc["greedy"]]
                ref.greedy_runs = [Greedy(**g) for g in doc["greedy_runs"]]
                ref.last_top = [[(int(i), float(v)) for i, v in top] for top in doc["last_top"]]
                cuts = np.cumsum(z["lengths"])[:-1]
                ref.topk_ids = np.split(z["topk_ids"], cuts)
                ref.topk_logp = np.split(z["topk_logp"], cuts)
                ref.next_logp = np.split(z["next_logp"], np.cumsum(z["lengths"] - 1)[:-1])
            else:
                ref.embeddings = dict(zip((str(t) for t in z["texts"]), z["embeddings"], strict=True))
    except FormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"not a golden reference file: {' '.join(str(exc).split())}", path) from None
    if ref.kind == "decoder":
        assert ref.token_ids is not None and ref.topk_ids is not None and ref.greedy is not None
        if [len(t) for t in ref.token_ids] != [len(a) for a in ref.topk_ids] or len(ref.greedy) != len(ref.token_ids):
            raise FormatError("golden reference arrays disagree with its prompts' token counts", path)
    return ref
