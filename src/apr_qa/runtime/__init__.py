"""Our PyTorch runtime: executes a model from any WeightSource (.apr, SafeTensors, GGUF).

transformers is deliberately never imported here; it serves only as the independent oracle in tests.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ..fsutil import sha256_file
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


def describe_weights(path: str | Path) -> dict[str, Any]:
    """Path, content hash, size and a metadata summary of a model file or folder."""
    source = open_weights(path)
    try:
        files = sorted(Path(f) for f in source.files)
        if source.format == "apr":
            meta = source.metadata
            quant = meta.get("quantization") or {}
            summary = {"architecture": meta.get("architecture"), "model_type": meta.get("model_type"),
                       "quantization": quant.get("level"), "weights_dtype": quant.get("weights_dtype"),
                       "param_count": meta.get("param_count"), "original_format": meta.get("original_format"),
                       "source": meta.get("source")}
        else:
            archs = source.config.get("architectures") or [None]
            summary = {"architecture": archs[0], "model_type": source.config.get("model_type"),
                       "quantization": "source", "weights_dtype": None, "param_count": None,
                       "original_format": source.format, "source": str(path)}
        fmt = source.format
    finally:
        source.close()
    if len(files) == 1 and files[0] == Path(path):
        digest = sha256_file(files[0])
    else:  # a folder: hash of "relative-path sha256" lines over every file the source reads
        lines = "".join(f"{f.relative_to(path) if f.is_relative_to(path) else f.name} {sha256_file(f)}\n"
                        for f in files)
        digest = hashlib.sha256(lines.encode()).hexdigest()
    return {"path": str(path), "format": fmt, "sha256": digest,
            "size_bytes": sum(os.path.getsize(f) for f in files), "files": [str(f) for f in files],
            "metadata": summary}


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
