"""The .apr v2 container, checked byte by byte against its layout (src/apr_qa/apr/container.py, README).

Files are written by the real writer; corrupt files are made by patching bytes of a valid one and
re-fixing the CRCs that would otherwise fire first, so each test exercises the intended check.
"""

from __future__ import annotations

import gc
import json
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest

from apr_qa.apr import AprReader, AprWriter, Header, TensorEntry
from apr_qa.dtypes import DType
from apr_qa.errors import FormatError
from apr_qa.metadata import dumps
from apr_qa.sources.base import RawTensor, TensorInfo, WeightSource

RNG = np.random.default_rng(1234)
TOKENIZER = json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}}, "added_tokens": []})
META = {"name": "tiny", "model_type": "llama", "hf_config": {"hidden_size": 8},
        "tokenizer.json": TOKENIZER, "tokenizer.config": {"bos_token": "<s>"},
        "conversion_notes": ["Q4_1 dequantized to F32"], "note": "h\u00e9llo \u2603"}

# Deliberately not in name order, with shapes whose stored sizes are not multiples of 64.
PLAN = [
    TensorEntry("model.norm.weight", DType.F32, (7,)),
    TensorEntry("lm_head.weight", DType.Q8_0, (3, 64)),
    TensorEntry("model.embed_tokens.weight", DType.F16, (5, 3)),
    TensorEntry("a.q4k", DType.Q4_K, (2, 300)),
    TensorEntry("\u00e9t\u00e9.bf16", DType.BF16, (2, 2, 3)),
]


def payload(entry: TensorEntry) -> bytes:
    return RNG.integers(0, 256, entry.dtype.nbytes(entry.shape), dtype=np.uint8).tobytes()


def write(path: Path, plan=PLAN, meta=META, order=None) -> dict[str, bytes]:
    data = {e.name: payload(e) for e in plan}
    with AprWriter(path, meta, plan) as w:
        for name in order or [e.name for e in plan]:
            w.write(name, data[name])
    return data


# -- an independent parser of the reference layout (shares no code with the reader) ----------

def parse(buf: bytes) -> dict:
    (magic, major, minor, flags, count, meta_off, meta_size, index_off, data_off, crc,
     reserved) = struct.unpack_from("<4sBBHIQIQQI20s", buf, 0)
    entries, pos = [], index_off
    for _ in range(count):
        e = {"pos": pos}
        (n,) = struct.unpack_from("<H", buf, pos)
        e["name"] = buf[pos + 2 : pos + 2 + n].decode("utf-8")
        pos += 2 + n
        e["dtype_pos"] = pos
        e["dtype"], ndim = struct.unpack_from("<BB", buf, pos)
        pos += 2
        e["shape"] = struct.unpack_from(f"<{ndim}Q", buf, pos)
        pos += 8 * ndim
        e["offset_pos"] = pos
        e["offset"], e["size"] = struct.unpack_from("<QQ", buf, pos)
        pos += 16
        entries.append(e)
    return dict(magic=magic, version=(major, minor), flags=flags, count=count, meta_off=meta_off,
                meta_size=meta_size, index_off=index_off, index_end=pos, data_off=data_off, crc=crc,
                reserved=reserved, entries=entries)


def fix_header_crc(buf: bytearray) -> None:
    buf[40:44] = struct.pack("<I", zlib.crc32(bytes(buf[0:40]) + bytes(buf[44:64])))


def fix_footer(buf: bytearray) -> None:
    buf[-4:] = struct.pack("<I", zlib.crc32(bytes(buf[:-4])))


def patched(tmp_path: Path, patch, name="bad.apr") -> Path:
    """A valid file with `patch(buf)` applied and both CRCs recomputed afterwards."""
    src = tmp_path / "good.apr"
    write(src)
    buf = bytearray(src.read_bytes())
    patch(buf)
    fix_header_crc(buf)
    fix_footer(buf)
    out = tmp_path / name
    out.write_bytes(bytes(buf))
    return out


