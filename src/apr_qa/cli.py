"""`apr-qa` command line. Each command group lives in `apr_qa.commands.<name>` and registers itself.

Exit codes: 0 success, 1 a fail-level gate tripped, 2 bad input or usage, 3 a halt-level gate
tripped (stop the line). Errors are printed as one line: `apr-qa: error: FILE: problem`.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

# What the interpreter loaded before this module (site's .pth hooks...): not the job's code.
STARTUP_MODULES = frozenset(sys.modules)

from . import __version__  # noqa: E402
from .errors import AprQaError, GateFailure  # noqa: E402

# Inside a workflow job: the job's code record, which every apr-qa process of the job adds what it
# loaded to at exit, and the code key the job runs under (apr_qa.workflow.fingerprint).
CODE_RECORD_ENV = "APR_QA_CODE_RECORD"
CODE_KEY_ENV = "APR_QA_CODE_KEY"

# A command imports only the module that defines it (found by reading the modules' sources), and
# heavy imports (torch...) happen inside the command functions, so `apr-qa checksum` stays fast and a
# workflow job's code record (workflow/fingerprint.py) holds only the code the job ran. `apr-qa --help`
# imports them all.
COMMAND_MODULES = [
    "apr_qa.commands.convert",    # convert, inspect, validate
    "apr_qa.commands.runtime",    # run, chat
    "apr_qa.commands.evaluate",   # eval
    "apr_qa.commands.oracle",     # oracle (needs transformers: test/benchmark dependency)
    "apr_qa.commands.workflow",   # download, verify-checksums, fingerprint, report
    "apr_qa.commands.certify",    # score, serve, sync-readme, ...
    "apr_qa.commands.export",     # export-gguf
    "apr_qa.commands.stacks",     # diff-stacks (differential certification of two stacks)
    "apr_qa.commands.cache",      # cache ls | gc | pin | unpin (the JIT model cache)
]

EXIT_OK, EXIT_GATE_FAIL, EXIT_USAGE, EXIT_HALT = 0, 1, 2, 3

# Set before any command imports torch: OpenMP's default spin-waiting starves 2-thread torch when
# other processes share the cores (measured ~10x slower decode on a shared 2-core machine).
# An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# How a command module declares a top-level command: `sub.add_parser("name", ...)` in its register().
_DECLARATION = re.compile(r"\bsub\.add_parser\(\s*\"([\w-]+)\"")


def declared_commands(module: str) -> list[str]:
    """The top-level commands `module` registers, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return _DECLARATION.findall(Path(spec.origin).read_text())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with only the module that declares `command` registered (all of them without one,
    or when none declares it: argparse then names the valid choices)."""
    parser = argparse.ArgumentParser(prog="apr-qa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"apr-qa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owners = [m for m in COMMAND_MODULES if command in declared_commands(m)] if command else []
    for name in owners or COMMAND_MODULES:
        importlib.import_module(name).register(sub)  # a module that fails to import fails the CLI
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get(CODE_RECORD_ENV):
        atexit.register(_record_code, os.environ[CODE_RECORD_ENV], os.environ.get(CODE_KEY_ENV, ""))
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GateFailure as exc:
        print(f"apr-qa: gate failed: {exc}", file=sys.stderr)
        return EXIT_HALT if exc.level == "halt" else EXIT_GATE_FAIL
    except AprQaError as exc:
        print(f"apr-qa: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _record_code(record: str, key: str) -> None:
    """Add the package files and libraries this process loaded to the job's code record. The module list
    is taken before the recorder is imported: its own code is not the job's."""
    loaded = dict(sys.modules)
    from .workflow import fingerprint

    fingerprint.merge_into(Path(record), key, loaded, STARTUP_MODULES)


if __name__ == "__main__":
    sys.exit(main())
