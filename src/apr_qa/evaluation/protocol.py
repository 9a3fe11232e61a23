"""The measured runs: every golden prompt, `runs` times, one prompt per call.

Sampling choice, recorded in the report's `sampling` block: run i samples with seed `seed + i`
at llama.cpp's default settings (temperature 0.8, top-k 40, top-p 0.95). Greedy decoding would make
the five runs identical copies, so their spread and the accuracy interval would say nothing; seeded
sampling keeps every run reproducible while letting the runs differ. Greedy behaviour is measured
separately (one pass per prompt, `accuracy.greedy`), and that pass is also the I-1 comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import f1, stats
from .logit_consistency import AgreementConfig
from .prompts import GoldenSet


@dataclass
class EvalOptions:
    runs: int = 5
    seed: int = 42
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    timeout_s: float = 30.0              # per-prompt limit; gate T2
    greedy_tokens: int = 32              # I-1 comparison length
    confidence: float = 0.95
    memory_limit_bytes: int = 8 * 1024**3  # gate T3: "< 8GB", read as GiB
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    min_cosine: float | None = None      # encoders; None = the variant's default
    corpus_reference: str | None = None  # decoders: the model's corpus reference file (evaluation/corpus.py)
    quality_target: float | None = None  # gate Q1's target set by the tier; None = the level's own

    def sampling_block(self) -> dict:
        return {
            "strategy": "seeded-sampling",
            "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
            "seed_base": self.seed, "seeds": [self.seed + i for i in range(self.runs)],
            "max_new_tokens": self.max_new_tokens, "stop_on_eos": True, "batch_size": 1,
            "warmup_calls": 1,
            "prompt_format": "raw text, tokenizer's default special tokens (no chat template)",
            "greedy_pass": {"max_new_tokens": self.greedy_tokens, "temperature": 0.0,
                            "used_for": ["accuracy.greedy", "invariants.I-1"]},
            "why": "greedy runs would be identical copies; seeded sampling makes runs differ yet "
                   "stay reproducible, so the Wilson and Student-t intervals describe real spread",
        }


def run_generation(model, golden: GoldenSet, opts: EvalOptions) -> dict:
    """Sampled runs -> per-run records plus accuracy, latency, TTFT and throughput summaries."""
    # one untimed warm-up call: the first call pays one-off costs (allocator, kernel selection)
    model.generate([golden.prompts[0].input], 2, temperature=0.0)
    records, latencies, ttfts, tps, prefill = [], [], [], [], []
    for run in range(opts.runs):
        seed = opts.seed + run
        for prompt in golden.prompts:
            g = model.generate([prompt.input], opts.max_new_tokens, temperature=opts.temperature,
                               top_k=opts.top_k, top_p=opts.top_p, seed=seed, stop_on_eos=True,
                               timeout_s=opts.timeout_s)[0]
            records.append(run_record(prompt, run, seed, g.text, g.finish_reason, len(g.prompt_ids),
                                      len(g.token_ids)))
            latencies.append(g.total_time_s)
            ttfts.append(g.time_to_first_token_s)
            if g.time_to_first_token_s > 0:  # prompt tokens per second of the first token's wait (prefill)
                prefill.append(len(g.prompt_ids) / g.time_to_first_token_s)
            if len(g.token_ids) > 1:
                tps.append(g.decode_tokens_per_s)
    total_tokens = sum(r["new_tokens"] for r in records)
    return {
        "records": records,
        "accuracy": accuracy(records, opts.confidence),
        "latency": {**stats.summarize(latencies, opts.confidence), "unit": "s", "samples": latencies,
                    "by_prompt": {p.id: stats.mean(latencies[i::len(golden.prompts)])
                                  for i, p in enumerate(golden.prompts)}},
        "ttft": {**stats.summarize(ttfts, opts.confidence), "unit": "s"},
        "throughput": {"decode_tokens_per_s": stats.summarize(tps, opts.confidence),
                       "prefill_tokens_per_s": stats.summarize(prefill, opts.confidence),
                       "end_to_end_tokens_per_s": total_tokens / sum(latencies) if sum(latencies) else None,
                       "generated_tokens": total_tokens},
        "timeouts": sum(r["finish_reason"] == "timeout" for r in records),
    }


def run_record(prompt, run: int, seed: int, text: str, finish_reason: str, prompt_tokens: int,
               new_tokens: int) -> dict:
    """One run's record: what it generated, whether that matches the prompt's expectation (exact match),
    and its token F1 against the prompt's reference answer (None when the prompt has none)."""
    return {"prompt_id": prompt.id, "category": prompt.category, "run": run, "seed": seed,
            "matched": prompt.matches(text),
            "f1": None if prompt.reference_answer is None else round(f1.leading_f1(text, prompt.reference_answer), 6),
            "finish_reason": finish_reason, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "text": text}


