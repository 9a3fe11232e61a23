"""PyTorch pickle checkpoints (pytorch_model.bin, *.pt, *.pth), refused unless explicitly allowed.

A pickle can run arbitrary code when loaded. Even with permission, loading goes through
torch.load(weights_only=True), whose restricted unpickler refuses anything but tensors and plain
containers; a refusal there is reported as a SecurityError too.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from ..dtypes import DType
from ..errors import FormatError, SecurityError
from .base import RawTensor, TensorInfo
from .hf_files import read_hf_files, read_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
INDEX_NAME = "pytorch_model.bin.index.json"


def pickle_files(path: Path) -> list[Path]:
    """The checkpoint files `path` (a folder or a file) stands for."""
    if path.is_file():
        return [path]
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        return [path / name for name in dict.fromkeys(weight_map.values())]
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"]
    found = sorted(f for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES and f.is_file())
    if len(found) != 1:
        raise FormatError(f"expected one PyTorch checkpoint file, found {len(found)}", path)
    return found


class PytorchSource:
    format = "pytorch"

    def __init__(self, path: str | Path, allow_pickle: bool = False):
        self.path = Path(path)
        weight_files = pickle_files(self.path)
        if not allow_pickle:
            raise SecurityError(
                "pickle checkpoint refused: loading it can execute arbitrary code "
                "(use SafeTensors, or allow pickle explicitly with --unsafe-allow-pickle)",
                weight_files[0],
            )
        folder = self.path if self.path.is_dir() else self.path.parent
        side = read_hf_files(folder)
        self.config, self.tokenizer_json = side.config, side.tokenizer_json
        self.tokenizer_config = side.tokenizer_config
        self.pooling_config = side.pooling_config
        names = ", ".join(f.name for f in weight_files)
        self.notes = [f"loaded from pickle with torch.load(weights_only=True): {names}"]
        self.files = [*side.files]
        if self.path.is_dir() and (self.path / INDEX_NAME).is_file():
            self.files.append(self.path / INDEX_NAME)
        self._state: dict = {}
        for f in weight_files:
            self._state.update(self._load_file(f))
            self.files.append(f)

    @staticmethod
    def _load_file(f: Path) -> dict:
        import torch

        if not f.is_file():
            raise FormatError("checkpoint file listed in the index is missing", f)
        try:
            # mmap keeps memory at one tensor at a time; only the zip format supports it.
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SecurityError(f"torch.load(weights_only=True) refused the pickle: {first}", f) from None
        except Exception as e:  # truncated zip, bad magic number, ...
            raise FormatError(f"not a readable PyTorch checkpoint: {type(e).__name__}: {e}", f) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FormatError("checkpoint is not a flat state dict of tensors", f)
        return state

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(t.shape), _dtype_name(t)) for n, t in self._state.items()]

    def load(self, name: str) -> np.ndarray:
        import torch

        return np.array(self._state[name].detach().to(torch.float32).numpy())

    def load_raw(self, name: str) -> RawTensor | None:
        import torch

        t = self._state[name].detach().contiguous()
        shape = tuple(t.shape)
        if t.dtype == torch.float32:
            return RawTensor(DType.F32, np.array(t.numpy()), shape)
        if t.dtype == torch.float16:
            return RawTensor(DType.F16, np.array(t.numpy()), shape)
        if t.dtype == torch.bfloat16:
            return RawTensor(DType.BF16, np.array(t.view(torch.int16).numpy().view(np.uint16)), shape)
        return None

    def close(self) -> None:
        self._state = {}


def _dtype_name(t) -> str:
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
            "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}.get(
        str(t.dtype).removeprefix("torch."), str(t.dtype).removeprefix("torch.").upper())
