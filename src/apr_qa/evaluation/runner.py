"""`evaluate`: run the protocol on a model, then compare it with its reference in the same runtime.

The reference is the golden reference (evaluation/golden_reference.py): what the source weights at float32
did on the same prompts, with the same seeds, computed once per model (the workflow's `golden_reference`
job) or, given a source model instead of a reference file, built first in this process and freed.
Phases, so that only the model is in memory while it is measured and memory figures belong to it:
1. model (measured window): load, sampled runs (or embedding timings), greedy pass, logits on the
   reference's token ids, tokenizer probe, corpus;
2. model freed; comparisons with the reference (top-k logit agreement, KLD statistics, I-1, I-5, accuracy
   degradation) and gates, each failed gate with its Five Whys.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AprQaError
from ..evidence import Evidence
from . import accuracy_andon, encoder_eval, gates, golden_reference, logit_consistency, protocol, tokenizer_check
from .golden_reference import GoldenReference
from .memory import PeakMemory
from .prompts import GoldenSet
from ..runtime import describe_weights


@dataclass
class Evaluation:
    """Everything the report needs; `sections` are JSON-ready."""

    protocol: str
    model: dict[str, Any]
    reference: dict[str, Any]
    sections: dict[str, Any] = field(default_factory=dict)
    gates: list[Evidence] = field(default_factory=list)
    # decoders: the model's per-token logits on the prompts (token_ids, logits), kept out of the JSON;
    # `apr-qa eval --logits` writes them for the differential comparison of stacks
    prompt_logits: tuple[list[list[int]], list[torch.Tensor]] | None = None


def _free(model) -> None:
    device = model.device
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _prompt_logits(model, token_ids: list[list[int]]) -> list[torch.Tensor]:
    # one sequence per call: no padding, so model and reference see exactly the same computation
    out = [model.logits([ids])[0] for ids in token_ids]
    _require_finite(out, "logits")
    return out


def _require_finite(tensors, what: str) -> None:
    """NaN/inf output is an inference failure (gate T1), never a number to average."""
    for i, t in enumerate(tensors):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"non-finite {what} for input {i}")


def evaluate(model_path: str | Path, reference: str | Path | GoldenReference, golden: GoldenSet,
             opts: protocol.EvalOptions, device: str = "cpu", dtype: str | torch.dtype = torch.float32,
             weights: str = "packed", load=None) -> Evaluation:
    """`reference`: a golden reference (object, or its .npz file from `apr-qa golden-reference`), or the
    source weights, from which one is built first. `weights` is how the model's quantized matrices run
    (runtime.load_model). `load(model_path, device=, dtype=, weights=)` builds the model under test
    (default: our runtime); another stack (apr_qa.stacks) passes an object with the runtime's
    generate/logits/tokenizer interface."""
    from ..runtime import load_model
    from ..runtime.device import resolve_device
    from ..runtime.packed import resident_bytes

    if opts.runs < 1:
        raise AprQaError(f"--runs must be at least 1, got {opts.runs}")
    dev = resolve_device(device)
    model_info = describe_weights(model_path)
    ref, ref_file = _golden_reference(reference, golden, opts, dev)
    golden_reference.check(ref, golden, opts, ref_file)

    corpus_ref = None
    if opts.corpus_reference:  # a wrong file is bad input, refused before anything runs
        from . import corpus

        corpus_ref = corpus.read_reference(opts.corpus_reference)
    memory = PeakMemory(dev)
    with memory:
        model = (load or load_model)(model_path, device=dev, dtype=dtype, weights=weights)
        weight_bytes = getattr(model, "resident_weight_bytes", None) or resident_bytes(model)
        kind = model.kind
        runtime_dtype = str(model.dtype).removeprefix("torch.")
        golden_reference.check_kind(ref, kind, ref_file)
        if corpus_ref is not None and corpus_ref.kind != kind:
            raise AprQaError(f"the corpus reference is {'an' if corpus_ref.kind == 'encoder' else 'a'} "
                             f"{corpus_ref.kind}'s; the model is {'an' if kind == 'encoder' else 'a'} {kind}",
                             opts.corpus_reference)
        try:
            if kind == "decoder":
                measured = _measure_decoder(model, golden, opts, ref, corpus_ref)
            else:
                measured = _measure_encoder(model, golden, opts, corpus_ref)
            error = None
        except (RuntimeError, ValueError, AprQaError) as exc:  # inference broke: gate T1 records it
            measured, error = None, f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        model_config = model.config
    _free(model)
    model_info["kind"] = kind
    model_info["runtime_dtype"] = runtime_dtype
    model_info["weights"] = weights
    model_info["resident_weight_bytes"] = weight_bytes
    model_info["hidden_size"] = model_config.get("hidden_size")
    if measured is not None and kind == "decoder" and measured["logits_kind"] == "full":
        prompt_logits = (measured["token_ids"], measured["logits"])
    else:
        prompt_logits = None

    reference_info = {**ref.model, "golden_reference": ref_file}
    ev = Evaluation("generation" if kind == "decoder" else "embedding", model_info, reference_info,
                    prompt_logits=prompt_logits)
    ev.sections["memory"] = memory.as_dict()
    ev.sections["variant"] = level = model_info["metadata"]["quantization"] or "source"
    t3 = gates.gate_t3(memory.peak_bytes, opts.memory_limit_bytes)
    if measured is None:
        ev.gates = [gates.gate_t1(0, len(golden.prompts) * opts.runs, error), t3]
        _five_whys(ev.gates)
        return ev
    try:
        if kind == "decoder":
            _compare_decoder(ev, measured, ref, golden, opts, level, dev.type)
        else:
            _compare_encoder(ev, measured, ref, golden, opts, level, dev.type)
    except ValueError as exc:  # outputs of different shapes
        raise AprQaError(f"cannot compare with the reference: {exc}", ref_file) from None
    ev.gates.insert(2, t3)
    _five_whys(ev.gates)
    return ev


def _golden_reference(reference, golden: GoldenSet, opts: protocol.EvalOptions, dev) -> tuple[GoldenReference, str]:
    """The reference object and where it came from (its file, or the source it was built from)."""
    if isinstance(reference, GoldenReference):
        return reference, str(reference.meta.get("file", reference.model.get("path")))
    if Path(reference).suffix == ".npz":
        return golden_reference.read(reference), str(reference)
    return golden_reference.build_from_source(reference, golden, opts, dev), str(reference)


def _five_whys(records: list[Evidence]) -> None:
    """Every failed gate, warnings included, carries its root-cause chain in the evidence itself,
    so the report shows it whatever the tier (with or without a certification)."""
    from .. import five_whys

    five_whys.annotate(records)


def _cost(device: str, tokens: int, seconds: float) -> dict:
    """Device time per 1k tokens, the price-free part of the inference cost (the report multiplies it
    by the configured price per device-hour)."""
    return {"device": device, "tokens": tokens, "device_seconds": seconds,
            "device_seconds_per_1k_tokens": 1000.0 * seconds / tokens if tokens and seconds else None}


# -- decoders --------------------------------------------------------------------------------------

def _measure_decoder(model, golden: GoldenSet, opts: protocol.EvalOptions, ref: GoldenReference,
                     corpus_ref=None) -> dict:
    runs = protocol.run_generation(model, golden, opts)
    token_ids = ref.token_ids  # the reference's tokens: every variant and stack is scored on the same ones
    assert token_ids is not None
    measured = {"runs": runs,
                "greedy": protocol.greedy_pass(model, golden, opts),
                "token_ids": token_ids,
                "logits": _model_logits(model, token_ids),
                "logits_kind": _logits_kind(model),
                "tokenizer": tokenizer_check.probe(model.tokenizer, tokenizer_check.texts(golden))}
    if corpus_ref is not None:
        measured["corpus"] = _score_corpus(model, corpus_ref, str(opts.corpus_reference))
    return measured


def _score_corpus(model, ref, reference_file: str) -> dict:
    """The variant over the corpus reference's tokens (evaluation/corpus.py), or why it could not be."""
    from . import corpus

    if _logits_kind(model) != "full":
        return {"reference": ref, "reference_file": reference_file,
                "not_measured": f"the stack returns {_logits_kind(model)} logits, not full distributions"}
    return {"reference": ref, "reference_file": reference_file, "scored": corpus.score(model, ref)}


