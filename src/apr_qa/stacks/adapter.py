"""Another stack's model as the evaluation runner drives ours: generate / logits / tokenizer.

The runner (evaluation/runner.py) then measures it exactly as it measures our runtime (runs, greedy
pass, per-token logits on the prompts, tokenizer probe) and compares it with the same float32
reference in our runtime. Other stacks decode greedily: their sampling RNG is not ours, so seeded
runs could not be paired with the reference's; the repeated greedy runs measure the timing spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import AprQaError, UnsupportedError
from ..runtime.generate import Generation


class NotApplicable(UnsupportedError):
    """The stack does not run this kind of model (an encoder): recorded as such, not a failure."""


def require_decoder(stack_name: str, config: dict[str, Any], model_path: Path) -> None:
    from ..arch import architecture_for

    if architecture_for(config, model_path).kind != "decoder":
        raise NotApplicable(f"stack {stack_name!r} evaluates decoders (text generation) only", model_path)


def harness_tokenizer(model_path: Path):
    """Our tokenizer of the model file (its embedded tokenizer.json): it chooses the token ids every
    stack is scored on, so per-token logits of two stacks are compared on the same sequence."""
    from ..runtime import open_weights
    from ..runtime.tokenizer import Tokenizer

    source = open_weights(model_path)
    try:
        tokenizer = Tokenizer(source.tokenizer_json, source.tokenizer_config, source.config, source.path)
        return tokenizer, dict(source.config)
    finally:
        source.close()


def make_generation(prompt_ids: list[int], token_ids: list[int], text: str, finish_reason: str,
                    ttft_s: float, total_s: float) -> Generation:
    decode_s = total_s - ttft_s
    decode_tps = (len(token_ids) - 1) / decode_s if len(token_ids) > 1 and decode_s > 0 else 0.0
    return Generation(list(prompt_ids), list(token_ids), text, finish_reason, ttft_s, total_s, decode_tps)


class StackModel:
    """Base of the adapters: greedy generation and per-token logits, on the CPU as far as torch sees."""

    kind = "decoder"
    device = torch.device("cpu")
    logits_kind = "full"                       # full | top | none (evaluation/runner.py)

    def __init__(self, stack_name: str, tokenizer, config: dict[str, Any], dtype: str, weight_bytes: int,
                 details: dict[str, Any]):
        self.stack_name = stack_name
        self.tokenizer = tokenizer
        self.config = config
        self.dtype = dtype                     # recorded as the evaluation's runtime dtype
        self.resident_weight_bytes = weight_bytes
        self.details = details                 # the evaluation JSON's `stack` block
        self.vocab_size = config.get("vocab_size")

    def generate(self, prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, seed: int | None = None,
                 stop_on_eos: bool = True, timeout_s: float | None = None, **_options) -> list[Generation]:
        if temperature:
            raise UnsupportedError(f"stack {self.stack_name!r} decodes greedily (temperature 0) only")
        return [self.greedy(p if isinstance(p, str) else None, self._ids(p), max_new_tokens, stop_on_eos, timeout_s)
                for p in prompts]

    def _ids(self, prompt) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise AprQaError(f"stack {self.stack_name!r}: a prompt has no tokens")
        return ids

    def greedy(self, text: str | None, ids: list[int], max_new_tokens: int, stop_on_eos: bool,
               timeout_s: float | None) -> Generation:
        raise NotImplementedError

    def logits(self, batch: list[list[int]], start: int = 0) -> list[torch.Tensor]:
        """[T - start, vocab] float32 logits for each sequence, of every position from `start` (teacher-forced)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the stack's resources (the runner frees the model after measuring)."""
