"""Our PyTorch runtime: executes a model from any WeightSource (.apr, SafeTensors, GGUF).

transformers is deliberately never imported here; it serves only as the independent oracle in tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .device import resolve_device, resolve_dtype
from .generate import Generation
from .weights import WEIGHT_MODES, weights_mode


def open_weights(path: str | Path):
    """A path -> its WeightSource: .apr files through AprReader (footer CRC checked: a damaged
    artifact is refused, never run), everything else through open_source."""
    path = Path(path)
    if path.suffix == ".apr":
        from ..apr import AprReader

        return AprReader(path, verify=True)
    from ..sources import open_source

    return open_source(path)


def load_model(source_or_path, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32,
               weights: str = "packed"):
    """Build the model for the source's architecture on `device`. Float tensors load in `dtype`.
    weights="packed" (the default) keeps Q8_0/Q4_0/Q4_K/Q6_K matrices in their blocks and runs
    them with quantized kernels (runtime.packed); "dequantized" turns them into `dtype` floats once.
    The model's `weights` attribute records the mode."""
    from ..arch import architecture_for

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    opened_here = isinstance(source_or_path, (str, Path))
    source = open_weights(source_or_path) if opened_here else source_or_path
    try:
        with weights_mode(weights):
            model = architecture_for(source.config, source.path).build(source, dev, dt)
    finally:
        if opened_here:
            source.close()
    model.weights = weights
    _return_freed_memory()
    return model


def _return_freed_memory() -> None:
    """Give the heap pages that loading freed (per-tensor temporaries) back to the system, so a loaded
    model's resident memory is the model (glibc keeps freed heap blocks otherwise; measured +25 MB on
    SmolLM2 q4_0)."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


__all__ = ["WEIGHT_MODES", "Generation", "load_model", "open_weights"]
