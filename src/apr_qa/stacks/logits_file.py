"""The per-token logits of an evaluation (`apr-qa eval --logits FILE.npz`), kept beside its JSON.

The differential comparison of two stacks needs each stack's logits on the same prompt tokens; they
are too large for the JSON (SmolLM2: about 200 positions x 49152 float32 = 40 MB), so they live in an
uncompressed .npz (float32: exact values, no rounding between stacks that differ by 1e-6) whose
sha256 the evaluation JSON records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AprQaError, FormatError
from ..fsutil import atomic_path, sha256_file


def write_logits(path: str | Path, prompt_ids: list[str], token_ids: list[list[int]],
                 logits: list[torch.Tensor]) -> dict:
    """-> the `logits` block of the evaluation JSON's `stack` section."""
    arrays: dict[str, Any] = {"prompt_ids": np.array(prompt_ids, dtype=np.str_)}
    for i, (ids, rows) in enumerate(zip(token_ids, logits, strict=True)):
        arrays[f"tokens_{i}"] = np.asarray(ids, dtype=np.int64)
        arrays[f"logits_{i}"] = rows.detach().float().cpu().numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {"path": str(path), "sha256": sha256_file(path), "prompts": len(prompt_ids),
            "positions": sum(len(ids) for ids in token_ids), "dtype": "float32"}


def read_logits(path: str | Path, sha256: str | None = None) -> dict[str, tuple[list[int], torch.Tensor]]:
    """prompt id -> (token ids, [T, vocab] logits); the sha256, when given, must match."""
    path = Path(path)
    if not path.is_file():
        raise AprQaError("logits file not found (the evaluation was run without --logits?)", path)
    if sha256 is not None and sha256_file(path) != sha256:
        raise FormatError("logits file differs from the one its evaluation recorded (sha256)", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = [str(p) for p in data["prompt_ids"]]
            out = {}
            for i, pid in enumerate(ids):
                tokens, rows = data[f"tokens_{i}"], data[f"logits_{i}"]
                if rows.ndim != 2 or rows.shape[0] != len(tokens):
                    raise ValueError(f"prompt {pid}: {rows.shape} logits for {len(tokens)} tokens")
                out[pid] = (tokens.tolist(), torch.from_numpy(rows))
    except (OSError, KeyError, ValueError) as exc:
        raise FormatError(f"not an evaluation logits file: {' '.join(str(exc).split())}", path) from None
    return out
