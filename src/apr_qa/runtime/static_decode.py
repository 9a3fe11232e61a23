"""Decode steps with static shapes, replayed as one CUDA graph per step on CUDA.

An eager decode step launches hundreds of small kernels from Python (per layer: norms, QKV,
rotary, attention, MLP), and on a fast GPU the launches, not the arithmetic, set the speed. Here
every step has the same shapes: the token's keys and values go to their cache slot through a device
tensor, attention reads the whole preallocated cache under a mask of the filled slots, and the
inputs live in fixed buffers. On CUDA the step is captured once per generation (after two warm-up
runs on a side stream, as torch.cuda.graphs requires) and each token is then one graph replay; on
CPU (and where capture is impossible) the same static step runs eagerly, which is how it is tested
without a GPU.
"""

from __future__ import annotations

import os

import torch

from .kv_cache import KVCache

# Opt-in ("1") until the capture has been measured on a GPU: no GPU was available when it was written,
# and the CPU tests only prove the static step, not the graph replay.
GRAPHS_ENV = "APR_QA_CUDA_GRAPHS"


def graphs_wanted(model) -> bool:
    """CUDA, asked for, and a model whose step never reads a value back to the CPU (dynamic NTK
    rotary scaling does: its tables grow with the longest position seen)."""
    return (model.device.type == "cuda" and os.environ.get(GRAPHS_ENV) == "1"
            and model.hp.rope_scaling.get("rope_type") != "dynamic")


class StaticStep:
    """One decode step of `model` over `cache` (already holding the prompt): logits of the token at
    cache slot `slot` for every row. `key_valid` [B, cache length] marks real key slots."""

    def __init__(self, model, cache: KVCache, key_valid: torch.Tensor, graphs: bool | None = None):
        device = model.device
        batch = key_valid.shape[0]
        self.model, self.cache = model, cache
        self.key_valid = key_valid
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.graphs = graphs_wanted(model) if graphs is None else graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _run(self) -> torch.Tensor:
        hidden = self.model.forward(self.ids, self.positions, self.key_valid, self.cache, slot=self.slot)
        return self.model.project(hidden[:, -1])

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(side):  # warm-up: the step rewrites this token's own cache slot each time
            for _ in range(2):
                self._run()
        torch.cuda.current_stream(self.model.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run()

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """ids, positions [B, 1] -> logits [B, vocab] (a buffer the next call overwrites)."""
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        self.slot.fill_(slot)
        if not self.graphs:
            return self._run()
        if self.graph is None:
            self._capture()
        assert self.graph is not None and self.logits is not None  # both set by _capture
        self.graph.replay()
        return self.logits
