"""Hypothesis strategies that corrupt real files, structure-aware where the format has structure.

Binary formats: the integer fields of a GGUF or .apr (counts, lengths, dims, type codes, offsets)
are overwritten with boundary values or nudged, bytes inside strings are flipped, and the file is
truncated, spliced or given trailing bytes. JSON and YAML documents get one value replaced by a
value of another type or a hostile one (huge numbers, NaN, lone surrogates, deep nesting, YAML
alias bombs), a key renamed or removed, or their text damaged.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

# Boundary values for integer fields: lengths and counts that overflow 32/64 bits or claim far more
# than the file holds (2^40 elements, 2^31 tokens), type codes just past the known ones.
INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, 9, 13, 30, 31, 32, 33, 63, 64, 127, 128, 255, 256, 1023, 0x7FFF, 0xFFFF,
                    2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1)

# JSON values of every type, including ones that break naive code (NaN, 2^64, lone surrogates).
HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, 3, 7, 2**31, 2**40, 2**64, -(2**63), 0.5, -1.5, 1e308, float("nan"),
    float("inf"), "", "x", "\x00", "\ud800", "llama", "LlamaForCausalLM", "gpt2", "F32", "../x", "/etc/passwd",
    "a" * 50_000, [], [0], [[]], ["x", "y"], [2**40], {}, {"a": None}, {"type": "BPE"},
)
BYTE_VALUES = (0x00, 0x01, 0x20, 0x22, 0x2C, 0x5C, 0x7B, 0x7D, 0x7F, 0x80, 0xC0, 0xFF)


@dataclass(frozen=True)
class Field:
    """An integer field of a binary file: where it is and how wide."""

    offset: int
    width: int


@dataclass
class Layout:
    """Where to aim in a binary file: named groups of integer fields and of byte spans (strings)."""

    fields: dict[str, list[Field]]
    spans: dict[str, list[tuple[int, int]]]
    hot_end: int  # bytes before this are structure (header, metadata, index), after it tensor data
    named: dict[str, int] = field(default_factory=dict)  # offsets of particular fields, e.g. "tokens.count"


class Sample:
    """A pristine file's bytes and layout, with a short repr (hypothesis prints strategy arguments)."""

    def __init__(self, name: str, data: bytes, layout: Layout):
        self.name, self.data, self.layout = name, data, layout

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self.data)} bytes>"


class Doc:
    """A pristine JSON-like document and its paths, with a short repr."""

    def __init__(self, name: str, tree: Any):
        self.name, self.tree, self.paths = name, tree, paths_of(tree)

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self.paths)} paths>"


class Mutated(tuple):
    """(mutated value, description), shown by its description alone when hypothesis reports a draw."""

    def __repr__(self) -> str:
        return f"<{self[-1]}>"


def _set_int(buf: bytearray, field: Field, value: int) -> None:
    if field.offset + field.width <= len(buf):
        value %= 1 << (8 * field.width)
        buf[field.offset: field.offset + field.width] = value.to_bytes(field.width, "little")


def _get_int(buf: bytearray, field: Field) -> int:
    return int.from_bytes(buf[field.offset: field.offset + field.width], "little")


@st.composite
def binary_mutation(draw, sample: Sample, resize: bool = True):
    """1-3 mutations of the sample's bytes; (mutated bytes, a short description)."""
    buf, layout = bytearray(sample.data), sample.layout
    rnd = draw(st.randoms(use_true_random=False))  # uniform positions (hypothesis's integers favour small ones)
    kinds = ["flip"] + (["field"] * 3 if layout.fields else []) + (["span"] * 2 if layout.spans else [])
    kinds += ["truncate", "append", "splice"] if resize else []
    done = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "field":
            group = draw(st.sampled_from(sorted(layout.fields)))
            field = rnd.choice(layout.fields[group])
            if draw(st.booleans()):
                value = draw(st.sampled_from(INTERESTING_INTS))
            else:
                value = _get_int(buf, field) + draw(st.sampled_from((-64, -8, -2, -1, 1, 2, 8, 64)))
            _set_int(buf, field, value)
            done.append(f"{group}@{field.offset}={value}")
        elif kind == "span":
            group = draw(st.sampled_from(sorted(layout.spans)))
            start, length = rnd.choice(layout.spans[group])
            pos = start + rnd.randrange(max(length, 1))
            if pos < len(buf):
                buf[pos] = draw(st.sampled_from(BYTE_VALUES + (buf[pos] ^ 0x01, buf[pos] ^ 0x20)))
                done.append(f"{group}-byte@{pos}")
        elif kind == "flip" and buf:
            hot = max(min(layout.hot_end, len(buf)) - 1, 0)
            pos = rnd.randint(0, hot) if draw(st.booleans()) else rnd.randrange(len(buf))
            buf[pos] ^= draw(st.integers(1, 255))
            done.append(f"flip@{pos}")
        elif kind == "truncate" and buf:
            cut = rnd.randint(0, min(layout.hot_end, len(buf))) if draw(st.booleans()) else rnd.randint(0, len(buf))
            del buf[cut:]
            done.append(f"truncate@{cut}")
        elif kind == "append":
            extra = draw(st.one_of(st.sampled_from((b"\x00", b" ", b"\x00" * 64, b"{}")),
                                   st.binary(min_size=1, max_size=64)))
            buf += extra
            done.append(f"append{len(extra)}")
        elif kind == "splice" and buf:
            pos = rnd.randint(0, len(buf))
            removed = draw(st.integers(0, 16))
            inserted = draw(st.binary(max_size=16))
            buf[pos: pos + removed] = inserted
            done.append(f"splice@{pos}-{removed}+{len(inserted)}")
    return Mutated((bytes(buf), " ".join(done)))


