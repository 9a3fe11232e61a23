"""The stack a certification runs its scenarios on (docs/stacks.md, "Certifying a stack").

The scenario child (certify/scenarios.py) drives a model through `generate` and, for chat, renders the
model file's chat template with `model.tokenizer`. builtin is our runtime (runtime.load_model), as it
always was. Every other stack is loaded exactly as `apr-qa eval --stack` loads it
(stacks.registry.load_for_evaluation: the same adapters, the same GGUF export), with the scenarios'
prompts standing in for the golden set: they size llama.cpp's context, and they are the request a
command stack answers in its one invocation.

A prompt the child only knows while it runs (a chat's later turns, which hold the earlier replies)
gets the stack loaded for that prompt alone. A command stack answers only its request's prompts, and
one prompt its runtime refuses fails the whole invocation, so its EDGE prompts are each asked on their
own: an edge input the runtime refuses is that scenario's outcome, not a load failure of every scenario.
What a stack cannot run is recorded as skipped with the reason, never as a failure: the serve
modality (apr-qa's HTTP server runs the builtin runtime) and CUDA backends (other stacks run on the CPU).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import AprQaError
from ..stacks.registry import StackSpec

# stacks whose model answers exactly the prompts it was loaded with (stacks/command.py: one request)
ANSWERS_ITS_REQUEST_ONLY = ("command",)


def other_stack(spec: StackSpec | None) -> StackSpec | None:
    """`spec` when it names a stack other than our runtime, else None (builtin: the runtime itself)."""
    return spec if spec is not None and spec.kind != "builtin" else None


def stack_block(spec: StackSpec | None) -> dict[str, Any]:
    """The certification's `certified_stack` block: which stack the verdict is about."""
    spec = spec or StackSpec("builtin", "builtin")
    block: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "spec": spec.to_json()}
    if spec.kind != "builtin":  # builtin's is the evaluate stage's, per variant (workflow fingerprints)
        from ..stacks.registry import stack_fingerprint

        try:
            block["fingerprint"] = stack_fingerprint(spec)
        except (AprQaError, OSError) as exc:  # e.g. a command not on PATH: the scenarios say so too
            block["fingerprint_error"] = str(exc)
    return block


def skip_reason(spec: StackSpec | None, modality: str, backend: str) -> str | None:
    """Why a scenario of this modality and backend does not run on the stack (None: it runs)."""
    spec = other_stack(spec)
    if spec is None:
        return None
    if modality == "serve":
        return (f"not run on stack {spec.name!r}: the serve modality is apr-qa's HTTP server, which runs the "
                "builtin runtime")
    if backend != "cpu":
        return f"not run on stack {spec.name!r}: it runs on the CPU only (docs/stacks.md)"
    return None


def not_applicable(spec: StackSpec | None, paths: Iterable[str | Path]) -> str | None:
    """Why the stack does not run these model files at all (an encoder on a decoder-only stack), or None."""
    spec = other_stack(spec)
    if spec is None:
        return None
    from ..runtime import open_weights
    from ..stacks.adapter import NotApplicable, require_decoder

    for p in paths:
        source = open_weights(Path(p))
        try:
            config = dict(source.config)
        finally:
            source.close()
        try:
            require_decoder(spec.name, config, Path(p))
        except NotApplicable as exc:
            return str(exc)
    return None


def load(job: dict[str, Any]):
    """The scenario child's model: our runtime for builtin, else the stack's adapter (StackScenarioModel)."""
    spec = other_stack(StackSpec.parse(job["stack"], "scenario job") if job.get("stack") else None)
    if spec is None:
        from ..runtime import load_model

        return load_model(job["model"], device=job["backend"], weights=job.get("weights", "packed"))
    # threads: the spec's, else the adapter's default (llama.cpp: 2, the workflow's evaluation threads)
    return StackScenarioModel(spec, Path(job["model"]), job["scenarios"], None)


class StackScenarioModel:
    """Another stack's model as the scenario child drives it: `generate` on prompt texts, `tokenizer`
    (the model file's own, as the harness reads it) for the chat template, `close`."""

    kind = "decoder"

    def __init__(self, spec: StackSpec, model_path: Path, scenarios: list[dict[str, Any]], threads: int | None):
        from ..stacks.adapter import harness_tokenizer

        self.spec, self.path, self.threads = spec, model_path, threads
        self.tokenizer, _ = harness_tokenizer(model_path)
        self._max_new = max(int(s["max_new_tokens"]) for s in scenarios)
        self._timeout = max(float(s["timeout_s"]) for s in scenarios)
        self._repeats = max(int(s["run"]) for s in scenarios)
        self._work = Path(tempfile.mkdtemp(prefix=f"apr-qa-certify-{spec.name}-"))
        self._loads = 0
        texts = list(dict.fromkeys(t for s in scenarios if (t := self._known_text(s)) is not None))
        self._known = set(texts)
        self._model = self._load(texts) if texts else None

    def _known_text(self, s: dict[str, Any]) -> str | None:
        """The text a scenario sends first, where it is known before it runs (None: asked on its own)."""
        prompt = s["prompt"]
        if self.spec.kind in ANSWERS_ITS_REQUEST_ONLY and prompt.get("category") == "EDGE":
            return None
        if s["modality"] != "chat":
            return prompt["input"]
        turns = prompt.get("turns") or [prompt["input"]]
        try:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": turns[0]}],
                                                      add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - the scenario itself renders it and records why it cannot
            return None

    def _load(self, texts: list[str]):
        from ..evaluation.prompts import GoldenSet, Prompt
        from ..evaluation.protocol import EvalOptions
        from ..stacks.registry import load_for_evaluation

        self._loads += 1
        work = self._work / f"load-{self._loads}"  # its own folder: an export never replaces a mapped GGUF
        work.mkdir()
        golden = GoldenSet(Path("certification-scenarios"), "", "scenarios", {},
                           [Prompt(f"scenario-{i}", text, "QUAL") for i, text in enumerate(texts)])
        opts = EvalOptions(runs=self._repeats, max_new_tokens=self._max_new, greedy_tokens=self._max_new,
                           temperature=0.0, top_k=0, top_p=1.0, timeout_s=self._timeout)
        return load_for_evaluation(self.spec, self.path, golden, opts, work, self.threads)

    def generate(self, prompts: list[str], max_new_tokens: int = 32, **options):
        (text,) = prompts
        if self._model is not None and text in self._known:
            return self._model.generate([text], max_new_tokens, **options)
        if self.spec.kind in ANSWERS_ITS_REQUEST_ONLY and not self.tokenizer.encode(text):
            raise AprQaError(f"stack {self.spec.name!r}: a prompt has no tokens")  # as the adapters refuse it
        model = self._load([text])
        try:
            return model.generate([text], max_new_tokens, **options)
        finally:
            model.close()

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        shutil.rmtree(self._work, ignore_errors=True)
