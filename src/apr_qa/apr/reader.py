"""Memory-mapped .apr v2 reader; also a `WeightSource`, so gates and runtime read .apr like any input.

Opening checks everything but the tensor bytes (header, flags, metadata, index, offsets); the
tensor data is only touched by `raw()`/`load()` and by `verify_checksum()`.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import FormatError
from ..sources.base import RawTensor, TensorInfo
from ..sources.hf_files import unpaired_surrogate
from .container import (ALIGN, FLAG_COLUMN_MAJOR, FOOTER_SIZE, HEADER_SIZE, MAGIC, MAX_METADATA_BYTES,
                        MAX_NAME_BYTES, MAX_NDIM, UNREADABLE_FLAGS, Header, TensorEntry,
                        flag_names, header_crc)

_CHUNK = 8 << 20


# Metadata keys the stack reads as structures, and the JSON types they must have.
_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "hf_config": (dict,), "tokenizer.json": (str,), "tokenizer.config": (dict,), "chat_template": (str,),
    "pooling": (dict, type(None)), "conversion_notes": (list,), "quantization": (dict,), "provenance": (dict,),
}


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # Python would accept NaN/Infinity; serde does not


class AprReader:
    format = "apr"

    def __init__(self, path: str | Path, verify: bool = False):
        """`verify`: also check the footer CRC over the whole file before returning (one streaming
        pass; loading a model for inference does, so a flipped byte is refused, not run)."""
        self.path = Path(path)
        self.files = [self.path]
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size < HEADER_SIZE + FOOTER_SIZE:
                    raise self._error(f"truncated: {self.file_size} bytes, less than the 64-byte header "
                                      "plus 4-byte footer")
                self._mm: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise self._error(f"cannot open: {exc.strerror}") from None
        try:
            self.header = self._read_header()
            self.metadata = self._read_metadata()
            self.entries = self._read_index()
            self._check_index()
            if verify:
                self.verify_checksum()
        except BaseException:
            self.close()
            raise
        self._by_name = {e.name: e for e in self.entries}

    def _error(self, message: str) -> FormatError:
        return FormatError(message, self.path)

    # -- parsing -------------------------------------------------------------------------------

    def _read_header(self) -> Header:
        raw = self._mapping()[:HEADER_SIZE]
        h = Header.unpack(raw)
        if h.magic != MAGIC:
            raise self._error(f"bad magic {h.magic.hex(' ')} (expected {MAGIC.hex(' ')}, 'APR\\0'): "
                              "not an .apr v2 file")
        if h.version[0] != 2:
            raise self._error(f"unsupported .apr version {h.version[0]}.{h.version[1]} (expected 2.x)")
        computed = header_crc(raw)
        if h.header_crc != computed:
            raise self._error(f"header CRC mismatch (stored 0x{h.header_crc:08x}, computed 0x{computed:08x})")
        if h.flags & FLAG_COLUMN_MAJOR:
            raise self._error("column-major layout flag 0x0800 set (LAYOUT-002): tensors were stored "
                              "without conversion to row-major; re-convert the model")
        if h.flags & UNREADABLE_FLAGS:
            names = flag_names(h.flags & UNREADABLE_FLAGS)
            raise self._error(f"flags {', '.join(names)} (0x{h.flags:04x}) are not supported by this reader")
        if h.metadata_offset != HEADER_SIZE:
            raise self._error(f"metadata offset {h.metadata_offset}, expected {HEADER_SIZE}")
        if h.metadata_size > MAX_METADATA_BYTES:
            raise self._error(f"metadata is {h.metadata_size} bytes, over the {MAX_METADATA_BYTES} byte limit")
        footer = self.file_size - FOOTER_SIZE
        for name, offset, after in (("tensor index", h.index_offset, HEADER_SIZE + h.metadata_size),
                                    ("data", h.data_offset, h.index_offset)):
            if offset % ALIGN or offset < after:
                raise self._error(f"{name} offset {offset} is not 64-byte aligned at or after byte {after}")
            if offset > footer:
                raise self._error(f"{name} offset {offset} is past the end of the file "
                                  f"({self.file_size} bytes; truncated?)")
        return h

    def _read_metadata(self) -> dict[str, Any]:
        start = self.header.metadata_offset
        raw = self._mapping()[start : start + self.header.metadata_size]
        try:
            meta = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self._error(f"metadata is not valid UTF-8 JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise self._error(f"metadata is a JSON {type(meta).__name__}, not an object")
        if b"\\u" in raw and unpaired_surrogate(meta):  # serde refuses these; Python would accept them
            raise self._error("metadata holds an unpaired UTF-16 surrogate escape")
        for key, kinds in _METADATA_TYPES.items():
            if key in meta and not isinstance(meta[key], kinds):
                raise self._error(f"metadata key {key!r} is a JSON {_json_type(meta[key])}, expected "
                                  f"{' or '.join(_json_type(k()) for k in kinds)}")
        return meta

    def _read_index(self) -> list[TensorEntry]:
        pos, end = self.header.index_offset, self.header.data_offset
        entries: list[TensorEntry] = []

        def take(fmt: str) -> tuple:
            nonlocal pos
            size = struct.calcsize(fmt)
            if pos + size > end:
                raise self._error(f"tensor index entry {len(entries)} runs past the index region "
                                  f"(into the data at byte {end})")
            values = struct.unpack_from(fmt, self._mapping(), pos)
            pos += size
            return values

        for i in range(self.header.tensor_count):
            (name_len,) = take("<H")
            if name_len > MAX_NAME_BYTES:
                raise self._error(f"tensor index entry {i}: name is {name_len} bytes (limit {MAX_NAME_BYTES})")
            (name_bytes,) = take(f"<{name_len}s")
            try:
                name = name_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise self._error(f"tensor index entry {i}: name {name_bytes!r} is not UTF-8") from None
            code, ndim = take("<BB")
            try:
                dtype = DType.from_code(code, where=f"tensor {name!r}")
            except FormatError as exc:
                raise self._error(str(exc)) from None
            if ndim > MAX_NDIM:
                raise self._error(f"tensor {name!r} has {ndim} dimensions (limit {MAX_NDIM})")
            shape = take(f"<{ndim}Q")
            offset, size = take("<QQ")
            entries.append(TensorEntry(name, dtype, tuple(shape), offset, size))
        return entries

    def _check_index(self) -> None:
        # Python orders str by code point, which is the UTF-8 byte order the Rust readers use.
        for a, b in pairwise(self.entries):
            if a.name == b.name:
                raise self._error(f"duplicate tensor name {a.name!r} in the index")
            if b.name < a.name:
                raise self._error(f"tensor index not sorted by name: {b.name!r} after {a.name!r}")
        data_len = self.file_size - FOOTER_SIZE - self.header.data_offset
        for e in self.entries:
            expected = e.dtype.nbytes(e.shape)
            if e.size != expected:
                raise self._error(f"tensor {e.name!r} size {e.size} does not match {e.dtype.name} "
                                  f"{e.shape} ({expected} bytes)")
            if e.offset % ALIGN:
                raise self._error(f"tensor {e.name!r} data offset {e.offset} is not 64-byte aligned")
            if e.offset + e.size > data_len:
                raise self._error(f"tensor {e.name!r} extends past end of data (offset+size "
                                  f"{e.offset + e.size} > {data_len} bytes of data; truncated?)")
        by_offset = sorted(self.entries, key=lambda e: e.offset)
        for a, b in pairwise(by_offset):
            if a.offset + a.size > b.offset:
                raise self._error(f"tensors {a.name!r} and {b.name!r} overlap in the data region")

    # -- container API -------------------------------------------------------------------------

    def verify_checksum(self) -> None:
        """Stream the file once and compare the footer CRC32 (FormatError on mismatch)."""
        footer = self.file_size - FOOTER_SIZE
        crc = 0
        with open(self.path, "rb") as f:  # plain reads: does not grow this process's mapped RSS
            remaining = footer
            while remaining:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    raise self._error("file shrank while verifying the footer CRC")
                crc = zlib.crc32(chunk, crc)
                remaining -= len(chunk)
            (stored,) = struct.unpack("<I", f.read(FOOTER_SIZE))
        if stored != crc:
            raise self._error(f"footer CRC mismatch (stored 0x{stored:08x}, computed 0x{crc:08x})")

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise self._error(f"no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of one tensor: a read-only uint8 view into the mapping (no copy)."""
        mapping, e = self._mapping(), self.entry(name)
        return np.frombuffer(mapping, np.uint8, e.size, self.header.data_offset + e.offset)

    def _mapping(self) -> mmap.mmap:
        if self._mm is None:
            raise self._error("reader is closed")
        return self._mm

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # arrays from raw() still view the mapping; it is unmapped when they are freed
            self._mm = None

    def __enter__(self) -> AprReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- WeightSource --------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self.metadata.get("hf_config", {})

    @property
    def tokenizer_json(self) -> str | None:
        return self.metadata.get("tokenizer.json")

    @property
    def tokenizer_config(self) -> dict[str, Any]:
        return self.metadata.get("tokenizer.config", {})

    @property
    def pooling_config(self) -> dict[str, Any] | None:
        return self.metadata.get("pooling")

    @property
    def notes(self) -> list[str]:
        return self.metadata.get("conversion_notes", [])

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(e.name, e.shape, e.dtype.name) for e in self.entries]

    def load(self, name: str) -> np.ndarray:
        from ..quant import dequantize

        e = self.entry(name)
        return dequantize(e.dtype, self.raw(name), e.shape)

    def load_raw(self, name: str) -> RawTensor:
        e = self.entry(name)
        return RawTensor(e.dtype, self.raw(name), e.shape)