# --- JSON / YAML documents --------------------------------------------------------------------

def paths_of(doc: Any, limit: int = 200_000) -> list[tuple]:
    """Every path (tuple of keys/indices) in a JSON-like tree, breadth first, at most `limit`."""
    out, queue = [], [((), doc)]
    while queue and len(out) < limit:
        nxt = []
        for path, node in queue:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, child in items:
                out.append((*path, key))
                nxt.append(((*path, key), child))
        queue = nxt
    return out[:limit]


def _parent(doc: Any, path: tuple) -> Any:
    node = doc
    for key in path[:-1]:
        node = node[key]
    return node


def _copy_path(root: Any, path: tuple) -> tuple[Any, Any]:
    """(a shallow copy of root, the parent of `path` in it), every container on the way copied."""
    root = copy.copy(root)
    node = root
    for key in path[:-1]:
        node[key] = copy.copy(node[key])
        node = node[key]
    return root, node


def _deep(depth: int) -> Any:
    node: Any = 0
    for _ in range(depth):
        node = [node]
    return node


@st.composite
def document_mutation(draw, pristine: Doc, extra_values: tuple = ()):
    """1-2 structural edits of a deep copy of the document: (new document, description)."""
    doc, paths = pristine.tree, pristine.paths
    shallow = [p for p in paths if len(p) <= 3] or paths
    rnd = draw(st.randoms(use_true_random=False))
    done = []
    for _ in range(draw(st.integers(1, 2))):
        if not paths:
            break
        path = rnd.choice(shallow) if draw(st.booleans()) else rnd.choice(paths)
        try:
            new_doc, parent = _copy_path(doc, path)  # the pristine tree is shared by every example
            key = path[-1]
            old = parent[key]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit of this example changed the tree on this path
        if not isinstance(parent, (dict, list)):
            continue  # ... into a string
        doc = new_doc
        kind = draw(st.sampled_from(("replace", "replace", "replace", "nudge", "delete", "rename", "deep")))
        if kind == "replace":
            parent[key] = draw(st.sampled_from(HOSTILE_VALUES + tuple(extra_values)))
        elif kind == "nudge" and isinstance(old, (int, float)) and not isinstance(old, bool):
            parent[key] = draw(st.sampled_from((0, -1, 1, 2**31, 2**63))) if draw(st.booleans()) else \
                old * draw(st.sampled_from((-1, 0.5, 2, 1000))) + draw(st.sampled_from((0, 1, -1)))
        elif kind == "nudge" and isinstance(old, str):
            parent[key] = draw(st.sampled_from((old[1:], old[:-1], old + old, old.upper(), old + "\u2581", " " + old)))
        elif kind == "delete":
            del parent[key]
        elif kind == "rename" and isinstance(parent, dict):
            new_key = draw(st.sampled_from(("", "x", key + "_", key.upper(), "\u0120" + key, key[1:] or "y")))
            parent[new_key] = parent.pop(key)
        elif kind == "deep":
            parent[key] = _deep(draw(st.sampled_from((50, 200))))  # deeper: text_damage "nest"
        done.append(f"{kind} {'/'.join(map(str, path))[:80]}")
    return Mutated((doc, "; ".join(done)))


