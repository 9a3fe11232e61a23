"""The certification registry: results/models.csv (21 columns, one row per model and stack) and the
README table.

export_csv reads certify evidence files and upserts one row per model and certified stack (builtin,
llamacpp, ...: docs/stacks.md; other rows are kept); sync_readme rewrites the table between the two
markers of a Markdown file. Both write atomically and are idempotent. A registry written before the
`stack` column (20 columns) is read as builtin's rows.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from ..errors import AprQaError
from ..fsutil import write_text_atomic
from .mqs import NOT_APPLICABLE
from .pipeline import load_records

COLUMNS = ("model_id", "stack", "family", "parameters", "size_category", "status", "mqs_score", "grade",
           "certified_tier", "last_certified", "g1", "g2", "g3", "g4", "tps_gguf_cpu", "tps_gguf_gpu",
           "tps_apr_cpu", "tps_apr_gpu", "tps_st_cpu", "tps_st_gpu", "provenance_verified")
LEGACY_COLUMNS = tuple(c for c in COLUMNS if c != "stack")  # before stacks were certified: builtin's rows
START, END = "<!-- CERTIFICATION-TABLE-START -->", "<!-- CERTIFICATION-TABLE-END -->"
_FORMAT_KEY = {"gguf": "gguf", "apr": "apr", "safetensors": "st"}
_BACKEND_KEY = {"cpu": "cpu", "cuda": "gpu"}


def row_from_evidence(path: str | Path) -> dict[str, str]:
    ctx, records = load_records(path)
    if ctx.get("stage") != "certify" or "mqs" not in ctx:
        raise AprQaError("not a certify evidence file (stage 'certify' with an 'mqs' section)", path)
    mqs, model = ctx["mqs"], ctx.get("model") or {}
    gates = {g["id"]: g["passed"] for g in mqs["gateways"]}
    row = {c: "" for c in COLUMNS}
    row.update(model_id=ctx["subject"], stack=(ctx.get("certified_stack") or {}).get("name", "builtin"))
    row.update(family=model.get("family") or "", parameters=str(model.get("parameters") or ""),
               size_category=model.get("size_category") or "", status=mqs["status"], mqs_score=str(mqs["raw"]),
               grade=mqs["grade"], certified_tier=ctx["tier"] if ctx.get("tier_passed") else "none",
               last_certified=time.strftime("%Y-%m-%d", time.gmtime(ctx.get("finished") or time.time())),
               **{f"g{i}": str(gates.get(f"G{i}", False)).lower() for i in range(1, 5)})
    best: dict[str, float] = {}
    for r in records:
        d = r.details
        if (r.id.startswith("PERF:tokens-per-s:") and d.get("format") in _FORMAT_KEY
                and d.get("backend") in _BACKEND_KEY):
            col = f"tps_{_FORMAT_KEY[d['format']]}_{_BACKEND_KEY[d['backend']]}"
            best[col] = max(best.get(col, 0.0), float(d["tokens_per_s"]))
    row.update({k: f"{v:.2f}" for k, v in best.items()})
    row["provenance_verified"] = str(provenance_verified(records)).lower()
    if mqs["status"] == NOT_APPLICABLE:  # the stack does not run the model: no score, no gateways
        row.update(mqs_score="", grade="", **{f"g{i}": "" for i in range(1, 5)})
    return row


PROVENANCE_GATES = ("D3", "D4")  # every chosen file fetched, every file's sha256 the hub's (and the pins)


def provenance_verified(records: list) -> bool:
    """True only when the certification holds a recorded outcome of each provenance gate and every one
    of them passed: a download that failed D3 or D4 records that failure, and evidence that holds no
    such record verifies nothing."""
    found = [r for r in records if r.id in PROVENANCE_GATES]
    return {r.id for r in found} == set(PROVENANCE_GATES) and all(r.passed for r in found)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = tuple(reader.fieldnames or ())
        if columns == LEGACY_COLUMNS:
            return [{c: r.get(c, "builtin" if c == "stack" else "") for c in COLUMNS} for r in reader]
        if columns != COLUMNS:
            raise AprQaError(f"columns {reader.fieldnames} are not the registry's {list(COLUMNS)}", path)
        return list(reader)


def _order(row: dict[str, str]) -> tuple[str, bool, str]:
    """By model, builtin first, then the other stacks by name."""
    return row["model_id"], row["stack"] != "builtin", row["stack"]


def export_csv(evidence_files: list[str | Path], output: str | Path) -> list[dict[str, str]]:
    rows = {(r["model_id"], r["stack"]): r for r in read_csv(output)}
    for path in evidence_files:
        row = row_from_evidence(path)
        rows[(row["model_id"], row["stack"])] = row
    ordered = sorted(rows.values(), key=_order)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(ordered)
    write_text_atomic(output, buf.getvalue())
    return ordered


def table_markdown(rows: list[dict[str, str]]) -> str:
    from tabulate import tabulate

    mark = {"true": "✅", "false": "❌", "": "-"}
    body = [[r["model_id"], r["stack"], r["status"], r["mqs_score"] or "-", r["grade"] or "-", r["certified_tier"],
             " ".join(mark.get(r[f"g{i}"], "?") for i in range(1, 5)), r["tps_apr_cpu"] or "-", r["last_certified"]]
            for r in rows]
    return tabulate(body, headers=["Model", "Stack", "Status", "MQS", "Grade", "Tier", "G1-G4", "tok/s (apr, cpu)",
                                   "Certified"], tablefmt="github")


def sync_readme(readme: str | Path, csv_path: str | Path) -> bool:
    """Replace the table between the markers; True when the file changed."""
    readme = Path(readme)
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        raise AprQaError(f"cannot read: {exc.strerror}", readme) from None
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise AprQaError(f"certification table markers {START} ... {END} not found (in that order)", readme)
    rows = read_csv(csv_path)
    if not rows and not Path(csv_path).exists():
        raise AprQaError("registry CSV not found", csv_path)
    new = text[: start + len(START)] + "\n" + table_markdown(rows) + "\n" + text[end:]
    if new == text:
        return False
    write_text_atomic(readme, new)
    return True

