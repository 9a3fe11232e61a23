"""Device and dtype selection, and timing that is honest on asynchronous devices."""

from __future__ import annotations

import time

import torch

from ..errors import UnsupportedError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"cpu", "cuda", "cuda:N" or "auto" (CUDA when present). CUDA without a GPU is an error, not a fallback."""
    name = str(device or "cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError("CUDA requested but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise UnsupportedError(f"device {name!r} is not supported (use cpu or cuda)")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise UnsupportedError(f"runtime dtype {dtype} is not supported (float32, float16, bfloat16)")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise UnsupportedError(f"runtime dtype {dtype!r} is not supported (float32, float16, bfloat16)") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read afterwards measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()
