"""Batched autoregressive generation with a preallocated KV cache and left-padded prompts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..errors import AprQaError, UnsupportedError
from .device import now
from .sampling import choose, make_generator


@dataclass
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]            # new tokens only (EOS included when it ended the sequence)
    text: str                       # decoded new tokens, special tokens skipped
    finish_reason: str              # "eos" | "length" | "timeout"
    time_to_first_token_s: float
    total_time_s: float
    decode_tokens_per_s: float      # tokens after the first / time after the first


def left_pad(batch: list[list[int]], pad_id: int, device: torch.device):
    """-> ids [B, T], key_valid [B, T] bool, positions [B, T] (counted from each row's first real token)."""
    if not batch or any(len(seq) == 0 for seq in batch):
        raise AprQaError("every sequence needs at least one token")
    width = max(len(seq) for seq in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    key_valid = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, seq in enumerate(batch):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        key_valid[row, width - len(seq):] = True
    positions = (key_valid.long().cumsum(dim=-1) - 1).clamp(min=0)
    return ids.to(device), key_valid.to(device), positions.to(device)


@torch.inference_mode()
def generate(model, prompts: list[str] | list[list[int]], max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop_on_eos: bool = True, timeout_s: float | None = None,
             static_steps: bool | None = None, on_token=None) -> list[Generation]:
    """static_steps: decode with fixed-shape steps (runtime.static_decode: CUDA graphs on CUDA);
    None = on CUDA only. on_token(row, token_id): called as each new token is recorded (streaming)."""
    tok = model.tokenizer
    prompt_ids = [tok.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    for seq in prompt_ids:
        if bad := [t for t in seq if not 0 <= t < model.vocab_size]:
            # from text, the model's own tokenizer produced it: name the model's file
            raise AprQaError(f"token id {bad[0]} outside the model's vocabulary (0..{model.vocab_size - 1})",
                             tok.path)
    total_len = max(map(len, prompt_ids), default=0) + max_new_tokens
    if total_len > model.max_positions:
        raise UnsupportedError(f"prompt plus {max_new_tokens} new tokens needs {total_len} positions, "
                               f"the model has {model.max_positions}")
    device, batch = model.device, len(prompt_ids)
    generator = make_generator(seed)
    eos = tok.eos_ids if stop_on_eos else set()

    start = now(device)
    ids, key_valid, positions = left_pad(prompt_ids, tok.pad_id, device)
    width = ids.shape[1]
    cache = model.new_cache(batch, width + max_new_tokens)
    padded = not bool(key_valid.all())
    # slots for the new tokens are always valid keys
    valid = torch.ones((batch, width + max_new_tokens), dtype=torch.bool, device=device)
    valid[:, :width] = key_valid
    hidden = model.forward(ids, positions, valid[:, :width] if padded else None, cache, 0)
    last_hidden = hidden[:, -1]
    next_pos = positions[:, -1:] + 1
    static = None
    if static_steps or (static_steps is None and device.type == "cuda"):
        from .static_decode import StaticStep

        static = StaticStep(model, cache, valid)
    next_logits = None

    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    finished_at: list[float | None] = [None] * batch
    first_token_at = None
    for step in range(max_new_tokens):
        logits = (model.project(last_hidden) if next_logits is None else next_logits).float().cpu()
        chosen = choose(logits, temperature, top_k, top_p, generator).tolist()
        for row, token in enumerate(chosen):
            if reasons[row] is None:
                new_tokens[row].append(token)
                if on_token is not None:
                    on_token(row, token)
                if token in eos:
                    reasons[row] = "eos"
                    finished_at[row] = time.perf_counter()
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if all(r is not None for r in reasons) or step == max_new_tokens - 1:
            break
        if timeout_s is not None and time.perf_counter() - start > timeout_s:
            reasons = [r or "timeout" for r in reasons]
            break
        # finished rows keep decoding the pad token; their output is no longer recorded
        step_ids = torch.tensor([[t if reasons[r] is None else tok.pad_id] for r, t in enumerate(chosen)],
                                device=device)
        slot = width + step
        if static is not None:
            next_logits = static(step_ids, next_pos, slot)
        else:
            hidden = model.forward(step_ids, next_pos, valid[:, : slot + 1] if padded else None, cache, slot)
            last_hidden = hidden[:, -1]
        next_pos = next_pos + 1
    end = now(device)

    results = []
    ttft = (first_token_at or end) - start
    for row in range(batch):
        produced = new_tokens[row]
        after_first = (finished_at[row] or end) - start - ttft
        results.append(Generation(
            prompt_ids=prompt_ids[row], token_ids=produced, text=tok.decode(produced),
            finish_reason=reasons[row] or "length", time_to_first_token_s=ttft, total_time_s=end - start,
            decode_tokens_per_s=(len(produced) - 1) / after_first if len(produced) > 1 and after_first > 0 else 0.0))
    return results
