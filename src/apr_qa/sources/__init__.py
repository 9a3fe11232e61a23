"""Weight sources: every model format read through one interface (see base.WeightSource)."""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .base import ModelSource, RawTensor, SourceSummary, TensorInfo, WeightSource
from .detect import detect_format

__all__ = ["open_source", "detect_format", "ModelSource", "WeightSource", "TensorInfo", "RawTensor", "SourceSummary"]


def open_source(path: str | Path, allow_pickle: bool = False) -> ModelSource:
    """Open a HF folder (SafeTensors or PyTorch), a .safetensors/.gguf/.bin/.pt file, presented in the
    canonical layout of its architecture (an unsupported architecture is refused here)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        from .safetensors_source import SafetensorsSource

        return _canonical(SafetensorsSource(path))
    if fmt == "gguf":
        from .gguf_source import GGUFSource

        if path.is_dir():
            found = sorted(path.glob("*.gguf"))
            if len(found) != 1:
                raise FormatError(f"expected one .gguf file in the folder, found {len(found)}", path)
            path = found[0]
        return GGUFSource(path)  # names and layouts made canonical while reading the GGUF tables
    from .pytorch_source import PytorchSource

    return _canonical(PytorchSource(path, allow_pickle=allow_pickle))


def _canonical(raw: WeightSource) -> ModelSource:
    """The checkpoint through its architecture; closed again when the architecture is refused."""
    from .canonical import CanonicalSource

    try:
        return CanonicalSource(raw)
    except BaseException:
        raw.close()
        raise
