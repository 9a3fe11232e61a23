"""Independent oracle (gate O1): our fp32 runtime against HuggingFace transformers on the same source weights.

Our runtime computes the reference every variant is judged against, so it must first agree with an
independent implementation on the source weights. transformers is a dependency of the workflow for this
check alone, never used by the runtime. When the two disagree beyond fp32 noise (max |diff| > 1e-4 of the
reference's value range, at most the last few bits of float32 summation order), our runtime is wrong:
O1 fails, and the workflow computes no reference and no evaluation from it. A model transformers cannot
load (an architecture it lacks, a GGUF type its loader does not dequantize) is recorded as "unsupported"
with transformers' reason: not verified, said so on the board, and not a failure of our runtime.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from ..errors import AprQaError, UnsupportedError

RELATIVE_LIMIT = 1e-4  # of the reference output's value range (max - min)


def _reference_model(source: Path, kind: str):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if kind == "decoder" else AutoModel
    if source.suffix == ".gguf":  # transformers dequantizes GGUF itself, independently of us
        return cls.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    return cls.from_pretrained(source, dtype=torch.float32).eval()


def run_oracle(source: str | Path, texts: list[str]) -> dict[str, Any]:
    """Compare per-position outputs (decoder logits / encoder last hidden states) on `texts`."""
    import torch

    from ..runtime import load_model

    source = Path(source)
    base = {"source": str(source), "relative_limit": RELATIVE_LIMIT, "gate": "O1"}
    try:
        import transformers
    except ImportError as exc:  # a dependency of apr-qa: a broken installation, not an unsupported model
        raise AprQaError(f"gate O1 cannot run: transformers does not import ({exc}); run `make setup`") from None

    # packed blocks multiply in float32 with exact weight values (runtime.packed), as transformers'
    # dequantized GGUF tensors do: only the summation order differs
    ours = load_model(source, dtype=torch.float32, weights="packed")
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    try:
        reference = _reference_model(source, ours.kind)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the model is not verifiable by it
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return {**base, "status": "unsupported", "passed": None, "kind": ours.kind, "versions": versions,
                "reason": f"transformers {transformers.__version__} cannot load this model: {reason}",
                "verdict": "not verified: the runtime's reference for this model is unchecked"}
    limit = getattr(ours, "max_positions", None)
    encoded = [(t, ours.tokenizer.encode(t)) for t in texts]
    skipped = [t[:60] for t, ids in encoded if limit and len(ids) > limit]
    texts = [t for t, ids in encoded if not (limit and len(ids) > limit)]
    batch = [ids for _, ids in encoded if not (limit and len(ids) > limit)]
    if not batch:
        raise UnsupportedError(f"every text is longer than the model's {limit} positions", source)
    mine = ours.logits(batch) if ours.kind == "decoder" else ours.hidden_states(batch)
    per_text: list[dict[str, Any]] = []
    with torch.inference_mode():
        for text, ids, got in zip(texts, batch, mine, strict=True):
            out = reference(torch.tensor([ids]))
            want = (out.logits if ours.kind == "decoder" else out.last_hidden_state)[0].float()
            diff = float((got.float() - want).abs().max())
            value_range = float(want.max() - want.min())
            per_text.append({"text": text[:60], "tokens": len(ids), "max_abs_diff": diff,
                             "value_range": value_range, "relative": diff / value_range if value_range else 0.0})
    worst = max(per_text, key=lambda p: p["relative"])
    passed = worst["relative"] <= RELATIVE_LIMIT
    return {
        **base,
        "status": "pass" if passed else "FAIL",
        "passed": passed,
        "kind": ours.kind,
        "compared": "logits" if ours.kind == "decoder" else "last hidden state",
        "max_relative_diff": worst["relative"],
        "max_abs_diff": max(p["max_abs_diff"] for p in per_text),
        "per_text": per_text,
        "skipped_texts": skipped,  # longer than the model's context
        "verdict": ("our runtime matches transformers" if passed else
                    "our runtime DISAGREES with transformers on the source weights: evaluation results are suspect"),
        "versions": versions,
    }
