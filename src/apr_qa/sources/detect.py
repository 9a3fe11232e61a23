"""Which weight format a path holds (gate C1): by magic bytes first, then by file name."""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import FormatError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def _looks_like_safetensors(head: bytes) -> bool:
    # u64 header length, then the JSON header's opening brace
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def detect_format(path: str | Path) -> str:
    """"safetensors" | "gguf" | "pytorch" for a model folder or weight file."""
    p = Path(path)
    if not p.exists():
        raise FormatError("no such file or folder", p)
    if p.is_dir():
        names = [f.name for f in p.iterdir() if f.is_file()]
        if any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
            return "safetensors"
        if any(n.endswith(".gguf") for n in names):
            return "gguf"
        if any(n.endswith(PICKLE_SUFFIXES) for n in names):
            return "pytorch"
        raise FormatError("no model weights found (expected *.safetensors, *.gguf, or pytorch_model.bin / *.pt)", p)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", p) from None
    if head[:4] == b"GGUF":
        return "gguf"
    if _looks_like_safetensors(head):
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / raw pickle protocol 2+
        return "pytorch"
    # A damaged file still gets the parser its name promises, which then says what is wrong.
    by_suffix = {".safetensors": "safetensors", ".gguf": "gguf", **dict.fromkeys(PICKLE_SUFFIXES, "pytorch")}
    if p.suffix in by_suffix:
        return by_suffix[p.suffix]
    raise FormatError("unrecognised model file (not SafeTensors, GGUF or a PyTorch checkpoint)", p)
