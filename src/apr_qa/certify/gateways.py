"""Gateways G0-G4 as evidence records. Any of them failing zeroes the MQS (mqs.score).

G0 compares the tensor table the model's config implies (its architecture's) with the file's; G1-G4
summarise the scenario records that scenarios.py produced (details: outcome, stage, category, output,
garbage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from ..arch import Architecture
from ..evidence import Evidence
from .mqs import GATEWAYS

MAX_GARBAGE_FRACTION = 0.25  # G4 fails when more than a quarter of the outputs are garbage

@dataclass
class IntegrityCheck:
    field: str          # what was checked: "shape", "present" or "expected"
    config: Any         # what the config implies (a shape), None for a tensor the config does not know
    tensors: Any        # what the file holds (a shape), None when absent
    tensor: str
    ok: bool


def integrity_checks(arch: Architecture, tensors: Iterable[tuple[str, tuple[int, ...]]]) -> list[IntegrityCheck]:
    """The architecture's tensor table (what config.json implies: every tensor and its shape)
    against the file's: each expected tensor present with that shape, nothing unexplained beside."""
    shapes = {name: tuple(shape) for name, shape in tensors}
    expected = arch.tensors()
    checks = []
    for name, shape in expected.items():
        if name not in shapes:
            checks.append(IntegrityCheck("present", shape, None, name, False))
        else:
            checks.append(IntegrityCheck("shape", shape, shapes[name], name, shapes[name] == tuple(shape)))
    for name in sorted(set(shapes) - set(expected)):
        if not arch.optional(name):
            checks.append(IntegrityCheck("expected", None, shapes[name], name, False))
    return checks


def _describe(bad: list[IntegrityCheck]) -> str:
    missing = [c.tensor for c in bad if c.field == "present"]
    extra = [c.tensor for c in bad if c.field == "expected"]
    parts = [f"{c.tensor}: config implies {list(c.config)}, file has {list(c.tensors)}"
             for c in bad if c.field == "shape"][:3]
    if missing:
        parts.append(f"{len(missing)} tensors the config implies are missing ({', '.join(missing[:3])}"
                     f"{', ...' if len(missing) > 3 else ''})")
    if extra:
        parts.append(f"{len(extra)} tensors the config does not explain ({', '.join(extra[:3])}"
                     f"{', ...' if len(extra) > 3 else ''})")
    return "; ".join(parts)


def g0_integrity(path: str | Path) -> Evidence:
    """G0 on a .apr file (metadata hf_config + tensor table) or any source the converter reads."""
    from ..arch import architecture_for
    from ..errors import AprQaError

    path = Path(path)
    try:
        if path.suffix == ".apr":
            from ..apr import AprReader

            with AprReader(path) as reader:
                arch = architecture_for(reader.metadata.get("hf_config") or {}, path)
                table = [(e.name, e.shape) for e in reader.entries]
        else:
            from ..sources import open_source

            source = open_source(path)
            try:
                arch, table = source.arch, [(t.name, t.shape) for t in source.tensors()]
            finally:
                source.close()
    except AprQaError as exc:
        return Evidence("G0", GATEWAYS["G0"], False, None, "config matches tensors", "halt", str(exc))
    checks = integrity_checks(arch, table)
    bad = [c for c in checks if not c.ok]
    message = f"{path}: {_describe(bad)}" if bad else ""
    return Evidence("G0", GATEWAYS["G0"], not bad, {"checked": len(checks), "mismatched": len(bad)},
                    {"mismatched": 0}, "halt", message,
                    {"path": str(path), "architecture": arch.family, "checks": [asdict(c) for c in checks]})


def scenario_gateways(records: list[Evidence]) -> list[Evidence]:
    """G1-G4 from the scenario records (those with details["scenario"])."""
    scen = [r for r in records if "scenario" in r.details and r.details.get("outcome") != "skip"]

    def sid(r: Evidence) -> str:
        return r.details["scenario"]["id"]

    load_failed = [r for r in scen if r.details.get("stage") == "load" and r.details["outcome"] != "pass"]
    variants = {(r.details["scenario"]["variant"], r.details["scenario"]["backend"]) for r in scen}
    bad_variants = {(r.details["scenario"]["variant"], r.details["scenario"]["backend"]) for r in load_failed}
    g1 = Evidence("G1", GATEWAYS["G1"], not bad_variants and bool(variants),
                  f"{len(variants) - len(bad_variants)}/{len(variants)} variants loaded", "all load", "fail",
                  "; ".join(f"{sid(r)}: {r.details.get('reason', '')}" for r in load_failed[:3])
                  or ("no scenario ran" if not variants else ""),
                  {"failed": [sid(r) for r in load_failed]})

    judged = [r for r in scen if r.details.get("category") != "EDGE" and r.details.get("stage") == "generate"]
    silent = [r for r in judged if r.details["outcome"] in ("fail", "timeout") and not r.details.get("output")
              and not r.details.get("values_checked")]
    g2 = Evidence("G2", GATEWAYS["G2"], not silent, f"{len(judged) - len(silent)}/{len(judged)} produced output",
                  "every scenario produces output", "fail",
                  "; ".join(f"{sid(r)}: {r.details.get('reason', '')}" for r in silent[:3]),
                  {"failed": [sid(r) for r in silent]})

    crashes = [r for r in scen if r.details["outcome"] == "crash"]
    g3 = Evidence("G3", GATEWAYS["G3"], not crashes, len(crashes), 0, "halt",
                  "; ".join(f"{sid(r)}: {r.details.get('reason', '')}" for r in crashes[:3]),
                  {"crashes": [{"scenario": sid(r), "returncode": r.details.get("returncode"),
                                "signal": r.details.get("signal"), "stage": r.details.get("stage"),
                                "stderr_tail": r.details.get("stderr_tail", "")} for r in crashes]})

    produced = [r for r in judged if "garbage" in r.details]
    garbage = [r for r in produced if r.details["garbage"]["reasons"]]
    fraction = len(garbage) / len(produced) if produced else 0.0
    g4 = Evidence("G4", GATEWAYS["G4"], fraction <= MAX_GARBAGE_FRACTION, round(fraction, 4), MAX_GARBAGE_FRACTION,
                  "fail", "; ".join(f"{sid(r)}: {', '.join(r.details['garbage']['reasons'])} in "
                                    f"{r.details.get('output', '')[:60]!r}" for r in garbage[:3]),
                  {"garbage": [{"scenario": sid(r), "reasons": r.details["garbage"]["reasons"],
                                "output": r.details.get("output", "")[:200]} for r in garbage],
                   "outputs_checked": len(produced)})
    return [g1, g2, g3, g4]
