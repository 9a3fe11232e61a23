"""Our PyTorch runtime: executes a model from any WeightSource (.apr, SafeTensors, GGUF).

transformers is deliberately never imported here; it serves only as the independent oracle in tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .device import resolve_device, resolve_dtype
from .generate import Generation


def open_weights(path: str | Path):
    """A path -> its WeightSource: .apr files through AprReader, everything else through open_source."""
    path = Path(path)
    if path.suffix == ".apr":
        from ..apr import AprReader

        return AprReader(path)
    from ..sources import open_source

    return open_source(path)


def load_model(source_or_path, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32):
    """Build the model for the source's architecture, weights dequantized once into `dtype` on `device`."""
    from ..arch import architecture_for

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    opened_here = isinstance(source_or_path, (str, Path))
    source = open_weights(source_or_path) if opened_here else source_or_path
    try:
        return architecture_for(source.config, source.path).build(source, dev, dt)
    finally:
        if opened_here:
            source.close()


__all__ = ["Generation", "load_model", "open_weights"]
