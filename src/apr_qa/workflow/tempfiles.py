"""Temporary files a killed command left behind.

Every output is written to `.<name>.<pid>.tmp` beside its final name and renamed into place
(apr_qa.fsutil.atomic_path), so a half-written file never carries a final name. A command killed
with SIGKILL cannot remove its temporary file; the workflow removes such leftovers when its next
run starts (the Snakefile's onstart, which runs under Snakemake's lock of the directory). A
temporary file is stale when the process named by its pid no longer exists; one whose process is
alive is left alone (a job of a Snakemake killed without its jobs may still be writing it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Iterable

TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")
SKIP_DIRS = {".snakemake", ".git"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temps(roots: Iterable[str | Path]) -> list[Path]:
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            for name in files:
                m = TEMP_NAME.match(name)
                if m and not pid_alive(int(m.group(1))):
                    found.append(Path(folder) / name)
    return sorted(found)


def remove_stale_temps(roots: Iterable[str | Path]) -> list[Path]:
    """Remove the stale temporary files under `roots`; returns the removed paths."""
    removed = []
    for path in stale_temps(roots):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
