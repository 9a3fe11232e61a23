"""Share of a model's outputs that G4's garbage checker flags, from evaluation JSONs (`apr-qa eval`).

G4 fails a certification when more than MAX_GARBAGE_FRACTION of the outputs are garbage. This
prints, per evaluation, how many of its sampled outputs (every golden prompt x run) the checker
flags and why, so the fraction can be set between what healthy variants produce and what a broken
one does (docs/accuracy-andon.md has the figures).

    python scripts/measure_garbage.py results/evaluate/*/*.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from apr_qa.certify.garbage import check_text
from apr_qa.certify.gateways import MAX_GARBAGE_FRACTION


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluations", nargs="+", type=Path)
    args = ap.parse_args()
    print(f"G4 fails above {MAX_GARBAGE_FRACTION:.0%} of the outputs")
    print(f"{'evaluation':<40} {'outputs':>7} {'garbage':>7} {'share':>6}  reasons")
    for path in args.evaluations:
        doc = json.loads(path.read_text())
        records = (doc.get("runs") or {}).get("records") or []
        if not records:
            continue
        reasons: Counter[str] = Counter()
        flagged = 0
        for r in records:
            verdict = check_text(r["text"])
            flagged += verdict.garbage
            reasons.update(re.sub(r"^[\d.]+ ", "", reason).split(" ")[0] for reason in verdict.reasons)
        name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        print(f"{name:<40} {len(records):>7} {flagged:>7} {flagged / len(records):>6.1%}  "
              + (", ".join(f"{k} x{v}" for k, v in reasons.most_common()) or "-"))


if __name__ == "__main__":
    main()
