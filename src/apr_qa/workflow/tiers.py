"""What a certification tier decides for the workflow: the variants built and the Andon policy."""

from __future__ import annotations

from typing import Any

from ..errors import AprQaError

# Andon policies the workflow knows; a playbook's fail-fast (halt + diagnostics) stops at the first failure.
ANDON_POLICY = {"stop-on-first": "stop-on-first", "stop-on-p0": "stop-on-p0", "collect-all": "collect-all",
                "fail-fast": "stop-on-first"}


def tier_variants(playbook: dict[str, Any], allowed: list[str], model: str = "") -> list[str]:
    """The .apr levels the tier builds for a model: the playbook's quantizations that `allowed`
    (the config's variants) permits, in the playbook's order, at most max_variants of them."""
    spec = playbook["variants"]
    if "apr" not in spec["formats"]:
        raise AprQaError(f"tier {playbook['name']}: the workflow certifies .apr variants, but the playbook's "
                         f"formats are {spec['formats']}")
    chosen = [q for q in spec["quantizations"] if q in allowed]
    if spec.get("max_variants"):
        chosen = chosen[: spec["max_variants"]]
    if not chosen:
        raise AprQaError(f"{model or 'config'}: none of the variants {allowed} is in tier {playbook['name']}'s "
                         f"quantizations {spec['quantizations']}")
    return chosen
