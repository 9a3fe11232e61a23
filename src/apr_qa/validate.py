"""`apr-qa validate`: every conversion and contract gate of a `.apr` file against its source.

Gates (docs/gates.md lists each one with its level and threshold), each one evidence record:
C0 architecture supported, C1 format detected, C2 parse, C3 all tensors extracted, C4 written,
C5 magic (halt), C6 parameter count (halt), C7 shapes (halt), C8 numerical precision on every tensor
(halt), V1 loads, V2 metadata schema, I-2 tensor-name bijection, I-3 no silent fallback, I-4 statistics preserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import yaml

from .apr import AprReader
from .arch import UnsupportedArchitecture
from .convert import stored_dtypes
from .dtypes import QUANT_LEVELS, DType
from .errors import AprQaError
from .evidence import Evidence
from .gate_catalogue import stage_gates
from .metadata import schema_problems
from .precision import compare
from .sources import detect_format, open_source

APR_MAGIC = b"APR\x00"

# Per stored dtype: kl = maximum KL divergence of the tensors' normalized absolute values
# (precision.kl_divergence_abs), cosine = minimum similarity, rrmse = maximum relative RMS error,
# stats = I-4 tolerance (mean/std drift). A Q4_0 KL limit of 1e-2 is not attainable by GGML's Q4_0
# on real weights: it rounds every value under d/2 to zero, which the |x|-normalized KL punishes
# (measured per-tensor max: 0.225 SmolLM2-135M, 0.139 all-MiniLM-L6-v2; Q4_K 0.0153 / 0.0135).
# The 4-bit KL defaults sit ~1.5-2x above those figures; cosine and relative RMSE keep their bite.
# BF16 is placed by its precision. Q6_K's symmetric levels also zero small values: measured
# per-tensor max KL 0.0108 SmolLM2-135M, 0.0062 all-MiniLM-L6-v2 (cosine >= 0.99976, relative
# RMSE <= 0.022, drift <= 0.0066 on both), so its KL limit is 0.02.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "F32": {"kl": 1e-7, "cosine": 0.999999, "rrmse": 1e-6, "stats": 0.0},
    "F16": {"kl": 1e-5, "cosine": 0.99999, "rrmse": 1e-3, "stats": 1e-3},
    "BF16": {"kl": 1e-4, "cosine": 0.9999, "rrmse": 1e-2, "stats": 5e-3},
    "Q8_0": {"kl": 1e-3, "cosine": 0.999, "rrmse": 2e-2, "stats": 0.01},
    "Q6_K": {"kl": 0.02, "cosine": 0.999, "rrmse": 5e-2, "stats": 0.02},
    "Q4_0": {"kl": 0.35, "cosine": 0.98, "rrmse": 0.2, "stats": 0.05},
    "Q4_K": {"kl": 0.03, "cosine": 0.98, "rrmse": 0.2, "stats": 0.05},
}

# Gate levels and names: the gate catalogue's (docs/gates.md). C5-C8 stop the line; the rest skip the model/variant.
GATE_LEVELS: dict[str, str] = {g.id: g.level for g in stage_gates("validate")}
GATE_NAMES: dict[str, str] = {g.id: g.measures for g in stage_gates("validate")}


@dataclass
class ValidationConfig:
    tolerances: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()})
    levels: dict[str, str] = field(default_factory=lambda: dict(GATE_LEVELS))
    allow_pickle: bool = False

    @classmethod
    def load(cls, path: str | Path | None, allow_pickle: bool = False) -> ValidationConfig:
        """Defaults, overridden by a YAML file
        {tolerances: {DTYPE: {kl, cosine, rrmse, stats}}, levels: {GATE: level}}."""
        cfg = cls(allow_pickle=allow_pickle)
        if path is None:
            return cfg
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise AprQaError(f"cannot read tolerances: {exc}", path) from None
        for dtype, values in (data.get("tolerances") or {}).items():
            if dtype.upper() not in cfg.tolerances:
                raise AprQaError(f"unknown dtype {dtype!r} in tolerances", path)
            cfg.tolerances[dtype.upper()].update({k: float(v) for k, v in values.items()})
        for gate, level in (data.get("levels") or {}).items():
            if gate not in cfg.levels or level not in ("warn", "fail", "halt"):
                raise AprQaError(f"bad gate level {gate}: {level}", path)
            cfg.levels[gate] = level
        return cfg


class Gates:
    """Collects evidence records; `check` turns a boolean into a record at the gate's level."""

    def __init__(self, config: ValidationConfig):
        self.config = config
        self.records: list[Evidence] = []

    def check(self, gate: str, passed: bool, measured: Any, threshold: Any, message: str = "", **details: Any) -> bool:
        self.records.append(Evidence(gate, GATE_NAMES[gate], bool(passed), measured, threshold,
                                     self.config.levels[gate], message if not passed else "", details))
        return bool(passed)

    def not_run(self, gates: list[str], reason: str) -> None:
        for gate in gates:
            self.check(gate, False, None, None, f"not run: {reason}")