def _corpus_section(m: dict, opts: protocol.EvalOptions, level: str) -> tuple[dict, Evidence | None]:
    """The evaluation's `corpus` object and gate Q1 (None when the corpus could not be scored)."""
    from . import corpus, corpus_gates

    ref = m["reference"]
    about = {"name": ref.meta["corpus"], "sha256": ref.meta["corpus_sha256"], "reference_file": m["reference_file"],
             "n_ctx": ref.n_ctx, "chunks": ref.meta["chunks"], "top_k": ref.meta["top_k"],
             "reference_model_sha256": ref.meta.get("model_sha256"),
             "method": "teacher-forced windows of n_ctx tokens, the second half of each scored; standard errors "
                       "from per-window means; KLD over the reference's top-k plus one merged tail bucket"}
    if "not_measured" in m:
        return {**about, "not_measured": m["not_measured"]}, None
    scored = m["scored"]
    summary = corpus.summarize(scored)
    target = corpus_gates.quality_target(level, opts.quality_target)
    section = {**about, **summary, "top_k_approximation": corpus.approximation_error(ref, scored.first_logq),
               "quality_target": target}
    return section, corpus_gates.gate_q1(section, target)


def _logits_kind(model) -> str:
    """full | top | none: another stack may return only its top logits (-inf elsewhere), or none."""
    return getattr(model, "logits_kind", "full")


