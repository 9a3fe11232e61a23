"""Files generated from the registries, committed so they read on their own: docs/gates.md (the gate
catalogue) and the variant enums of the config schemas (the quantization registry). `apr-qa
sync-generated` rewrites them; `--check` (and a test) fails while one is out of date."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import AprQaError
from ..fsutil import write_text_atomic
from ..gate_catalogue import markdown
from ..layout import VARIANTS

GATES_DOC = Path("docs/gates.md")
SCHEMAS = (Path("config/schema.yaml"), Path("config/playbooks/schema.yaml"))
# The schema line that lists the variants: `enum: [...]` followed by this comment.
MARKER = "# variants: generated from apr_qa.dtypes.QUANT_LEVELS (apr-qa sync-generated)"
_ENUM_LINE = re.compile(r"^(?P<head>\s*enum: )\[[^\]\n]*\](?P<tail>\s*" + re.escape(MARKER) + r")$", re.MULTILINE)


def _schema_text(path: Path, text: str) -> str:
    if not _ENUM_LINE.search(text):
        raise AprQaError(f"no `enum: [...]  {MARKER}` line to rewrite", path)
    return _ENUM_LINE.sub(lambda m: f"{m['head']}[{', '.join(VARIANTS)}]{m['tail']}", text)


def expected(root: Path) -> dict[Path, str]:
    """Every generated file (relative to the repository root) and the text it should have."""
    out = {GATES_DOC: markdown()}
    for rel in SCHEMAS:
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except OSError as exc:
            raise AprQaError(f"cannot read: {exc.strerror}", root / rel) from None
        out[rel] = _schema_text(root / rel, text)
    return out


def stale(root: Path) -> list[Path]:
    """The generated files whose committed text differs from what the registries give."""
    out = []
    for rel, text in expected(root).items():
        try:
            current = (root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            out.append(rel)
    return out


def sync(root: Path) -> list[Path]:
    """Rewrite the stale files; the ones rewritten."""
    changed = stale(root)
    texts = expected(root)
    for rel in changed:
        write_text_atomic(root / rel, texts[rel])
    return changed
