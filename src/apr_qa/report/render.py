"""One renderer for the reports: a page is a list of blocks, written as Markdown or as one
self-contained HTML file (every value escaped, images embedded as data URIs, a small inline script
that sorts tables; nothing is fetched from the network).

Blocks:
  ("h1"|"h2"|"h3", text) | ("p", text) | ("list", [(text, [sub items])])
  ("table", headers, rows[, {"sortable": bool, "class": str}])   cells: str, numbers or Cell
  ("img", png_path, alt[, svg_path])   HTML embeds the SVG when given (crisp at any zoom), else the PNG
  ("details", summary, blocks[, anchor])   HTML: a collapsible section; Markdown: an h3 and its blocks
  ("html_only", block)   left out of the Markdown (long tables the HTML folds away)
Paragraph, list and summary text may use **bold**, `code` and [links](relative/path).
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

Block = tuple[Any, ...]

# Andon tones: green passed, yellow passed with warnings, red a gate tripped, blocked not run
# (the line stopped, an earlier stage failed, or the model was skipped).
TONES = ("green", "yellow", "red", "blocked", "none")


@dataclass(frozen=True)
class Cell:
    """A table cell with an Andon tone (its background colour), a link and a hover text."""
    text: str
    tone: str | None = None
    href: str | None = None
    title: str | None = None


STYLE = """
:root{--green:#1e8e3e;--yellow:#f2b705;--red:#d0312d;--blocked:#5b5f66;--ink:#1d232b;--muted:#5d6875;--line:#d9dee4}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);margin:0;
background:#f6f7f9}
main{max-width:1280px;margin:0 auto;padding:0 24px 48px}
nav{position:sticky;top:0;z-index:5;background:#1d232b;padding:8px 24px;display:flex;flex-wrap:wrap;gap:4px 16px}
nav a{color:#dfe6ee;text-decoration:none;font-size:13px}nav a:hover{color:#fff;text-decoration:underline}
h1{font-size:26px;margin:24px 0 8px}
h2{font-size:20px;margin:32px 0 8px;padding-top:8px;border-top:2px solid var(--line)}
h3{font-size:16px;margin:20px 0 6px}
p{max-width:980px}code{background:#e9edf1;padding:0 3px;border-radius:3px;font-size:12.5px}
.scroll{overflow-x:auto;margin:8px 0 16px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;white-space:nowrap}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#9aa4ae;font-size:11px}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:var(--ink)}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:var(--ink)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.t-green{background:#dcf1e2;color:#0f5323}td.t-yellow{background:#fdf0c4;color:#5c4500}
td.t-red{background:#f8d7d5;color:#8a1712;font-weight:600}td.t-blocked{background:#e1e3e6;color:#3b3f45}
td.t-none{background:#f1f3f5;color:var(--muted)}
td[class^=t-] a{color:inherit}
table.board td.t-green{background:var(--green);color:#fff}
table.board td.t-yellow{background:var(--yellow);color:#1d232b}
table.board td.t-red{background:var(--red);color:#fff}table.board td.t-blocked{background:var(--blocked);color:#fff}
table.board td{text-align:center;font-weight:600;min-width:96px;padding:10px 12px}
table.board td:first-child,table.board th:first-child{text-align:left}
table.board td:first-child{background:#fff;font-weight:600}
img{max-width:100%;height:auto;background:#fff;border:1px solid var(--line);border-radius:4px;margin:8px 0}
details{background:#fff;border:1px solid var(--line);border-radius:4px;margin:6px 0;padding:4px 12px}
details>summary{cursor:pointer;font-weight:600;padding:4px 0}
details[open]>summary{border-bottom:1px solid var(--line);margin-bottom:6px}
ul{padding-left:22px}li{margin:2px 0}
"""

# Click a header to sort by that column (again to reverse): numbers numerically, text naturally, blanks last.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    function key(row) {
      var cell = row.cells[col], text = cell ? cell.textContent.trim() : "";
      var numeric = /^[-+]?(\\d[\\d,]*\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i.test(text);
      var num = numeric ? parseFloat(text.replace(/,/g, "")) : NaN;
      return {num: num, text: text, blank: text === "" || text === "-"};
    }
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var ka = key(a), kb = key(b);
      if (ka.blank !== kb.blank) return ka.blank ? 1 : -1;
      if (!isNaN(ka.num) && !isNaN(kb.num)) return dir * (ka.num - kb.num);
      if (!isNaN(ka.num) !== !isNaN(kb.num)) return isNaN(ka.num) ? 1 : -1;
      return dir * ka.text.localeCompare(kb.text, undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

def number(x: Any, fmt: str = ".3g") -> str:
    """A table cell of a measurement: "-" when there is none, numbers in `fmt`, anything else as text."""
    return "-" if x is None else format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _md_cell(cell: Any) -> Any:
    if isinstance(cell, Cell):
        return f"[{cell.text}]({cell.href})" if cell.href else cell.text
    return cell


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown; image paths relative to `base` (the folder the Markdown file is written to)."""
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out += [f"{'#' * int(kind[1])} {b[1]}", ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "table":
            out += [tabulate([[_md_cell(c) for c in row] for row in b[2]], b[1], tablefmt="github"), ""]
        elif kind == "list":
            for text, subs in b[1]:
                out.append(f"- {text}")
                out += [f"  - {s}" for s in subs]
            out.append("")
        elif kind == "img":
            out += [f"![{b[2]}]({os.path.relpath(b[1], base)})", ""]
        elif kind == "details":
            out += [f"### {b[1]}", "", to_markdown(b[2], base)]
    return "\n".join(out)


def inline(text: str) -> str:
    """Escaped text with **bold** and `code` as HTML."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    # [label](relative/path): links to files of the results (never a scheme such as javascript:)
    return re.sub(r"\[([^\]]+)\]\(([^():\s]+)\)", r'<a href="\2">\1</a>', text)


def anchor(text: str) -> str:
    """An id for a heading or section: lower case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _td(cell: Any) -> str:
    if isinstance(cell, Cell):
        body = html.escape(cell.text)
        if cell.href:
            body = f'<a href="{html.escape(cell.href)}">{body}</a>'
        cls = f' class="t-{cell.tone}"' if cell.tone else ""
        title = f' title="{html.escape(cell.title)}"' if cell.title else ""
        return f"<td{cls}{title}>{body}</td>"
    text = "" if cell is None else str(cell)
    cls = ' class="num"' if isinstance(cell, (int, float)) else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def _table(headers: list[Any], rows: list[list[Any]], opts: dict[str, Any]) -> str:
    classes = " ".join(c for c in (opts.get("class"), "sortable" if opts.get("sortable", True) else None) if c)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table class="{classes}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _img(b: Block) -> str:
    svg = b[3] if len(b) > 3 and b[3] is not None and Path(b[3]).exists() else None
    source = Path(svg) if svg else Path(b[1])
    mime = "image/svg+xml" if svg else "image/png"
    data = base64.b64encode(source.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(b[2])}" src="data:{mime};base64,{data}">'


def _html_blocks(blocks: list[Block], ids: set[str]) -> list[str]:
    parts: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "html_only":
            parts += _html_blocks([b[1]], ids)
        elif kind in ("h1", "h2", "h3"):
            ident = _unique(anchor(b[1]), ids)
            parts.append(f'<{kind} id="{ident}">{html.escape(b[1])}</{kind}>')
        elif kind == "p":
            parts.append(f"<p>{inline(b[1])}</p>")
        elif kind == "table":
            parts.append(_table(b[1], b[2], b[3] if len(b) > 3 else {}))
        elif kind == "list":
            parts.append("<ul>" + "".join(
                f"<li><details><summary>{inline(t)}</summary><ol>{''.join(f'<li>{inline(s)}</li>' for s in subs)}"
                f"</ol></details></li>" if subs else f"<li>{inline(t)}</li>" for t, subs in b[1]) + "</ul>")
        elif kind == "img":
            parts.append(_img(b))
        elif kind == "details":
            ident = _unique(b[3] if len(b) > 3 else anchor(b[1]), ids)
            parts.append(f'<details id="{ident}"><summary>{inline(b[1])}</summary>'
                         + "".join(_html_blocks(b[2], ids)) + "</details>")
    return parts


def _unique(ident: str, ids: set[str]) -> str:
    out, n = ident, 2
    while out in ids:
        out, n = f"{ident}-{n}", n + 1
    ids.add(out)
    return out


def to_html(blocks: list[Block]) -> str:
    """One self-contained page, titled by its first h1, with a bar linking its h2 sections."""
    ids: set[str] = set()
    parts = _html_blocks(blocks, ids)
    sections = re.findall(r'<h2 id="([^"]+)">(.*?)</h2>', "".join(parts))
    nav = "<nav>" + "".join(f'<a href="#{i}">{t}</a>' for i, t in sections) + "</nav>" if sections else ""
    title = next((b[1] for b in blocks if b[0] == "h1"), "apr-qa report")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{nav}<main>{''.join(parts)}"
            f"</main><script>{SCRIPT}</script></body></html>\n")
