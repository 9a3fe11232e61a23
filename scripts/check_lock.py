"""Checks that the lock in envs/lock/ still satisfies pyproject.toml.

Each requirement of pyproject.toml (its dependencies, the test and llamacpp extras, its build backend) must
be pinned in the lock file that installs it, at a version the requirement allows; and a package the lock
pins only because pyproject.toml asked for it must still be asked for. A requirement edited without
relocking fails here (and so `make setup` and `make test`) with one line naming it and saying to run
`make lock`. Packages the lock leaves out on purpose (torch, whose CPU build the Makefile pins) are read
from the lock's own list of what it excluded.

    python scripts/check_lock.py [--pyproject pyproject.toml] [--lock-dir envs/lock]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = "apr-qa (pyproject.toml)"  # how uv names pyproject.toml in its "# via" notes
EXCLUDED = "# The following packages were excluded from the output"  # uv's --no-emit-package list

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_VIA = re.compile(r"^\s+#\s+(?:via\s+)?(\S.*)$")


@dataclass
class Lock:
    path: Path
    pins: dict[str, Version] = field(default_factory=dict)
    via: dict[str, set[str]] = field(default_factory=dict)  # package -> what asked for it
    left_out: set[str] = field(default_factory=set)  # names uv was told not to pin


def read_lock(path: Path) -> Lock:
    lock, current, excluded = Lock(path), "", False
    for line in path.read_text().splitlines():
        if line.startswith(EXCLUDED):
            excluded = True
        elif excluded and re.fullmatch(r"#\s*[A-Za-z0-9._-]+", line):
            lock.left_out.add(canonicalize_name(line.lstrip("# ")))
        elif pin := _PIN.match(line):
            current = canonicalize_name(pin[1])
            lock.pins[current] = Version(pin[2])
            lock.via[current] = set()
        elif current and (via := _VIA.match(line)) and via[1].strip() != "via" and not via[1].startswith("-c "):
            lock.via[current].add(via[1].strip())  # who asked for it (a constraint file asks for nothing)
    return lock


def _requirements(pyproject: Path) -> dict[str, list[Requirement]]:
    """pyproject.toml's requirements by the lock file that must pin them."""
    data = tomllib.loads(pyproject.read_text())
    project, extras = data["project"], data["project"].get("optional-dependencies", {})
    base = [Requirement(r) for r in project.get("dependencies", [])]
    build = [Requirement(r) for r in data.get("build-system", {}).get("requires", [])]
    return {
        "runtime.txt": base,
        "test.txt": base + [Requirement(r) for r in extras.get("test", [])] + build,
        "llamacpp.txt": base + [Requirement(r) for r in extras.get("llamacpp", [])],
    }


def problems(pyproject: Path, lock_dir: Path) -> list[str]:
    found: list[str] = []
    for name, requirements in _requirements(pyproject).items():
        path = lock_dir / name
        if not path.is_file():
            found.append(f"{path} is missing")
            continue
        lock = read_lock(path)
        asked = set()
        for req in requirements:
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = canonicalize_name(req.name)
            asked.add(key)
            if key in lock.left_out:
                continue
            if key not in lock.pins:
                found.append(f"{path} does not pin {req}")
            elif not req.specifier.contains(lock.pins[key], prereleases=True):
                found.append(f"{path} pins {req.name}=={lock.pins[key]}, pyproject.toml asks {req}")
        stale = sorted(k for k, via in lock.via.items() if via == {PROJECT_ROOT} and k not in asked)
        found += [f"{path} still pins {k}, which pyproject.toml no longer asks for" for k in stale]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--lock-dir", type=Path, default=ROOT / "envs" / "lock")
    args = parser.parse_args(argv)
    found = problems(args.pyproject, args.lock_dir)
    if found:
        print(f"the lock is out of date: {'; '.join(found)}; run `make lock`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
