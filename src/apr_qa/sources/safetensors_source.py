"""SafeTensors checkpoints (single file or sharded with an index), read via memory maps.

The header is parsed here rather than with `safetensors.safe_open` so that every structural
problem (corrupt JSON, offsets past the end, a size that disagrees with the shape) becomes a
one-line FormatError naming the file, and so that BF16 can be widened without torch.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import DType
from ..errors import FormatError, UnsupportedError
from .base import RawTensor, TensorInfo
from .hf_files import read_hf_files, read_json

INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100_000_000  # the safetensors library's own limit (MAX_HEADER_SIZE)

# dtype -> (bytes per element, numpy dtype to read it as; None = needs conversion code)
_DTYPES: dict[str, tuple[int, str | None]] = {
    "F64": (8, "<f8"), "F32": (4, "<f4"), "F16": (2, "<f2"), "BF16": (2, None),
    "I64": (8, "<i8"), "I32": (4, "<i4"), "I16": (2, "<i2"), "I8": (1, "i1"),
    "U8": (1, "u1"), "BOOL": (1, "?"), "F8_E4M3": (1, None), "F8_E5M2": (1, None),
}
_RAW = {"F32": (DType.F32, "<f4"), "F16": (DType.F16, "<f2"), "BF16": (DType.BF16, "<u2")}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen BF16 bit patterns (uint16) to float32 exactly: BF16 is the top half of an f32."""
    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: a second float32-sized temporary would be 524 MB for a 7B embedding
    return wide.view(np.float32)


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _count(value: Any) -> bool:
    """A JSON unsigned integer (bool is an int to Python, not to JSON)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, spec: Any, path: Path) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, offsets relative to the data section."""
    if not isinstance(spec, dict):
        raise FormatError(f"tensor {name!r}: malformed header entry", path)
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not (isinstance(shape, list) and all(map(_count, shape))
            and isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
        raise FormatError(f"tensor {name!r}: malformed header entry", path)
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise FormatError(f"tensor {name!r}: unknown dtype {dtype!r}", path)
    begin, end = offsets
    if end < begin:
        raise FormatError(f"tensor {name!r}: data offsets [{begin}, {end}] end before they begin", path)
    if end - begin != math.prod(shape) * _DTYPES[dtype][0]:
        raise FormatError(f"tensor {name!r}: {end - begin} bytes do not fit {dtype} shape {shape}", path)
    return dtype, tuple(shape), begin, end


class _Shard:
    """One .safetensors file: its validated header, and tensor bytes read on demand.

    Plain reads rather than a memory map: mapped pages a converter has touched stay in its RSS
    until unmapped, so peak memory would grow with the model instead of its largest tensor.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries = self._read_header(path)
        self._file: io.BufferedReader | None = None

    @staticmethod
    def _read_header(path: Path) -> dict[str, _Entry]:
        """The header, checked as strictly as the safetensors library checks it (and a little more:
        duplicate JSON keys are refused rather than resolved): a size limit, a JSON object with
        string-to-string __metadata__, known dtypes, dtype x shape = byte length, and tensors that
        cover the data section exactly: contiguous, no gaps, no overlaps, no trailing bytes."""
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise FormatError("file too short for a safetensors header", path)
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER:
                    raise FormatError(f"header length {n} is over the {_MAX_HEADER}-byte limit", path)
                if 8 + n > size:
                    raise FormatError(f"header length {n} exceeds the file size {size}", path)
                raw = f.read(n)
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", path) from None
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise FormatError(f"corrupt safetensors header JSON: {e}", path) from None
        if not isinstance(header, dict):
            raise FormatError("safetensors header is not a JSON object", path)
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, str) for v in metadata.values())):
            raise FormatError("__metadata__ is not a map of strings to strings", path)

        data_start, data_size = 8 + n, size - 8 - n
        relative = {name: _entry(name, spec, path) for name, spec in header.items()}
        for name, (_, _, begin, end) in relative.items():
            if end > data_size:
                raise FormatError(f"tensor {name!r}: data offsets [{begin}, {end}] outside the {data_size}-byte data "
                                  "section (truncated?)", path)
        covered = 0  # the library's rule: sorted by offsets, each tensor starts where the previous ended
        for name, (_, _, begin, end) in sorted(relative.items(), key=lambda kv: (kv[1][2], kv[1][3])):
            if begin != covered:
                problem = ("overlaps the previous tensor" if begin < covered
                           else f"leaves a gap of {begin - covered} bytes")
                raise FormatError(f"tensor {name!r}: data offsets [{begin}, {end}] {problem}", path)
            covered = end
        if covered != data_size:  # every end is within the data, so covered < data_size
            raise FormatError(f"{data_size - covered} trailing bytes after the last tensor (the safetensors "
                              "library refuses a file its tensors do not cover)", path)
        return {name: _Entry(dtype, shape, data_start + begin, data_start + end)
                for name, (dtype, shape, begin, end) in relative.items()}

    def bytes_of(self, e: _Entry) -> np.ndarray:
        """A fresh buffer holding the tensor's bytes (owned by the caller)."""
        if self._file is None:
            self._file = open(self.path, "rb")
        buf = np.empty(e.end - e.begin, dtype=np.uint8)
        self._file.seek(e.begin)
        if self._file.readinto(buf.data) != buf.size:
            raise FormatError(f"file ends inside tensor data at offset {e.begin}", self.path)
        return buf

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SafetensorsSource:
    format = "safetensors"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        folder = self.path if self.path.is_dir() else self.path.parent
        side = read_hf_files(folder)
        self.config = side.config
        self.tokenizer_json = side.tokenizer_json
        self.tokenizer_config = side.tokenizer_config
        self.pooling_config = side.pooling_config
        self.notes: list[str] = []
        self.files: list[Path] = list(side.files)
        self._shards: list[_Shard] = []
        self._where: dict[str, tuple[_Shard, _Entry]] = {}

        index_path = folder / INDEX_NAME
        if self.path.is_dir() and index_path.is_file():
            self.files.append(index_path)
            self._open_indexed(folder, index_path)
        else:
            shard = _Shard(self._single_file(folder))
            self._shards.append(shard)
            self.files.append(shard.path)
            self._where = {name: (shard, e) for name, e in shard.entries.items()}
        # Stable order: file order, then position in the file (sequential reads when converting).
        order = {id(s): i for i, s in enumerate(self._shards)}
        self._names = sorted(self._where, key=lambda n: (order[id(self._where[n][0])], self._where[n][1].begin))

    def _single_file(self, folder: Path) -> Path:
        if self.path.is_file():
            return self.path
        if (folder / "model.safetensors").is_file():
            return folder / "model.safetensors"
        found = sorted(folder.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        problem = "no .safetensors file" if not found else f"{len(found)} .safetensors files but no {INDEX_NAME}"
        raise FormatError(problem, folder)

    def _open_indexed(self, folder: Path, index_path: Path) -> None:
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise FormatError("index has no weight_map", index_path)
        for shard_name in weight_map.values():  # a file of this folder, never a path out of it
            if not isinstance(shard_name, str) or shard_name in ("", ".", "..") or Path(shard_name).name != shard_name:
                raise FormatError(f"weight_map names {shard_name!r:.100}, not a file name in the model folder",
                                  index_path)
        shards: dict[str, _Shard] = {}
        for shard_name in dict.fromkeys(weight_map.values()):
            shard_path = folder / shard_name
            try:
                present = shard_path.is_file()
            except OSError:  # a name the file system refuses (too long)
                raise FormatError(f"weight_map names {shard_name!r:.100}, not a file name in the model folder",
                                  index_path) from None
            if not present:
                raise FormatError(f"shard listed in {INDEX_NAME} is missing", shard_path)
            shards[shard_name] = _Shard(shard_path)
        self._shards = list(shards.values())
        self.files.extend(s.path for s in self._shards)
        for name, shard_name in weight_map.items():
            shard = shards[shard_name]
            if name not in shard.entries:
                raise FormatError(f"tensor {name!r} is listed in {INDEX_NAME} but absent from this shard", shard.path)
            self._where[name] = (shard, shard.entries[name])
        extra = sum(len(s.entries) for s in self._shards) - len(self._where)
        if extra:
            self.notes.append(f"{extra} tensors present in shards but not in {INDEX_NAME} were ignored")

    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(n, self._where[n][1].shape, self._where[n][1].dtype) for n in self._names]

    def load(self, name: str) -> np.ndarray:
        shard, e = self._where[name]
        data = shard.bytes_of(e)
        if e.dtype == "BF16":
            out = bf16_to_f32(data.view("<u2"))
        elif (np_dtype := _DTYPES[e.dtype][1]) is None:
            raise UnsupportedError(f"tensor {name!r}: dtype {e.dtype} cannot be read", shard.path)
        else:
            out = data.view(np_dtype).astype(np.float32, copy=False)
        return out.reshape(e.shape)

    def load_raw(self, name: str) -> RawTensor | None:
        shard, e = self._where[name]
        if e.dtype not in _RAW:
            return None
        dtype, np_dtype = _RAW[e.dtype]
        return RawTensor(dtype, shard.bytes_of(e).view(np_dtype).reshape(e.shape), e.shape)

    def close(self) -> None:
        for s in self._shards:
            s.close()