def rejected(path: Path, pattern: str, action=AprReader) -> str:
    with pytest.raises(FormatError) as info:
        action(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert re.search(pattern, message), message
    return message


def align64(n: int) -> int:
    return (n + 63) // 64 * 64


# -- byte layout -------------------------------------------------------------------------------

def test_layout_matches_the_reference_field_by_field(tmp_path):
    path = tmp_path / "m.apr"
    data = write(path)
    buf = path.read_bytes()
    p = parse(buf)

    assert buf[0:4] == b"APR\x00" and p["magic"] == b"APR\x00"
    assert buf[4] == 2 and buf[5] == 0
    assert p["flags"] == 0x0400 | 0x0020 | 0x0200  # row-major, quantized, has vocab
    assert p["count"] == len(PLAN)
    assert p["meta_off"] == 64
    assert p["crc"] == zlib.crc32(buf[0:40] + buf[44:64])
    assert p["reserved"] == bytes(20)

    meta = dumps(META)
    assert p["meta_size"] == len(meta)
    assert buf[64 : 64 + len(meta)] == meta
    assert json.loads(buf[64 : 64 + len(meta)]) == META
    assert p["index_off"] == 64 + align64(len(meta))
    assert buf[64 + len(meta) : p["index_off"]] == bytes(p["index_off"] - 64 - len(meta))

    names = [e["name"] for e in p["entries"]]
    assert names == sorted(e.name for e in PLAN)
    assert [n.encode() for n in names] == sorted(n.encode() for n in names)  # byte order, as in Rust
    assert p["data_off"] == align64(p["index_end"])
    assert buf[p["index_end"] : p["data_off"]] == bytes(p["data_off"] - p["index_end"])

    planned = {e.name: e for e in PLAN}
    for e in p["entries"]:
        want = planned[e["name"]]
        assert e["dtype"] == want.dtype.code
        assert e["shape"] == want.shape
        assert e["size"] == want.dtype.nbytes(want.shape)
        assert e["offset"] % 64 == 0 and (p["data_off"] + e["offset"]) % 64 == 0
        start = p["data_off"] + e["offset"]
        assert buf[start : start + e["size"]] == data[e["name"]]

    # Data is in plan order, each tensor padded with zeros to the next 64-byte boundary.
    by_offset = sorted(p["entries"], key=lambda e: e["offset"])
    assert [e["name"] for e in by_offset] == [e.name for e in PLAN]
    cursor = 0
    for e in by_offset:
        assert e["offset"] == cursor
        end = e["offset"] + e["size"]
        cursor = align64(end)
        assert buf[p["data_off"] + end : p["data_off"] + cursor] == bytes(cursor - end)

    assert len(buf) == p["data_off"] + cursor + 4
    assert struct.unpack("<I", buf[-4:])[0] == zlib.crc32(buf[:-4])


def test_reader_header_matches_the_bytes(tmp_path):
    path = tmp_path / "m.apr"
    write(path)
    p = parse(path.read_bytes())
    with AprReader(path) as r:
        h = r.header
        assert isinstance(h, Header)
        assert (h.version, h.flags, h.tensor_count, h.metadata_offset, h.metadata_size,
                h.index_offset, h.data_offset, h.header_crc) == (
            p["version"], p["flags"], p["count"], p["meta_off"], p["meta_size"], p["index_off"],
            p["data_off"], p["crc"])
        assert r.metadata == META
        assert [(e.name, e.dtype.code, e.shape, e.offset, e.size) for e in r.entries] == [
            (e["name"], e["dtype"], e["shape"], e["offset"], e["size"]) for e in p["entries"]]
        r.verify_checksum()


def test_flags_without_quantized_tensors_or_tokenizer_are_row_major_only(tmp_path):
    path = tmp_path / "f.apr"
    write(path, plan=[TensorEntry("w", DType.F16, (4, 4))], meta={"name": "x"})
    assert struct.unpack_from("<H", path.read_bytes(), 6)[0] == 0x0400
    with AprReader(path) as r:
        assert r.header.flags == 0x0400


def test_empty_plan_is_a_valid_file(tmp_path):
    path = tmp_path / "e.apr"
    write(path, plan=[], meta={})
    buf = path.read_bytes()
    assert len(buf) == 64 + 64 + 4  # header, "{}" padded, footer; empty index and data
    with AprReader(path) as r:
        assert r.entries == [] and r.metadata == {}
        r.verify_checksum()


# -- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DType), ids=lambda d: d.name)
def test_round_trip_every_dtype(tmp_path, dtype):
    plan = [TensorEntry("t", dtype, (3, 520)), TensorEntry("s", dtype, (33,))]
    path = tmp_path / f"{dtype.name}.apr"
    data = write(path, plan=plan, meta={})
    with AprReader(path) as r:
        for e in plan:
            raw = r.raw(e.name)
            assert raw.dtype == np.uint8 and raw.tobytes() == data[e.name]
            assert not raw.flags.owndata and not raw.flags.writeable  # a view into the mapping
            rt = r.load_raw(e.name)
            assert isinstance(rt, RawTensor) and rt.dtype is dtype and rt.shape == e.shape
            assert rt.data.tobytes() == data[e.name]
        assert r.tensors() == [TensorInfo("s", (33,), dtype.name), TensorInfo("t", (3, 520), dtype.name)]
        assert bool(r.header.flags & 0x0020) == dtype.is_quantized
        r.verify_checksum()


def test_numpy_arrays_are_stored_as_their_raw_bytes(tmp_path):
    arrays = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4),
              "f16": np.linspace(-1, 1, 10, dtype=np.float16),
              "q8": RNG.integers(0, 256, DType.Q8_0.nbytes((2, 64)), dtype=np.uint8).reshape(2, 68)}
    plan = [TensorEntry("f32", DType.F32, (3, 4)), TensorEntry("f16", DType.F16, (10,)),
            TensorEntry("q8", DType.Q8_0, (2, 64))]
    path = tmp_path / "n.apr"
    with AprWriter(path, {}, plan) as w:
        for name, a in arrays.items():
            w.write(name, a)
    with AprReader(path) as r:
        for name, a in arrays.items():
            assert r.raw(name).tobytes() == a.tobytes()