def accuracy(records: list[dict], confidence: float = 0.95) -> dict:
    """Pattern-match accuracy, overall and per category, with Wilson intervals.

    Samples of one prompt are correlated, so the interval treats prompt x run as independent trials;
    it describes run-to-run sampling spread, not generalisation beyond the golden set.
    """
    by_category: dict[str, list[bool]] = {}
    for r in records:
        by_category.setdefault(r["category"], []).append(r["matched"])
    hits = [r["matched"] for r in records]
    return {"overall": stats.proportion(sum(hits), len(hits), confidence),
            "by_category": {c: stats.proportion(sum(v), len(v), confidence)
                            for c, v in sorted(by_category.items())},
            "f1": f1_summary(records, confidence)}


def f1_summary(records: list[dict], confidence: float = 0.95) -> dict | None:
    """Mean token F1 (evaluation/f1.py) over the runs of the prompts with a reference answer, overall and per
    category, each with its Student-t interval (clipped to [0, 1]); None when no prompt has one. As for
    exact match, prompt x run are treated as independent samples: the interval describes run-to-run spread.
    """
    scored = [r for r in records if r.get("f1") is not None]
    if not scored:
        return None

    def summary(values: list[float]) -> dict:
        ci = stats.t_interval(values, confidence)
        return {"mean": stats.mean(values), "n": len(values),
                "ci95": [max(0.0, ci[0]), min(1.0, ci[1])] if ci else None}

    by_category: dict[str, list[float]] = {}
    for r in scored:
        by_category.setdefault(r["category"], []).append(r["f1"])
    return {**summary([r["f1"] for r in scored]), "definition": f1.DEFINITION,
            "by_category": {c: summary(v) for c, v in sorted(by_category.items())}}


def greedy_pass(model, golden: GoldenSet, opts: EvalOptions, tokens: int | None = None) -> list:
    """One greedy generation per prompt of `tokens` (default: greedy_tokens; the I-1 comparison and the
    greedy accuracy)."""
    n = opts.greedy_tokens if tokens is None else tokens
    return [model.generate([p.input], n, temperature=0.0, stop_on_eos=True)[0] for p in golden.prompts]


def greedy_accuracy(golden: GoldenSet, generations: list, confidence: float = 0.95) -> dict:
    matched = {p.id: p.matches(g.text) for p, g in zip(golden.prompts, generations, strict=True)}
    return {**stats.proportion(sum(matched.values()), len(matched), confidence), "by_prompt": matched}


def time_embeddings(model, texts: list[str], opts: EvalOptions) -> dict:
    """Latency of embedding one text at a time, `runs` passes over all texts (batch size 1)."""
    from ..runtime.device import now

    model.embed([texts[0]])  # untimed warm-up, as for generation
    latencies = []
    for _ in range(opts.runs):
        for text in texts:
            start = now(model.device)
            model.embed([text])
            latencies.append(now(model.device) - start)
    return {**stats.summarize(latencies, opts.confidence), "unit": "s", "samples": latencies}
