"""The stack kinds, a stack's specification (a `stacks:` entry of the config) and its fingerprint."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import AprQaError

KINDS = ("builtin", "llamacpp", "command")
LOGITS_KINDS = ("full", "top", "none")
MODEL_FORMATS = ("apr", "gguf")


@dataclass(frozen=True)
class StackSpec:
    """One `stacks:` entry. A bare name ("builtin", "llamacpp") is that kind with its defaults."""

    name: str                       # names the stack's result files
    kind: str
    argv: tuple[str, ...] = ()      # command: the runtime's command line (request and response paths appended)
    model_format: str = "apr"       # command: the file the runtime is given (gguf: exported from the .apr)
    logits: str = "full"            # command: full | top | none
    top_logits: int = 20            # command, logits "top": entries per position
    threads: int | None = None      # llamacpp: n_threads (default: the evaluation's threads)

    @classmethod
    def parse(cls, value: Any, where: str | Path | None = None) -> StackSpec:
        """A config entry (a name, a mapping, or the JSON of either) -> spec; one-line errors naming `where`."""
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise AprQaError(f"stack specification is not JSON: {exc}", where) from None
        if isinstance(value, str):
            value = {"name": value, "kind": value}
        if not isinstance(value, dict):
            raise AprQaError(f"a stack is a name or a mapping, got {type(value).__name__}", where)
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(value) - known):
            raise AprQaError(f"stack {value.get('name')!r}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})", where)
        kind = value.get("kind", value.get("name"))
        name = value.get("name", kind)
        if kind not in KINDS:
            raise AprQaError(f"stack {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}", where)
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise AprQaError(f"stack name {name!r} must be letters, digits, '-' or '_' (it names result files)", where)
        argv = value.get("argv", ())
        if isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
            raise AprQaError(f"stack {name!r}: argv must be a list of strings", where)
        if kind == "command" and not argv:
            raise AprQaError(f"stack {name!r}: a command stack needs argv (the runtime's command line)", where)
        if kind != "command" and argv:
            raise AprQaError(f"stack {name!r}: argv is for command stacks only", where)
        spec = cls(name=name, kind=kind, argv=tuple(argv), model_format=value.get("model_format", "apr"),
                   logits=value.get("logits", "full"), top_logits=value.get("top_logits", 20),
                   threads=value.get("threads"))
        if spec.model_format not in MODEL_FORMATS:
            raise AprQaError(f"stack {name!r}: model_format must be one of {', '.join(MODEL_FORMATS)}", where)
        if spec.logits not in LOGITS_KINDS:
            raise AprQaError(f"stack {name!r}: logits must be one of {', '.join(LOGITS_KINDS)}", where)
        if not isinstance(spec.top_logits, int) or spec.top_logits < 1:
            raise AprQaError(f"stack {name!r}: top_logits must be a positive integer", where)
        return spec

    def to_json(self) -> str:
        """The spec as one JSON object (what a rule passes to `apr-qa eval --stack`)."""
        d = asdict(self)
        d["argv"] = list(self.argv)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _module(kind: str):
    return importlib.import_module(f".{kind}", __package__)


def unavailable(spec: StackSpec) -> str | None:
    """Why this stack cannot run here (None when it can): e.g. llama-cpp-python not importable."""
    return _module(spec.kind).unavailable(spec)


def configured_stacks(value: Any, where: str | Path | None = None) -> tuple[list[StackSpec], list[str]]:
    """The config's `stacks:` -> (specs to evaluate, notes on stacks left out).

    "auto" is builtin plus llamacpp when llama-cpp-python imports; otherwise llamacpp is left out with
    the reason in the notes (so a CI without the optional extra stays green). Explicitly listed stacks
    are never left out: a missing one fails its evaluation with the reason. builtin is always first:
    the certification and the differential comparison build on it."""
    if value is None:
        value = ["builtin"]
    if value == "auto":
        specs, notes = [StackSpec("builtin", "builtin")], []
        llamacpp = StackSpec("llamacpp", "llamacpp")
        if reason := unavailable(llamacpp):
            notes.append(f"stack llamacpp omitted: {reason}")
        else:
            specs.append(llamacpp)
        return specs, notes
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise AprQaError("stacks must be 'auto' or a non-empty list of stacks", where)
    specs = [StackSpec.parse(v, where) for v in value]
    names = [s.name for s in specs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise AprQaError(f"stack names must be unique: {', '.join(dupes)}", where)
    if "builtin" in names and specs[names.index("builtin")].kind != "builtin":
        raise AprQaError("the name builtin is the builtin stack's", where)
    if "builtin" not in names:  # the certification and the differential comparison build on it
        specs.insert(0, StackSpec("builtin", "builtin"))
    return specs, []


def stack_fingerprint(spec: StackSpec | str, variant: str | None = None) -> str:
    """`<name>:<16 hex>`: what the stack's evaluation depends on beyond the package's Python code and the
    libraries it imports (which the job's code record covers, apr_qa.workflow.fingerprint): the spec;
    llamacpp: its build's features and the hash of its shared libraries (a local rebuild of the same
    version); command: the sha256 of the executable (and of every file argv names) plus argv."""
    if isinstance(spec, str):
        spec = StackSpec.parse(spec)
    return _fingerprint(spec.to_json(), variant)


@functools.cache
def _fingerprint(spec_json: str, variant: str | None) -> str:
    spec = StackSpec.parse(spec_json)
    parts = [spec_json, *_module(spec.kind).fingerprint_parts(spec, variant)]
    return f"{spec.name}:{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"


@functools.cache
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_for_evaluation(spec: StackSpec, model_path: str | Path, golden, opts, work_dir: Path, threads: int | None):
    """The model under test as the evaluation runner drives it (None for builtin: the runner loads it)."""
    if spec.kind == "builtin":
        return None
    if reason := unavailable(spec):
        raise AprQaError(f"stack {spec.name!r} cannot run: {reason}", model_path)
    return _module(spec.kind).load(spec, Path(model_path), golden, opts, work_dir, threads)