def _model_logits(model, token_ids: list[list[int]]) -> list[torch.Tensor] | None:
    kind = _logits_kind(model)
    if kind == "full":
        return _prompt_logits(model, token_ids)
    if kind == "none":
        return None
    out = [model.logits([ids])[0] for ids in token_ids]
    _require_finite([t.masked_fill(t == float("-inf"), 0.0) for t in out], "top logits")  # -inf: omitted
    return out


# Decoders' top-k agreement is information, not a gate (gates.py says why; T9 is the logit gate).
TOP_K_ROLE = ("information, not a gate: a fixed 0.1-logit tolerance fails every quantized level; "
              "T9 (mean KLD, same top-1 within the level's limits) gates the next-token distribution")


def _compare_decoder(ev: Evaluation, m: dict, ref: GoldenReference, golden: GoldenSet, opts: protocol.EvalOptions,
                     level: str, device: str) -> None:
    runs = m["runs"]
    ref_records = golden_reference.reference_runs(ref, golden, opts)  # same prompts and seeds: paired runs
    ref_greedy = ref.greedy
    assert ref_greedy is not None and ref.last_top is not None
    assert ref.topk_ids is not None and ref.topk_logp is not None and ref.next_logp is not None
    ref_tok = ref.tokenizer

    ids = [p.id for p in golden.prompts]
    logits_kind = m.get("logits_kind", "full")
    agreement = kld = None
    if m["logits"] is not None:  # top logits: top entries, -inf elsewhere
        agreement = logit_consistency.top_k_consistency(ids, ref.last_top, [x[-1] for x in m["logits"]],
                                                        opts.agreement)
    if logits_kind == "full":
        kld = logit_consistency.kld_summary(logit_consistency.position_stats_topk(
            [torch.from_numpy(a) for a in ref.topk_ids], [torch.from_numpy(a) for a in ref.topk_logp],
            [torch.from_numpy(a) for a in ref.next_logp], m["logits"], m["token_ids"]))
        kld["method"] = (f"teacher-forced on the reference's tokens; KLD over the reference's top-{ref.meta['top_k']} "
                         "log-probs plus one merged tail bucket (a lower bound of the exact KLD)")
    i1 = {}
    for p, g, r in zip(golden.prompts, m["greedy"], ref_greedy, strict=True):
        i1[p.id] = {**logit_consistency.greedy_identity(g.token_ids, r.token_ids),
                    "model_text": g.text, "reference_text": r.text}
    i5 = tokenizer_check.compare(m["tokenizer"], ref_tok)
    i5["first_generated_token_identical"] = sum(v["first_token_identical"] for v in i1.values())
    hits = accuracy_andon.per_prompt_hits(runs["records"])
    ref_hits = accuracy_andon.per_prompt_hits(ref_records)
    andon = accuracy_andon.accuracy_block(
        "decoder", runs["accuracy"]["overall"], protocol.accuracy(ref_records, opts.confidence)["overall"],
        [{"id": p.id, "model": hits.get(p.id, 0), "reference": ref_hits.get(p.id, 0), "runs": opts.runs}
         for p in golden.prompts],
        accuracy_andon.paired_run_outcomes(runs["records"], ref_records),
        accuracy_andon.paired_f1(runs["records"], ref_records))

    accuracy = runs["accuracy"]
    accuracy["greedy"] = protocol.greedy_accuracy(golden, m["greedy"], opts.confidence)
    accuracy["greedy_reference"] = protocol.greedy_accuracy(golden, ref_greedy, opts.confidence)
    ev.sections.update({
        "runs": {"count": opts.runs, "per_prompt": opts.runs, "total": len(runs["records"]),
                 "records": runs["records"]},
        "accuracy": accuracy,
        "latency": runs["latency"],
        "ttft": runs["ttft"],
        "throughput": runs["throughput"],
        "logit_consistency": {"reference_dtype": "float32", "prompts": len(ids), "model_logits": logits_kind,
                              "top_k_agreement": {**agreement, "role": TOP_K_ROLE} if agreement else None,
                              "kl_divergence": kld},
        "accuracy_andon": andon,
        "cost": _cost(device, runs["throughput"]["generated_tokens"],
                      (runs["latency"]["mean"] or 0.0) * runs["latency"]["n"]),
        "invariants": {"I-1": {"level": level, "identical": all(v["identical"] for v in i1.values()),
                               "per_prompt": i1},
                       "I-5": i5},
    })
    produced = sum(r["new_tokens"] > 0 for r in runs["records"])
    ev.gates = [
        gates.gate_t1(produced, len(runs["records"])),
        gates.gate_t2(runs["latency"]["max"], runs["timeouts"], opts.timeout_s),
        gates.gate_t4_generation(accuracy["by_category"].get("sanity")),
        gates.gate_t6_latency(runs["latency"]["p50"]),
        gates.gate_t7_accuracy(andon),
        gates.gate_t8_accuracy(andon),
        gates.gate_t9_logits(kld, level) if kld else _not_measured("T9", logits_kind),
        gates.gate_i1_generation(i1, level),
        gates.gate_i5(i5, (i5["first_generated_token_identical"], len(i1)), level),
    ]
    if "corpus" in m:
        ev.sections["corpus"], q1 = _corpus_section(m["corpus"], opts, level)
        if q1 is not None:
            ev.gates.append(q1)


