"""A page opened in headless Chromium (the system's browser, driven by playwright): what it logged
to the console, the errors it raised, and a full-page screenshot. Tests skip, saying why, only when
no Chromium binary exists (`make setup` installs Debian's `chromium` when it can)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str | None:
    """APR_QA_CHROMIUM, else the first Chromium on PATH."""
    explicit = os.environ.get("APR_QA_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        reason = f"no Chromium binary (looked for APR_QA_CHROMIUM and {', '.join(CANDIDATES)} on PATH)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return binary


@dataclass
class PageVisit:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text) of every console message
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and failed requests
    result: Any = None


def visit(page_file: Path, screenshot: Path, script: Any = None) -> PageVisit:
    """Load the file, run `script(page)` (its return value kept), screenshot the whole page."""
    from playwright.sync_api import sync_playwright

    out = PageVisit()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=require_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: out.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: out.errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: out.errors.append(f"request failed: {r.url}"))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            if script is not None:
                out.result = script(page)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out
