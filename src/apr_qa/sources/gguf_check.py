"""A bounds check of a GGUF file's header, key-value pairs and tensor infos, run before gguf-py parses it.

gguf-py's GGUFReader trusts every count it reads: an array that claims 2^31 items is walked item by
item past the end of the file (each read there yields an empty view, not an error), building a list
of 2^31 entries, and a tensor whose dims multiply past 2^64 wraps around to a small size. This walk
reads the same layout with plain struct reads and refuses, in one line, any count, length, type code,
dimension or tensor extent that the file cannot hold, so gguf-py only ever sees a file whose every
length fits in it.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import FormatError

# GGUFValueType code -> bytes of one scalar; STRING (8) and ARRAY (9) are walked.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MAX_ARRAY_NESTING = 4
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos, self.order = buf, path, 0, "<"

    def fail(self, what: str) -> FormatError:
        return FormatError(f"GGUF {what} (at byte {self.pos} of {len(self.buf)}; truncated or corrupt)", self.path)

    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(self.order + fmt)  # with the byte order: standard sizes, no padding
        if size > self.left():
            raise self.fail(f"{what} runs past the end of the file")
        values = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return values

    def skip(self, size: int, what: str) -> None:
        if size > self.left():
            raise self.fail(f"{what} claims {size} bytes, more than the file has left")
        self.pos += size

    def string(self, what: str) -> str:
        """The string's text (undecodable bytes replaced: this is for messages and key names)."""
        (length,) = self.take("Q", f"{what} length")
        start = self.pos
        self.skip(length, what)
        return bytes(self.buf[start: self.pos]).decode("utf-8", "replace")

    def value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in _SCALAR_BYTES:
            self.skip(_SCALAR_BYTES[kind], what)
        elif kind == _STRING:
            self.string(what)
        elif kind == _ARRAY:
            item_kind, count = self.take("IQ", f"{what} array header")
            if item_kind in _SCALAR_BYTES:
                self.skip(count * _SCALAR_BYTES[item_kind], f"{what} ({count} items)")
                return
            smallest = {_STRING: 8, _ARRAY: 12}.get(item_kind)
            if smallest is None:
                raise self.fail(f"{what} has unknown array item type {item_kind}")
            if count * smallest > self.left():
                raise self.fail(f"{what} claims {count} items, more than the file has room for")
            if item_kind == _ARRAY and depth >= _MAX_ARRAY_NESTING:
                raise self.fail(f"{what} nests arrays deeper than {_MAX_ARRAY_NESTING}")
            for _ in range(count):
                self.value(item_kind, what, depth + 1)
        else:
            raise self.fail(f"{what} has unknown value type {kind}")


def check_gguf_layout(path: Path) -> None:
    """FormatError naming `path` unless every count and extent of the GGUF's metadata fits the file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _walk(_Cursor(buf, path))
    except ValueError:  # mmap of an empty file
        raise FormatError("GGUF file is empty", path) from None
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror}", path) from None


def _walk(c: _Cursor) -> None:
    (magic,) = c.take("4s", "magic")
    if magic != b"GGUF":
        raise c.fail(f"magic {magic!r} is not b'GGUF'")
    (version,) = c.take("I", "version")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order (gguf-py reads those too)
        c.order = ">"
    n_tensors, n_kv = c.take("QQ", "counts")
    if n_kv * 13 > c.left():  # a key-value pair takes at least 13 bytes
        raise c.fail(f"header claims {n_kv} key-value pairs, more than the file has room for")
    if n_tensors * 24 > c.left():  # a tensor info takes at least 24 bytes
        raise c.fail(f"header claims {n_tensors} tensors, more than the file has room for")
    alignment = _DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = c.string(f"key {i}")
        (kind,) = c.take("I", f"type of key {key[:64]!r}")
        if key == "general.alignment" and kind == _UINT32:
            (alignment,) = struct.unpack_from(c.order + "I", c.buf, c.pos) if c.left() >= 4 else (0,)
        c.value(kind, f"value of key {key[:64]!r}")
    infos = []
    for i in range(n_tensors):
        name = c.string(f"name of tensor {i}")
        (n_dims,) = c.take("I", f"dims count of tensor {name[:64]!r}")
        if n_dims > _MAX_DIMS:
            raise c.fail(f"tensor {name[:64]!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = c.take(f"{n_dims}Q", f"dims of tensor {name[:64]!r}")
        ggml_type, offset = c.take("IQ", f"type and offset of tensor {name[:64]!r}")
        infos.append((name, dims, ggml_type, offset))
    if alignment == 0 or alignment & (alignment - 1):
        raise c.fail(f"general.alignment {alignment} is not a power of two")
    data_start = -(-c.pos // alignment) * alignment
    for name, dims, ggml_type, offset in infos:
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise c.fail(f"tensor {name[:64]!r} has unknown type {ggml_type}") from None
        if dims and dims[0] % block:
            raise c.fail(f"tensor {name[:64]!r}: rows of {dims[0]} values are not whole {block}-value blocks")
        size = math.prod(dims) // block * block_bytes
        if data_start + offset + size > len(c.buf):
            raise FormatError(f"GGUF tensor {name[:64]!r} (dims {list(dims)}) needs {size} bytes at data offset "
                              f"{offset}, past the end of the {len(c.buf)}-byte file", c.path)