def _not_measured(gate_id: str, logits_kind: str) -> Evidence:
    """A logit gate the evaluated stack gives no data for: a warning that says so, never a pass."""
    what = {"T9": "logit divergence (mean KLD, same top-1)"}[gate_id]
    return Evidence(gate_id, what, False, None, "the model's logits", "warn",
                    f"not measured: the stack returns {'top logits only' if logits_kind == 'top' else 'no logits'}")


# -- encoders --------------------------------------------------------------------------------------

def _measure_encoder(model, golden: GoldenSet, opts: protocol.EvalOptions, corpus_ref=None) -> dict:
    # Texts longer than the encoder's context cannot be embedded whole; they are listed, not truncated.
    limit = getattr(model, "max_positions", None)
    texts, skipped = [], []
    for text in golden.embedding_texts():
        n = len(model.tokenizer.encode(text))
        if limit is not None and n > limit:
            skipped.append({"text": text, "tokens": n, "max_positions": limit})
        else:
            texts.append(text)
    embeddings = model.embed(texts).float().cpu()
    _require_finite(embeddings, "embedding")
    measured = {"texts": texts, "skipped": skipped, "tokens": sum(len(model.tokenizer.encode(t)) for t in texts),
                "latency": protocol.time_embeddings(model, texts, opts),
                "embeddings": embeddings,
                "tokenizer": tokenizer_check.probe(model.tokenizer, tokenizer_check.texts(golden))}
    if corpus_ref is not None:
        from . import corpus

        ref = corpus_ref
        sentences = list(ref.texts)
        vectors = torch.cat([model.embed(sentences[i:i + 64]).float().cpu() for i in range(0, len(sentences), 64)])
        _require_finite(vectors, "corpus embedding")
        measured["corpus"] = {"name": ref.meta["corpus"], "sha256": ref.meta["corpus_sha256"],
                              "reference_file": opts.corpus_reference,
                              "reference_model_sha256": ref.meta.get("model_sha256"),
                              "method": "cosine of each corpus sentence's embedding with the reference's",
                              **corpus.embedding_agreement(ref, vectors)}
    return measured


