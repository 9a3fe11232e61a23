"""`builtin`: our PyTorch runtime, evaluated by evaluation/runner.py itself (nothing to adapt)."""

from __future__ import annotations


def unavailable(spec) -> str | None:
    return None


def fingerprint_parts(spec, variant: str | None) -> list[str]:
    """The runtime's code fingerprint, as the evaluate stage computes it for the variant."""
    from ..workflow.fingerprint import fingerprint

    return [fingerprint("evaluate", variant)]