def dump_json(doc: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


class Text(bytes):
    """Bytes of a text document, with a short repr."""

    def __repr__(self) -> str:
        return f"<text: {len(self)} bytes>"


@st.composite
def text_damage(draw, data: bytes):
    """Damage to a text document's bytes: truncation, junk, invalid UTF-8, a BOM, very deep nesting."""
    return Mutated(draw(_text_damage(data)))


@st.composite
def _text_damage(draw, data: bytes):
    kind = draw(st.sampled_from(("truncate", "insert", "invalid-utf8", "bom", "nest", "flip")))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))], kind
    pos = draw(st.integers(0, len(data)))
    if kind == "insert":
        junk = draw(st.sampled_from((b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\n", b"\t", b"- ", b"&a ",
                                     b"*a", b"!!python/object:os.system")))
        return data[:pos] + junk + data[pos:], kind
    if kind == "invalid-utf8":
        return data[:pos] + b"\xff\xfe\xc0" + data[pos:], kind
    if kind == "bom":
        return b"\xef\xbb\xbf" + data, kind
    if kind == "nest":
        depth = draw(st.sampled_from((2000, 100_000)))
        return data[:pos] + b"[" * depth + data[pos:], kind
    if data:
        flipped = bytearray(data)
        flipped[min(pos, len(data) - 1)] ^= draw(st.integers(1, 255))
        return bytes(flipped), kind
    return data, kind


# YAML anchors that expand to 10^8 nodes: a loader that follows aliases blindly, or anything that
# walks or prints the loaded tree, hangs.
ALIAS_BOMB = "".join(
    [f"_bomb0: &b0 [{', '.join(['lol'] * 10)}]\n"]
    + [f"_bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 9)]
)


def yaml_with_bomb(doc: dict, path: tuple) -> bytes:
    """`doc` as YAML with the value at `path` replaced by an alias to the bomb's top level."""
    import yaml

    doc = json.loads(json.dumps(doc))
    _parent(doc, path)[path[-1]] = "__BOMB__"
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return (ALIAS_BOMB + text.replace("__BOMB__", "*b8").replace("'*b8'", "*b8")).encode("utf-8")


# --- locating fields ---------------------------------------------------------------------------

def gguf_layout(path) -> Layout:
    """Integer fields and string spans of a GGUF file, found with gguf-py's reader on the pristine file,
    grouped so that each kind of field is aimed at as often as the others, however many there are
    (SmolLM2 has 98k tokenizer strings but 4 header fields)."""
    from gguf import GGUFReader
    from numpy.lib.array_utils import byte_bounds

    reader = GGUFReader(path)
    base = byte_bounds(reader.data)[0]
    fields: dict[str, list[Field]] = {"header": [Field(0, 4), Field(4, 4), Field(8, 8), Field(16, 8)]}
    spans: dict[str, list[tuple[int, int]]] = {}
    named: dict[str, int] = {}

    def add(part, group: str) -> None:
        start = byte_bounds(part)[0] - base
        if part.dtype == np.uint8 and group.endswith("text"):
            if part.size:
                spans.setdefault(group, []).append((start, part.size))
        else:
            width = part.dtype.itemsize
            fields.setdefault(group, []).extend(Field(start + i * width, width) for i in range(part.size))

    for name, kv in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        kind = kv.types[0].name if kv.types else ""
        for i, part in enumerate(kv.parts):
            if i in (0, 2) or (i == 3 and kind in ("ARRAY", "STRING")):
                group = "kv_meta"  # key length, value type, array item type, string length
            elif i == 1 or (i == 4 and kind == "STRING"):
                group = "kv_text"
            elif i == 4 and kind == "ARRAY":
                group = "array_count"
                named[f"{name}.count"] = byte_bounds(part)[0] - base
            elif kind == "ARRAY":
                group = "item_text" if part.dtype == np.uint8 and kv.types[-1].name == "STRING" else \
                    "item_length" if kv.types[-1].name == "STRING" else "item_value"
            else:
                group = "kv_value"
            add(part, group)
    for tensor in reader.tensors:
        named[f"{tensor.name}.n_dims"] = byte_bounds(tensor.field.parts[2])[0] - base
        for i, part in enumerate(tensor.field.parts):
            add(part, "tensor_name_text" if i == 1 else "tensor_info")
    hot_end = reader.data_offset
    del reader
    return Layout(fields, spans, hot_end, named)


def apr_layout(path) -> Layout:
    """The .apr header fields and every index entry's fields (name length, dtype, ndim, dims, offset, size)."""
    from apr_qa.apr import AprReader

    with AprReader(path) as reader:
        h, entries = reader.header, reader.entries
    header = [Field(4, 1), Field(5, 1), Field(6, 2), Field(8, 4), Field(12, 8), Field(20, 4), Field(24, 8),
              Field(32, 8)]
    index, names = [], []
    pos = h.index_offset
    for e in entries:
        name = e.name.encode("utf-8")
        index.append(Field(pos, 2))
        names.append((pos + 2, len(name)))
        pos += 2 + len(name)
        index += [Field(pos, 1), Field(pos + 1, 1)] + [Field(pos + 2 + 8 * i, 8) for i in range(len(e.shape) + 2)]
        pos += 2 + 8 * (len(e.shape) + 2)
    meta = [(h.metadata_offset, h.metadata_size)]
    return Layout({"header": header, "index": index}, {"tensor_name": names, "metadata": meta}, h.data_offset)