def test_write_order_does_not_change_the_file(tmp_path):
    in_plan, reverse = tmp_path / "a.apr", tmp_path / "b.apr"
    rng_state = RNG.bit_generator.state
    write(in_plan)
    RNG.bit_generator.state = rng_state  # same payloads
    write(reverse, order=[e.name for e in reversed(PLAN)])
    assert in_plan.read_bytes() == reverse.read_bytes()
    with AprReader(reverse) as r:
        r.verify_checksum()


def test_reader_is_a_weight_source(tmp_path):
    path = tmp_path / "m.apr"
    write(path)
    with AprReader(path) as r:
        assert isinstance(r, WeightSource)
        assert r.format == "apr" and r.path == path and r.files == [path]
        assert r.config == {"hidden_size": 8}
        assert r.tokenizer_json == TOKENIZER
        assert r.tokenizer_config == {"bos_token": "<s>"}
        assert r.notes == ["Q4_1 dequantized to F32"]
        assert [t.name for t in r.tensors()] == sorted(e.name for e in PLAN)
        rejected(path, r"no tensor named 'nope'", lambda _: r.raw("nope"))


def test_views_outlive_close(tmp_path):
    path = tmp_path / "m.apr"
    data = write(path)
    r = AprReader(path)
    view = r.raw("model.norm.weight")
    r.close()
    assert view.tobytes() == data["model.norm.weight"]
    rejected(path, "reader is closed", lambda _: r.raw("model.norm.weight"))


# -- load(): dequantized float32 in the tensor's shape ------------------------------------------