def validate(apr_path: str | Path, source_path: str | Path, config: ValidationConfig | None = None,
             progress: Callable[[str], None] | None = None) -> list[Evidence]:
    config = config or ValidationConfig()
    gates = Gates(config)
    apr_path, source_path = Path(apr_path), Path(source_path)
    later = ["C3", "C6", "C7", "C8", "I-2", "I-3", "I-4"]

    # C1, C2: the source.
    try:
        fmt = detect_format(source_path)
        gates.check("C1", True, fmt, "safetensors|gguf|pytorch")
    except AprQaError as exc:
        gates.check("C1", False, None, "safetensors|gguf|pytorch", str(exc))
        gates.not_run(["C2"], "C1 failed")
        fmt = None
    source = None
    if fmt is not None:
        try:
            source = open_source(source_path, allow_pickle=config.allow_pickle)
            source_tensors = {t.name: t for t in source.tensors()}
            gates.check("C0", True, source.arch.family, "a registered architecture")
            gates.check("C2", True, len(source_tensors), "parses", tensors=len(source_tensors))
        except UnsupportedArchitecture as exc:
            gates.check("C0", False, None, "a registered architecture", str(exc))
            gates.not_run(["C2"], "C0 failed")
            source = None
        except AprQaError as exc:
            gates.check("C2", False, None, "parses", str(exc))
            source = None

    # C4, C5, V1, V2: the .apr file itself.
    size = apr_path.stat().st_size if apr_path.is_file() else 0
    gates.check("C4", size > 0, size, "> 0 bytes", f"{apr_path} missing or empty")
    magic = apr_path.open("rb").read(4) if size else b""
    gates.check("C5", magic == APR_MAGIC, magic.hex(), APR_MAGIC.hex(), f"{apr_path}: magic {magic!r}")
    reader = None
    if size:
        try:
            reader = AprReader(apr_path)
            reader.verify_checksum()
            gates.check("V1", True, len(reader.entries), "opens, CRCs valid")
        except AprQaError as exc:
            gates.check("V1", False, None, "opens, CRCs valid", str(exc))
            reader = None
    else:
        gates.not_run(["V1"], "no .apr file")
    if reader is not None:
        problems = schema_problems(reader.metadata)
        gates.check("V2", not problems, len(problems), 0, "; ".join(problems[:5]), problems=problems)
    else:
        gates.not_run(["V2"], "V1 failed")

    if source is None or reader is None:
        gates.not_run(later, "source or .apr did not load")
        return gates.records
    try:
        _compare_tensors(gates, source_tensors, source, reader, progress)
    finally:
        source.close()
        reader.close()
    return gates.records