def _similarity(golden: GoldenSet, texts: list[str], embeddings: torch.Tensor) -> dict:
    by_text = dict(zip(texts, embeddings, strict=True))
    return encoder_eval.similarity_sanity(encoder_eval.pair_scores(golden.paraphrase_pairs, by_text),
                                          encoder_eval.pair_scores(golden.unrelated_pairs, by_text))


def _compare_encoder(ev: Evaluation, m: dict, ref: GoldenReference, golden: GoldenSet, opts: protocol.EvalOptions,
                     level: str, device: str) -> None:
    texts, emb = m["texts"], m["embeddings"]
    assert ref.embeddings is not None
    missing = [t for t in texts if t not in ref.embeddings]
    if missing:
        raise ValueError(f"the golden reference has no embedding of {len(missing)} text(s), e.g. {missing[0][:40]!r}")
    ref_emb = torch.from_numpy(np.stack([ref.embeddings[t] for t in texts]))
    ref_tok = ref.tokenizer
    t1 = gates.gate_t1(len(emb), len(texts))
    consistency = encoder_eval.embedding_consistency(texts, emb, ref_emb)
    min_cosine = opts.min_cosine if opts.min_cosine is not None else encoder_eval.min_cosine(level)
    consistency["min_cosine"] = min_cosine
    consistency["skipped_texts"] = m["skipped"]
    sanity = _similarity(golden, texts, emb)
    sanity["reference"] = _similarity(golden, texts, ref_emb)
    andon = accuracy_andon.accuracy_block(
        "encoder", {"value": sanity["ordered_fraction"]}, {"value": sanity["reference"]["ordered_fraction"]},
        _ordered_by_pair(sanity))
    i5 = tokenizer_check.compare(m["tokenizer"], ref_tok)
    n_runs = opts.runs * len(texts)
    ev.sections.update({
        "runs": {"count": opts.runs, "per_text": opts.runs, "total": n_runs, "texts": len(texts)},
        "latency": m["latency"],
        "throughput": {"texts_per_s": (1.0 / m["latency"]["mean"]) if m["latency"]["mean"] else None},
        "embedding_consistency": consistency,
        "similarity": sanity,
        "accuracy_andon": andon,
        **({"corpus": m["corpus"]} if "corpus" in m else {}),
        "cost": _cost(device, m["tokens"] * opts.runs, m["latency"]["mean"] * n_runs
                      if m["latency"]["mean"] else 0.0),
        "invariants": {"I-1": {"level": level, "identical": consistency["max_abs_diff"] == 0.0,
                               "cosine_min": consistency["cosine_min"]},
                       "I-5": i5},
    })
    ev.gates = [
        t1,
        gates.gate_t2(m["latency"]["max"], 0, opts.timeout_s),
        gates.gate_t4_embedding(sanity),
        gates.gate_t5_embedding(consistency, min_cosine),
        gates.gate_t6_latency(m["latency"]["p50"], "text"),
        gates.gate_t7_accuracy(andon),
        gates.gate_t8_accuracy(andon),
        gates.gate_i1_embedding(consistency, level, min_cosine),
        gates.gate_i5(i5),
    ]


def _ordered_by_pair(sanity: dict) -> list[dict]:
    """Per paraphrase pair: how many unrelated pairs it outscores, in the model and in the reference."""
    unrelated, ref_unrelated = sanity["unrelated"].values(), sanity["reference"]["unrelated"].values()
    return [{"id": pid, "model": sum(score > u for u in unrelated),
             "reference": sum(sanity["reference"]["paraphrase"][pid] > u for u in ref_unrelated),
             "comparisons": len(unrelated)}
            for pid, score in (sanity["paraphrase"] or {}).items()]
