"""JUnit XML: one testcase per evidence record, so CI systems show gates and scenarios as tests.

A failed fail/halt record is a <failure> (message: gate, measured vs threshold), a crash or timeout
an <error>, a skipped scenario <skipped>; a failed warn-level record passes with its warning in
<system-out> (warnings flag, they do not fail the line).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..evidence import Evidence
from ..fsutil import atomic_path
from .mqs import category_of, outcome_of


def _classname(stage: str, r: Evidence) -> str:
    categorized = "scenario" in r.details or r.details.get("category")
    return f"apr_qa.{stage}.{category_of(r)}" if categorized else f"apr_qa.{stage}"


def build(suites: list[tuple[str, str, list[Evidence]]]) -> ET.Element:
    """suites: (name, stage, records)."""
    root = ET.Element("testsuites")
    totals = dict(tests=0, failures=0, errors=0, skipped=0)
    for name, stage, records in suites:
        suite = ET.SubElement(root, "testsuite", name=name)
        counts = dict(tests=0, failures=0, errors=0, skipped=0)
        for r in records:
            case = ET.SubElement(suite, "testcase", classname=_classname(stage, r), name=f"{r.id} {r.name}")
            counts["tests"] += 1
            outcome = outcome_of(r)
            text = f"{r.id}: measured {r.measured}, threshold {r.threshold}" + (f" - {r.message}" if r.message else "")
            whys = r.details.get("five_whys")
            body = json.dumps(whys, indent=1) if whys else text
            if outcome == "skip":
                ET.SubElement(case, "skipped", message=r.details.get("reason") or r.message)
                counts["skipped"] += 1
            elif r.passed:
                continue
            elif outcome in ("crash", "timeout"):
                ET.SubElement(case, "error", message=text, type=outcome).text = body
                counts["errors"] += 1
            elif r.level == "warn":
                ET.SubElement(case, "system-out").text = f"WARNING {text}"
            else:
                ET.SubElement(case, "failure", message=text, type=r.level).text = body
                counts["failures"] += 1
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    return root


def write_junit(path: str | Path, suites: list[tuple[str, str, list[Evidence]]]) -> dict[str, Any]:
    root = build(suites)
    ET.indent(root)
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return {k: int(v) for k, v in root.attrib.items()}