def _compare_tensors(gates: Gates, source_tensors: dict, source, reader: AprReader,
                     progress: Callable[[str], None] | None) -> None:
    apr_entries = {e.name: e for e in reader.entries}
    missing = sorted(set(source_tensors) - set(apr_entries))
    extra = sorted(set(apr_entries) - set(source_tensors))
    gates.check("C3", not missing, len(source_tensors) - len(missing), len(source_tensors),
                f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", missing=missing)
    gates.check("I-2", not missing and not extra, {"missing": len(missing), "extra": len(extra)},
                "same name set", f"missing {missing[:3]}, extra {extra[:3]}", missing=missing, extra=extra)

    src_params = sum(math.prod(t.shape) for t in source_tensors.values())
    apr_params = sum(math.prod(e.shape) for e in apr_entries.values())
    meta_params = reader.metadata.get("param_count")
    gates.check("C6", src_params == apr_params == meta_params, apr_params, src_params,
                f"source {src_params}, .apr tensors {apr_params}, metadata {meta_params}")

    common = sorted(set(source_tensors) & set(apr_entries))
    bad_shapes = {n: (list(source_tensors[n].shape), list(apr_entries[n].shape))
                  for n in common if tuple(source_tensors[n].shape) != tuple(apr_entries[n].shape)}
    gates.check("C7", not bad_shapes, len(bad_shapes), 0,
                "; ".join(f"{n}: source {s} vs .apr {a}" for n, (s, a) in list(bad_shapes.items())[:3]),
                mismatched=bad_shapes)

    level_name = (reader.metadata.get("quantization") or {}).get("level")
    fallbacks = {}
    if not isinstance(level_name, str) or level_name not in QUANT_LEVELS:
        gates.check("I-3", False, level_name, "a known quantization level",
                    "metadata names no known quantization level")
    else:
        expected_dtypes, _ = stored_dtypes(source.arch, list(source_tensors.values()), level_name)
        for n in common:
            expected = expected_dtypes[n]
            if apr_entries[n].dtype != expected:
                fallbacks[n] = f"{apr_entries[n].dtype.name} (expected {expected.name})"
        gates.check("I-3", not fallbacks, len(fallbacks), 0,
                    "; ".join(f"{n}: {d}" for n, d in list(fallbacks.items())[:3]), fallbacks=fallbacks)

    # C8 and I-4 on every tensor present in both with the same shape.
    tol = gates.config.tolerances
    c8_fail, i4_fail, worst = {}, {}, {"kl": 0.0, "cosine": 1.0, "rrmse": 0.0, "stats": 0.0}
    per_tensor: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(n for n in common if n not in bad_shapes):
        dtype: DType = apr_entries[name].dtype
        t = tol[dtype.name]
        c = compare(source.load(name), reader.load(name))
        per_tensor[name] = {"dtype": dtype.name, "kl": c.kl_divergence, "cosine": c.cosine,
                            "rrmse": c.relative_rmse, "stats_drift": c.stats_drift}
        worst = {"kl": max(worst["kl"], c.kl_divergence), "cosine": min(worst["cosine"], c.cosine),
                 "rrmse": max(worst["rrmse"], c.relative_rmse), "stats": max(worst["stats"], c.stats_drift)}
        if c.kl_divergence > t["kl"] or c.cosine < t["cosine"] or c.relative_rmse > t["rrmse"]:
            c8_fail[name] = (f"{dtype.name} kl {c.kl_divergence:.3g} (<= {t['kl']:g}), cos {c.cosine:.6f} "
                             f"(>= {t['cosine']:g}), rrmse {c.relative_rmse:.3g} (<= {t['rrmse']:g})")
        if c.stats_drift > t["stats"]:
            i4_fail[name] = f"{dtype.name} drift {c.stats_drift:.3g} > {t['stats']:g}"
        if progress and i % 25 == 0:
            progress(f"compared {i + 1}/{len(common)} tensors")
    checked = len(per_tensor)
    present = sorted({d["dtype"] for d in per_tensor.values()})
    gates.check("C8", not c8_fail, worst if checked else None, {k: tol[k] for k in present},
                f"{len(c8_fail)}/{checked} tensors out of tolerance: "
                + "; ".join(f"{n}: {m}" for n, m in list(c8_fail.items())[:3]),
                tensors_checked=checked, failures=c8_fail, per_tensor=per_tensor)
    gates.check("I-4", not i4_fail, worst["stats"] if checked else None,
                {k: tol[k]["stats"] for k in present},
                f"{len(i4_fail)}/{checked} tensors drifted: "
                + "; ".join(f"{n}: {m}" for n, m in list(i4_fail.items())[:3]),
                failures=i4_fail)
