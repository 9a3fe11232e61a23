"""`apr-qa inspect`: what an .apr file holds, as a dict (for --json) or a human-readable report."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from tabulate import tabulate

from .apr import AprReader
from .apr.container import flag_names

# Metadata values longer than this (as JSON) are summarized, not shown (vocabularies, merges...).
_MAX_SHOWN_BYTES = 4096


def _tokenizer_summary(value: Any) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value)
    summary: dict[str, Any] = {"present": True, "bytes": len(text.encode("utf-8"))}
    try:
        tok = json.loads(text) if isinstance(value, str) else value
        model = tok["model"]
        summary["model"] = model.get("type")
        summary["vocab_size"] = len(model["vocab"])
        summary["added_tokens"] = len(tok.get("added_tokens") or [])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        summary["error"] = f"not a tokenizers JSON: {type(exc).__name__}: {exc}"
    return summary


def _shown(key: str, value: Any) -> Any:
    if key == "tokenizer.json":
        return _tokenizer_summary(value)
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size <= _MAX_SHOWN_BYTES:
        return value
    summary: dict[str, Any] = {"omitted": True, "type": type(value).__name__, "bytes": size}
    if isinstance(value, (list, dict, str)):
        summary["items"] = len(value)
    return summary


def describe(reader: AprReader) -> dict[str, Any]:
    h = reader.header
    tensors = [{"name": e.name, "dtype": e.dtype.name, "shape": list(e.shape), "bytes": e.size}
               for e in reader.entries]
    by_dtype: Counter[str] = Counter()
    count_by_dtype: Counter[str] = Counter()
    for e in reader.entries:
        by_dtype[e.dtype.name] += e.size
        count_by_dtype[e.dtype.name] += 1
    return {
        "path": str(reader.path),
        "file_bytes": reader.file_size,
        "header": {
            "version": f"{h.version[0]}.{h.version[1]}",
            "flags": f"0x{h.flags:04x}",
            "flag_names": flag_names(h.flags),
            "tensor_count": h.tensor_count,
            "metadata_offset": h.metadata_offset,
            "metadata_size": h.metadata_size,
            "index_offset": h.index_offset,
            "data_offset": h.data_offset,
            "header_crc": f"0x{h.header_crc:08x}",
        },
        "metadata": {k: _shown(k, v) for k, v in sorted(reader.metadata.items())},
        "tensors": tensors,
        "totals": {
            "tensor_count": len(tensors),
            "parameter_count": sum(math.prod(e.shape) for e in reader.entries),
            "tensor_bytes": sum(by_dtype.values()),
            "bytes_by_dtype": dict(sorted(by_dtype.items())),
            "tensors_by_dtype": dict(sorted(count_by_dtype.items())),
        },
    }


def _cell(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_text(desc: dict[str, Any]) -> str:
    header = desc["header"]
    header_rows = [(k, ", ".join(v) if k == "flag_names" else v) for k, v in header.items()]
    totals = desc["totals"]
    dtype_rows = [(d, totals["tensors_by_dtype"][d], n) for d, n in totals["bytes_by_dtype"].items()]
    tensor_rows = [(t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", t["bytes"])
                   for t in desc["tensors"]]
    parts = [
        f"{desc['path']} ({desc['file_bytes']:,} bytes)",
        "",
        "Header",
        tabulate(header_rows, tablefmt="plain"),
        "",
        "Metadata",
        tabulate([(k, _cell(v)) for k, v in desc["metadata"].items()], tablefmt="plain"),
        "",
        "Tensors",
        tabulate(tensor_rows, headers=["name", "dtype", "shape", "bytes"], intfmt=",", tablefmt="simple"),
        "",
        "Totals",
        tabulate([("tensors", totals["tensor_count"]), ("parameters", totals["parameter_count"]),
                  ("tensor bytes", totals["tensor_bytes"])], intfmt=",", tablefmt="plain"),
        "",
        tabulate(dtype_rows, headers=["dtype", "tensors", "bytes"], intfmt=",", tablefmt="simple"),
    ]
    return "\n".join(parts) + "\n"
