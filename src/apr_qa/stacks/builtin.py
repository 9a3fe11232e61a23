"""`builtin`: our PyTorch runtime, evaluated by evaluation/runner.py itself (nothing to adapt)."""

from __future__ import annotations


def unavailable(spec) -> str | None:
    return None


def fingerprint_parts(spec, variant: str | None) -> list[str]:
    """Nothing beyond the spec: the runtime is the package's own code, in the job's code record."""
    return []