def test_load_float_types(tmp_path):
    values = RNG.standard_normal((4, 6)).astype(np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation: exactly representable
    plan = [TensorEntry("f32", DType.F32, (4, 6)), TensorEntry("f16", DType.F16, (4, 6)),
            TensorEntry("bf16", DType.BF16, (4, 6))]
    path = tmp_path / "f.apr"
    with AprWriter(path, {}, plan) as w:
        w.write("f32", values)
        w.write("f16", values.astype(np.float16))
        w.write("bf16", bf16)
    with AprReader(path) as r:
        for name, want in [("f32", values), ("f16", values.astype(np.float16).astype(np.float32)),
                           ("bf16", (bf16.astype(np.uint32) << 16).view(np.float32))]:
            got = r.load(name)
            assert got.dtype == np.float32 and got.shape == (4, 6)
            np.testing.assert_array_equal(got, want)


def _gguf_dequantize(dtype: DType, raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = math.prod(shape[:-1])
    out = dequantize(raw.reshape(rows, -1), GGMLQuantizationType[dtype.name])
    return out[:, : shape[-1]].reshape(shape)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K], ids=lambda d: d.name)
def test_load_block_types_matches_gguf(tmp_path, dtype):
    """load() of stored blocks equals gguf-py's dequantization of the same bytes (independent oracle)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    shape = (3, 512)
    if dtype in (DType.Q8_0, DType.Q4_0):
        raw = quantize(RNG.standard_normal(shape).astype(np.float32), GGMLQuantizationType[dtype.name])
    else:  # gguf-py cannot quantize K-types: random blocks with sane f16 scales
        raw = RNG.integers(0, 256, (shape[0], dtype.row_bytes(shape[1])), dtype=np.uint8)
        blocks = raw.reshape(-1, dtype.block_bytes)
        scale_at = [0, 2] if dtype is DType.Q4_K else [208]
        for at in scale_at:
            blocks[:, at : at + 2] = np.array([0.01], np.float16).view(np.uint8)
    path = tmp_path / "q.apr"
    with AprWriter(path, {}, [TensorEntry("w", dtype, shape)]) as w:
        w.write("w", np.ascontiguousarray(raw))
    with AprReader(path) as r:
        got = r.load("w")
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_allclose(got, _gguf_dequantize(dtype, r.raw("w"), shape), rtol=1e-6, atol=1e-7)


# -- the reader rejects corrupt files, one line naming the file --------------------------------

def _entry(buf, name):
    return next(e for e in parse(bytes(buf))["entries"] if e["name"] == name)


def test_rejects_bad_magic(tmp_path):
    path = patched(tmp_path, lambda b: b.__setitem__(slice(0, 4), b"APR!"))
    rejected(path, r"bad magic 41 50 52 21")


def test_rejects_other_major_version(tmp_path):
    path = patched(tmp_path, lambda b: b.__setitem__(4, 3))
    rejected(path, r"unsupported \.apr version 3\.0")


def test_accepts_newer_minor_version(tmp_path):
    path = patched(tmp_path, lambda b: b.__setitem__(5, 1))
    with AprReader(path) as r:
        assert r.header.version == (2, 1)


def test_rejects_bad_header_crc(tmp_path):
    src = tmp_path / "good.apr"
    write(src)
    buf = bytearray(src.read_bytes())
    buf[50] ^= 0xFF  # a reserved byte: covered by the header CRC
    path = tmp_path / "bad.apr"
    path.write_bytes(bytes(buf))
    stored = struct.unpack_from("<I", buf, 40)[0]
    computed = zlib.crc32(bytes(buf[0:40]) + bytes(buf[44:64]))
    rejected(path, rf"header CRC mismatch \(stored 0x{stored:08x}, computed 0x{computed:08x}\)")


def test_rejects_bad_footer_crc_on_verify(tmp_path):
    src = tmp_path / "good.apr"
    write(src)
    buf = bytearray(src.read_bytes())
    p = parse(bytes(buf))
    buf[p["data_off"] + _entry(buf, "lm_head.weight")["offset"] + 5] ^= 0x01  # one bit of tensor data
    path = tmp_path / "bad.apr"
    path.write_bytes(bytes(buf))
    with AprReader(path) as r:  # opening does not read tensor data
        rejected(path, r"footer CRC mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)",
                 lambda _: r.verify_checksum())


def test_rejects_column_major_flag(tmp_path):
    path = patched(tmp_path, lambda b: b.__setitem__(7, b[7] | 0x08))  # flags |= 0x0800
    rejected(path, r"column-major layout flag 0x0800")


@pytest.mark.parametrize("flag,name", [(0x0001, "lz4"), (0x0002, "zstd"), (0x0004, "encrypted"),
                                       (0x0008, "signed"), (0x0010, "sharded")])
def test_rejects_flags_it_cannot_honour(tmp_path, flag, name):
    path = patched(tmp_path, lambda b: b.__setitem__(6, b[6] | flag))
    rejected(path, rf"flags {name} .* not supported")


def test_rejects_offset_outside_the_data(tmp_path):
    def patch(b):
        e = _entry(b, "model.norm.weight")
        struct.pack_into("<Q", b, e["offset_pos"], align64(len(b)))
    rejected(patched(tmp_path, patch), r"tensor 'model.norm.weight' extends past end of data")


def test_rejects_size_not_matching_dtype_and_shape(tmp_path):
    def patch(b):
        e = _entry(b, "model.norm.weight")
        struct.pack_into("<Q", b, e["offset_pos"] + 8, e["size"] + 4)
    rejected(patched(tmp_path, patch), r"tensor 'model.norm.weight' size 32 does not match F32 \(7,\) \(28 bytes\)")


def test_rejects_unaligned_offset(tmp_path):
    def patch(b):
        e = _entry(b, "a.q4k")
        struct.pack_into("<Q", b, e["offset_pos"], e["offset"] + 4)
    rejected(patched(tmp_path, patch), r"tensor 'a.q4k' data offset \d+ is not 64-byte aligned")


def test_rejects_overlapping_tensors(tmp_path):
    def patch(b):
        struct.pack_into("<Q", b, _entry(b, "lm_head.weight")["offset_pos"], _entry(b, "model.norm.weight")["offset"])
    rejected(patched(tmp_path, patch), r"overlap")


def test_rejects_truncated_file(tmp_path):
    src = tmp_path / "good.apr"
    write(src)
    buf = src.read_bytes()
    p = parse(buf)
    cut = tmp_path / "cut.apr"
    cut.write_bytes(buf[: p["data_off"] + 100])
    rejected(cut, r"extends past end of data .*truncated")
    cut.write_bytes(buf[: p["index_off"] + 10])
    rejected(cut, r"data offset \d+ is past the end of the file")
    cut.write_bytes(buf[:40])
    rejected(cut, r"truncated: 40 bytes")


def test_rejects_unsorted_index(tmp_path):
    names = ["b.x", "b.y"]  # equal lengths, so swapping them keeps the index layout
    src = tmp_path / "good.apr"
    write(src, plan=[TensorEntry(n, DType.F32, (2,)) for n in names], meta={})
    buf = bytearray(src.read_bytes())
    for e, new in zip(parse(bytes(buf))["entries"], reversed(names), strict=True):
        buf[e["pos"] + 2 : e["pos"] + 2 + len(new)] = new.encode()
    fix_footer(buf)
    path = tmp_path / "bad.apr"
    path.write_bytes(bytes(buf))
    rejected(path, r"tensor index not sorted by name: 'b.x' after 'b.y'")


def test_rejects_duplicate_names_in_the_index(tmp_path):
    src = tmp_path / "good.apr"
    write(src, plan=[TensorEntry(n, DType.F32, (2,)) for n in ["b.x", "b.y"]], meta={})
    buf = bytearray(src.read_bytes())
    second = parse(bytes(buf))["entries"][1]
    buf[second["pos"] + 2 : second["pos"] + 5] = b"b.x"
    fix_footer(buf)
    path = tmp_path / "bad.apr"
    path.write_bytes(bytes(buf))
    rejected(path, r"duplicate tensor name 'b.x'")


def test_rejects_unknown_dtype_code(tmp_path):
    def patch(b):
        b[_entry(b, "lm_head.weight")["dtype_pos"]] = 99
    rejected(patched(tmp_path, patch), r"unknown tensor dtype code 99 for tensor 'lm_head.weight'")


def test_rejects_oversized_name_in_the_index(tmp_path):
    def patch(b):
        struct.pack_into("<H", b, parse(bytes(b))["entries"][0]["pos"], 300)
    rejected(patched(tmp_path, patch), r"tensor index entry 0: name is 300 bytes \(limit 256\)")


def test_rejects_too_many_dimensions_in_the_index(tmp_path):
    def patch(b):
        b[_entry(b, "a.q4k")["dtype_pos"] + 1] = 9
    rejected(patched(tmp_path, patch), r"tensor 'a.q4k' has 9 dimensions \(limit 8\)")


def test_rejects_index_running_into_the_data(tmp_path):
    def patch(b):
        struct.pack_into("<I", b, 8, 1000)  # tensor count
    rejected(patched(tmp_path, patch), r"tensor index entry \d+ runs past the index region")


def test_rejects_metadata_that_is_not_json(tmp_path):
    rejected(patched(tmp_path, lambda b: b.__setitem__(64, ord("x"))), r"metadata is not valid UTF-8 JSON")


def test_rejects_non_finite_numbers_in_metadata(tmp_path):
    # Python's json would accept NaN; the Rust readers (serde_json) would not.
    path = tmp_path / "nan.apr"
    meta = {"x": 1.5, "y": "pad"}
    write(path, plan=[], meta=meta)
    buf = bytearray(path.read_bytes())
    i = 64 + dumps(meta).index(b"1.5")
    buf[i : i + 3] = b"NaN"
    fix_footer(buf)
    path.write_bytes(bytes(buf))
    rejected(path, r"metadata is not valid UTF-8 JSON: NaN is not valid JSON")


def test_rejects_a_missing_file(tmp_path):
    rejected(tmp_path / "absent.apr", r"cannot open: No such file")


# -- the writer refuses bad plans and never leaves partial output ------------------------------

def test_writer_rejects_duplicate_names(tmp_path):
    plan = [TensorEntry("w", DType.F32, (2,)), TensorEntry("w", DType.F16, (2,))]
    rejected(tmp_path / "o.apr", r"duplicate tensor name 'w'", lambda p: AprWriter(p, {}, plan))


def test_writer_rejects_oversized_names(tmp_path):
    plan = [TensorEntry("\u00e9" * 129, DType.F32, (2,))]  # 258 UTF-8 bytes, 129 characters
    rejected(tmp_path / "o.apr", r"is 258 UTF-8 bytes \(limit 256\)", lambda p: AprWriter(p, {}, plan))
    AprWriter(tmp_path / "o.apr", {}, [TensorEntry("\u00e9" * 128, DType.F32, (2,))])  # 256: fine


def test_writer_rejects_too_many_dimensions(tmp_path):
    plan = [TensorEntry("w", DType.F32, (1,) * 9)]
    rejected(tmp_path / "o.apr", r"has 9 dimensions \(limit 8\)", lambda p: AprWriter(p, {}, plan))


def test_writer_rejects_oversized_metadata(tmp_path):
    meta = {"blob": "x" * (16 * 1024 * 1024)}
    rejected(tmp_path / "o.apr", r"metadata is \d+ bytes, over the 16777216 byte limit",
             lambda p: AprWriter(p, meta, []))


def test_writer_rejects_wrong_sizes_and_unplanned_or_repeated_tensors(tmp_path):
    out = tmp_path / "o.apr"
    plan = [TensorEntry("w", DType.Q4_0, (2, 64))]
    with AprWriter(out, {}, plan) as w:
        rejected(out, r"tensor 'w' has 10 bytes, expected 72 for Q4_0 \(2, 64\)", lambda _: w.write("w", bytes(10)))
        rejected(out, r"tensor 'v' is not in the plan", lambda _: w.write("v", bytes(72)))
        w.write("w", bytes(72))
        rejected(out, r"tensor 'w' written twice", lambda _: w.write("w", bytes(72)))
    with AprReader(out) as r:
        r.verify_checksum()


def _no_output(directory: Path) -> bool:
    return list(directory.iterdir()) == []


def test_writer_leaves_nothing_when_the_block_raises(tmp_path):
    out = tmp_path / "out" / "o.apr"
    with pytest.raises(RuntimeError, match="boom"):
        with AprWriter(out, META, PLAN) as w:
            w.write(PLAN[0].name, payload(PLAN[0]))
            raise RuntimeError("boom")
    assert _no_output(out.parent)


def test_writer_leaves_nothing_when_a_planned_tensor_is_missing(tmp_path):
    out = tmp_path / "out" / "o.apr"

    def unfinished(path):
        with AprWriter(path, META, PLAN) as w:
            w.write(PLAN[0].name, payload(PLAN[0]))

    msg = rejected(out, r"4 planned tensor\(s\) never written: ", unfinished)
    assert "'lm_head.weight'" in msg
    assert _no_output(out.parent)


def test_failed_write_keeps_the_previous_file(tmp_path):
    out = tmp_path / "o.apr"
    write(out)
    before = out.read_bytes()
    with pytest.raises(FormatError):
        with AprWriter(out, {}, [TensorEntry("w", DType.F32, (2,))]):
            pass
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.apr"]


# -- opening does not read tensor data --------------------------------------------------------

def test_opening_a_large_file_does_not_read_tensor_data(tmp_path):
    path = tmp_path / "big.apr"
    n = 50 * 1024 * 1024 // 4  # four 50 MB tensors
    plan = [TensorEntry(f"t{i}", DType.F32, (n,)) for i in range(4)]
    with AprWriter(path, {"name": "big"}, plan) as w:
        for e in plan:
            w.write(e.name, np.full(n, float(e.name[1:]), dtype=np.float32))
    gc.collect()
    proc = psutil.Process()
    before = proc.memory_info().rss
    r = AprReader(path)
    views = [r.raw(e.name) for e in r.entries]  # views only: nothing is paged in
    grown = proc.memory_info().rss - before
    print(f"\nopen {path.stat().st_size / 2**20:.0f} MB .apr + 4 raw views: RSS grew {grown / 2**20:.2f} MB")
    assert path.stat().st_size > 200 * 2**20
    assert grown < 50 * 2**20
    assert float(views[3][-4:].view(np.float32)[0]) == 3.0
    del views
    r.close()


# -- real data ---------------------------------------------------------------------------------

@pytest.mark.real_model
def test_real_safetensors_round_trip(tmp_path, minilm_dir):
    """Every F32 tensor of all-MiniLM-L6-v2 survives writer -> reader byte for byte."""
    from safetensors import safe_open

    path = tmp_path / "minilm.apr"
    meta = {"hf_config": json.loads((minilm_dir / "config.json").read_text()),
            "tokenizer.json": (minilm_dir / "tokenizer.json").read_text()}
    with safe_open(minilm_dir / "model.safetensors", "np") as st:
        names = [k for k in st.keys() if st.get_slice(k).get_dtype() == "F32"]
        plan = [TensorEntry(k, DType.F32, tuple(st.get_slice(k).get_shape())) for k in names]
        with AprWriter(path, meta, plan) as w:
            for k in names:
                w.write(k, st.get_tensor(k))
        with AprReader(path) as r:
            r.verify_checksum()
            assert r.header.flags == 0x0600 and len(r.entries) == len(names) == 103
            assert r.config["hidden_size"] == 384
            for k in names:
                assert r.raw(k).tobytes() == st.get_tensor(k).tobytes(), k
