"""Evaluate a model on a stack: the evaluation runner with the stack's model, one JSON schema for all."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from .adapter import NotApplicable
from .registry import StackSpec, load_for_evaluation, stack_fingerprint


def evaluate_on_stack(spec: StackSpec, model_path: Path, reference_path: Path, golden, opts, *, device: str = "cpu",
                      dtype: str = "float32", weights: str = "packed", threads: int | None = None,
                      variant: str | None = None):
    """-> (Evaluation, the options it ran with, the JSON's `stack` block). Other stacks than builtin
    decode greedily (stacks/adapter.py), so their runs and the reference's are greedy too. A model the
    stack does not run (an encoder) gives no Evaluation (None) and `not_applicable` in the block."""
    from ..evaluation.runner import evaluate

    block: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "spec": spec.to_json()}
    try:
        block["fingerprint"] = stack_fingerprint(spec, variant) if variant else None
    except (KeyError, OSError) as exc:  # a variant the registry does not know: recorded, not fatal
        block["fingerprint"] = None
        block["fingerprint_error"] = str(exc)
    if spec.kind == "builtin":
        ev = evaluate(model_path, reference_path, golden, opts, device=device, dtype=dtype, weights=weights)
        block["details"] = {"weights": weights}
        return ev, opts, block
    if device != "cpu":
        from ..errors import UnsupportedError

        raise UnsupportedError(f"stack {spec.name!r} runs on the CPU (the reference device is {device})")
    opts = dataclasses.replace(opts, temperature=0.0, top_k=0, top_p=1.0)
    with tempfile.TemporaryDirectory(prefix=f"apr-qa-stack-{spec.name}-") as work:
        built: dict[str, Any] = {}

        def load(path, **_ignored):
            model = load_for_evaluation(spec, path, golden, opts, Path(work), threads)
            built["details"] = model.details
            return model

        try:
            ev = evaluate(model_path, reference_path, golden, opts, device=device, load=load)
        except NotApplicable as exc:
            return None, opts, {**block, "not_applicable": str(exc), "details": {}}
    block["details"] = built.get("details", {})
    return ev, opts, block


def greedy_sampling_block(opts) -> dict:
    """The report's `sampling` block for a stack that decodes greedily."""
    block = opts.sampling_block()
    block.update(strategy="greedy-repeated", why="the stack decodes greedily: its sampling RNG is not ours, so "
                 "seeded runs could not be paired with the reference's; the runs repeat the greedy pass and "
                 "measure the timing spread (the reference runs greedily too)")
    return block


def not_applicable_report(model_path: Path, stack: dict[str, Any], started: str, finished: str) -> dict[str, Any]:
    """The evaluation JSON of a model the stack does not run: what, on which stack, and why; no gates."""
    from ..evaluation.report_json import SCHEMA_VERSION
    from ..runtime import describe_weights

    return {"schema_version": SCHEMA_VERSION, "model": describe_weights(model_path), "protocol": None,
            "variant": None, "stack": stack, "gates": [], "verdict": {"worst_failed_level": None, "exit_code": 0},
            "started": started, "finished": finished}
