"""Byte layout of the .apr v2 container: header, tensor index entries, flags and limits.

Follows the APR v2 layout that the aprender and realizar readers expect (see README, "The .apr v2 container"). All
integers are little-endian; every section and every tensor starts on a 64-byte boundary.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..dtypes import DType

MAGIC = b"APR\x00"
VERSION = (2, 0)
HEADER_SIZE = 64
FOOTER_SIZE = 4  # CRC32 of every byte before it
ALIGN = 64
MAX_NAME_BYTES = 256
MAX_NDIM = 8
MAX_METADATA_BYTES = 16 * 1024 * 1024

# magic, major, minor, flags, tensor count, metadata offset, metadata size, index offset,
# data offset, header CRC, 20 reserved bytes
_HEADER = struct.Struct("<4sBBHIQIQQI20s")
assert _HEADER.size == HEADER_SIZE
_CRC_FIELD = slice(40, 44)

FLAG_NAMES = {
    0x0001: "lz4",
    0x0002: "zstd",
    0x0004: "encrypted",
    0x0008: "signed",
    0x0010: "sharded",
    0x0020: "quantized",
    0x0040: "filterbank",
    0x0080: "model_card",
    0x0100: "streaming",
    0x0200: "has_vocab",
    0x0400: "row_major",
    0x0800: "column_major",
}
FLAG_QUANTIZED = 0x0020
FLAG_HAS_VOCAB = 0x0200
FLAG_ROW_MAJOR = 0x0400
FLAG_COLUMN_MAJOR = 0x0800
# Flags that change how the bytes must be read; this reader cannot honour them.
UNREADABLE_FLAGS = 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0010


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pad(data: bytes) -> bytes:
    return data + bytes(align(len(data)) - len(data))


def flag_names(flags: int) -> list[str]:
    names = [name for bit, name in FLAG_NAMES.items() if flags & bit]
    unknown = flags & ~sum(FLAG_NAMES)
    return names + ([f"unknown_0x{unknown:04x}"] if unknown else [])


def header_crc(raw: bytes) -> int:
    """CRC32 over the 64 header bytes minus the CRC field itself (bytes 40..44)."""
    return zlib.crc32(raw[_CRC_FIELD.stop :], zlib.crc32(raw[: _CRC_FIELD.start]))


@dataclass(frozen=True)
class Header:
    version: tuple[int, int]
    flags: int
    tensor_count: int
    metadata_offset: int
    metadata_size: int
    index_offset: int
    data_offset: int
    header_crc: int = 0
    magic: bytes = MAGIC
    reserved: bytes = bytes(20)

    def pack(self) -> bytes:
        """The 64 header bytes, with the CRC field computed from the others."""
        raw = _HEADER.pack(self.magic, *self.version, self.flags, self.tensor_count,
                           self.metadata_offset, self.metadata_size, self.index_offset,
                           self.data_offset, 0, self.reserved)
        return raw[: _CRC_FIELD.start] + struct.pack("<I", header_crc(raw)) + raw[_CRC_FIELD.stop :]

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        (magic, major, minor, flags, count, meta_off, meta_size, index_off, data_off, crc,
         reserved) = _HEADER.unpack(raw)
        return cls((major, minor), flags, count, meta_off, meta_size, index_off, data_off, crc,
                   magic, reserved)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    offset: int = 0   # relative to the data offset
    size: int = 0     # stored bytes, unpadded

    def pack(self) -> bytes:
        """Index entry: name length u16, name, dtype u8, ndim u8, dims u64..., offset u64, size u64."""
        name = self.name.encode("utf-8")
        return (struct.pack("<H", len(name)) + name
                + struct.pack(f"<BB{len(self.shape)}QQQ", self.dtype.code, len(self.shape),
                              *self.shape, self.offset, self.size))
