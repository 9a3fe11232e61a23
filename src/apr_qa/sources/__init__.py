"""Weight sources: every model format read through one interface (see base.WeightSource)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .base import RawTensor, SourceSummary, TensorInfo, WeightSource
from .detect import detect_format

__all__ = ["open_source", "detect_format", "WeightSource", "TensorInfo", "RawTensor", "SourceSummary"]


def open_source(path: str | Path, allow_pickle: bool = False) -> WeightSource:
    """Open a HF folder (SafeTensors or PyTorch), a .safetensors/.gguf/.bin/.pt file."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        from .safetensors_source import SafetensorsSource

        return SafetensorsSource(path)
    if fmt == "gguf":
        from .gguf_source import GGUFSource

        if path.is_dir():
            found = sorted(path.glob("*.gguf"))
            if len(found) != 1:
                raise FormatError(f"expected one .gguf file in the folder, found {len(found)}", path)
            path = found[0]
        return GGUFSource(path)
    from .pytorch_source import PytorchSource

    return PytorchSource(path, allow_pickle=allow_pickle)
