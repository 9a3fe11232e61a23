"""`apr-qa` command line. Each command group lives in `apr_qa.commands.<name>` and registers itself.

Exit codes: 0 success, 1 a fail-level gate tripped, 2 bad input or usage, 3 a halt-level gate
tripped (stop the line). Errors are printed as one line: `apr-qa: error: FILE: problem`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import AprQaError, GateFailure

# Modules are imported when the parser is built, but heavy imports (torch...) happen inside the
# command functions so that `apr-qa --help` stays fast.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apr-qa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"apr-qa {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)  # a module that fails to import fails the CLI
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
