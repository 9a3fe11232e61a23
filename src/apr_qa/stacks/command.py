"""`command`: any runtime behind a command line, through one JSON request and one JSON response.

The contract (docs/stacks.md): the harness writes request.json, runs `argv + [request.json,
response.json]`, and reads response.json, validated strictly: any deviation is a one-line error
naming the response file. One invocation serves the whole evaluation: every golden prompt, repeated
`repeats` times (greedy, so the texts agree and the timings spread), plus the per-token logits of the
prompt tokens the request gives (teacher-forced: the runtime scores exactly those ids).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AprQaError
from ..fsutil import write_text_atomic
from .adapter import StackModel, harness_tokenizer, make_generation, require_decoder
from .registry import file_digest

CONTRACT = "apr-qa-stack/1"
FINISH_REASONS = ("eos", "length", "timeout")


class ContractError(AprQaError):
    """The runtime's response breaks the contract (one line, naming the response file)."""


def executable(spec) -> Path:
    found = shutil.which(spec.argv[0])
    if found is None:
        raise AprQaError(f"stack {spec.name!r}: executable {spec.argv[0]!r} not found (PATH or a path)")
    return Path(found).absolute()  # not resolved: a venv's python is a symlink that must stay one


def unavailable(spec) -> str | None:
    return None if shutil.which(spec.argv[0]) else f"executable {spec.argv[0]!r} not found"


def fingerprint_parts(spec, variant: str | None) -> list[str]:
    """sha256 of the executable and of every existing file argv names (a script given to an
    interpreter), plus argv itself."""
    parts = [f"exe={file_digest(executable(spec))}", "argv=" + json.dumps(list(spec.argv))]
    parts += [f"{a}={file_digest(Path(a))}" for a in spec.argv[1:] if Path(a).is_file()]
    parts += [f"format={spec.model_format}", f"logits={spec.logits}:{spec.top_logits}"]
    return parts


# -- the request ----------------------------------------------------------------------------------

def build_request(model_file: Path, spec, prompts: list[tuple[str, str, list[int]]], max_new_tokens: int,
                  repeats: int, output_dir: Path) -> dict[str, Any]:
    return {"contract": CONTRACT, "model": str(model_file.resolve()), "model_format": spec.model_format,
            "max_new_tokens": max_new_tokens, "stop_on_eos": True, "repeats": repeats,
            "logits": spec.logits, "top_logits": spec.top_logits, "output_dir": str(output_dir.resolve()),
            "prompts": [{"id": pid, "text": text, "token_ids": ids} for pid, text, ids in prompts]}


def run_command(spec, request: dict, work_dir: Path, timeout_s: float, vocab: int | None = None) -> dict:
    """Run the runtime on the request; its response, validated against the request."""
    req_path, resp_path = work_dir / "request.json", work_dir / "response.json"
    write_text_atomic(req_path, json.dumps(request, indent=1))
    resp_path.unlink(missing_ok=True)
    argv = [str(executable(spec)), *spec.argv[1:], str(req_path), str(resp_path)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "APR_QA_STACK_CONTRACT": CONTRACT})
    except subprocess.TimeoutExpired:
        raise AprQaError(f"stack {spec.name!r}: the runtime ran past {timeout_s:.0f} s", argv[0]) from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise AprQaError(f"stack {spec.name!r}: the runtime exited {done.returncode}: {tail}", argv[0])
    if not resp_path.is_file():
        raise ContractError("the runtime exited 0 but wrote no response", resp_path)
    return validate_response(resp_path, request, vocab)


# -- the response ---------------------------------------------------------------------------------

def _fail(path: Path, where: str, problem: str):
    raise ContractError(f"{where}: {problem}", path)


def _int_list(path: Path, where: str, value: Any, vocab: int | None) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        _fail(path, where, "expected a list of integers")
    if vocab is not None and (bad := [v for v in value if not 0 <= v < vocab]):
        _fail(path, where, f"token id {bad[0]} outside the vocabulary (0..{vocab - 1})")
    return value


def _seconds(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        _fail(path, where, f"expected a non-negative number of seconds, got {value!r}")
    return float(value)


def _keys(path: Path, where: str, obj: Any, required: set[str], optional: frozenset[str] = frozenset()) -> dict:
    if not isinstance(obj, dict):
        _fail(path, where, f"expected an object, got {type(obj).__name__}")
    if missing := sorted(required - obj.keys()):
        _fail(path, where, f"missing key(s) {', '.join(missing)}")
    if unknown := sorted(obj.keys() - required - optional):
        _fail(path, where, f"unknown key(s) {', '.join(unknown)}")
    return obj


def validate_response(path: Path, request: dict, vocab: int | None = None) -> dict:
    """The parsed response, or a ContractError naming `path` and the first problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"not a JSON response: {' '.join(str(exc).split())}", path) from None
    _keys(path, "response", data, {"contract", "runtime", "results"})
    if data["contract"] != CONTRACT:
        _fail(path, "contract", f"expected {CONTRACT!r}, got {data['contract']!r}")
    runtime = _keys(path, "runtime", data["runtime"], {"name", "version"}, frozenset({"details"}))
    if not all(isinstance(runtime[k], str) and runtime[k] for k in ("name", "version")):
        _fail(path, "runtime", "name and version must be non-empty strings")
    results = data["results"]
    want_ids = [p["id"] for p in request["prompts"]]
    if not isinstance(results, list) or [r.get("id") if isinstance(r, dict) else None for r in results] != want_ids:
        _fail(path, "results", f"expected one result per prompt, in request order ({len(want_ids)} prompts)")
    logits_key = {"full": "logits_npy", "top": "top_logits", "none": None}[request["logits"]]
    for i, (result, prompt) in enumerate(zip(results, request["prompts"], strict=True)):
        where = f"results[{i}]"
        _keys(path, where, result, {"id", "runs", "prompt_token_ids"} | ({logits_key} if logits_key else set()))
        _int_list(path, f"{where}.prompt_token_ids", result["prompt_token_ids"], vocab)
        runs = result["runs"]
        if not isinstance(runs, list) or len(runs) != request["repeats"]:
            _fail(path, f"{where}.runs", f"expected {request['repeats']} runs (the request's repeats)")
        for j, run in enumerate(runs):
            w = f"{where}.runs[{j}]"
            _keys(path, w, run, {"text", "token_ids", "finish_reason", "timings"})
            if not isinstance(run["text"], str):
                _fail(path, f"{w}.text", "expected a string")
            ids = _int_list(path, f"{w}.token_ids", run["token_ids"], vocab)
            if not ids or len(ids) > request["max_new_tokens"]:
                _fail(path, f"{w}.token_ids",
                      f"expected 1..{request['max_new_tokens']} generated tokens, got {len(ids)}")
            if run["finish_reason"] not in FINISH_REASONS:
                _fail(path, f"{w}.finish_reason", f"expected one of {', '.join(FINISH_REASONS)}")
            t = _keys(path, f"{w}.timings", run["timings"], {"time_to_first_token_s", "total_s"},
                      frozenset({"prompt_s"}))
            for key, value in t.items():
                _seconds(path, f"{w}.timings.{key}", value)
            if t["time_to_first_token_s"] > t["total_s"]:
                _fail(path, f"{w}.timings", "time_to_first_token_s exceeds total_s")
        n = len(prompt["token_ids"])
        if logits_key == "logits_npy":
            result["logits"] = _read_npy(path, f"{where}.logits_npy", result["logits_npy"], request, n, vocab)
        elif logits_key == "top_logits":
            result["logits"] = _top_rows(path, f"{where}.top_logits", result["top_logits"], request, n, vocab)
    return data


def _read_npy(path: Path, where: str, value: Any, request: dict, n: int, vocab: int | None) -> torch.Tensor:
    if not isinstance(value, str) or not value:
        _fail(path, where, "expected the path of a .npy file")
    npy = Path(value) if Path(value).is_absolute() else Path(request["output_dir"]) / value
    try:
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        _fail(path, where, f"{npy} does not load as .npy: {' '.join(str(exc).split())}")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        _fail(path, where, f"{npy}: expected float logits, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] != n or (vocab is not None and arr.shape[1] != vocab):
        _fail(path, where, f"{npy}: expected shape ({n}, {vocab or 'vocab'}) (one row per request token), "
                           f"got {arr.shape}")
    if not np.isfinite(arr).all():
        _fail(path, where, f"{npy}: non-finite logits")
    return torch.from_numpy(arr.astype(np.float32))


def _top_rows(path: Path, where: str, rows: Any, request: dict, n: int, vocab: int | None) -> list:
    if not isinstance(rows, list) or len(rows) != n:
        _fail(path, where, f"expected {n} rows (one per request token)")
    out = []
    for r, row in enumerate(rows):
        ok = isinstance(row, list) and 0 < len(row) <= request["top_logits"] and all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) and not isinstance(e[0], bool)
            and isinstance(e[1], int | float) and not isinstance(e[1], bool) and math.isfinite(e[1]) for e in row)
        if not ok:
            _fail(path, f"{where}[{r}]", f"expected 1..{request['top_logits']} [token id, finite logit] pairs")
        ids = [e[0] for e in row]
        if len(set(ids)) != len(ids) or (vocab is not None and not all(0 <= t < vocab for t in ids)):
            _fail(path, f"{where}[{r}]", "token ids must be distinct and inside the vocabulary")
        out.append(row)
    return out


# -- the model the runner drives ------------------------------------------------------------------

def load(spec, model_path: Path, golden, opts, work_dir: Path, threads: int | None) -> CommandModel:
    tokenizer, config = harness_tokenizer(model_path)
    require_decoder(spec.name, config, model_path)
    model_file = model_path
    details: dict[str, Any] = {"argv": list(spec.argv), "executable": str(executable(spec)),
                               "model_format": spec.model_format}
    if spec.model_format == "gguf":
        from .llamacpp import export_for_stack

        model_file, export = export_for_stack(model_path, work_dir)
        details.update(export)
    prompts = [(p.id, p.input, tokenizer.encode(p.input)) for p in golden.prompts]
    max_new = max(opts.max_new_tokens, opts.greedy_tokens)
    repeats = opts.runs + 1  # the sampled-run slots and the greedy pass
    request = build_request(model_file, spec, prompts, max_new, repeats, work_dir)
    timeout = 120.0 + opts.timeout_s * len(prompts) * repeats
    response = run_command(spec, request, work_dir, timeout, config.get("vocab_size"))
    details["runtime"] = response["runtime"]
    return CommandModel(spec, tokenizer, config, request, response, model_file.stat().st_size, details)


class CommandModel(StackModel):
    """Serves the runner's calls from the one response: each prompt's runs in turn (cycling)."""

    def __init__(self, spec, tokenizer, config, request: dict, response: dict, weight_bytes: int, details: dict):
        super().__init__(spec.name, tokenizer, config, f"{response['runtime']['name']}:{spec.model_format}",
                         weight_bytes, details)
        self.logits_kind = spec.logits
        self._by_ids: dict[tuple[int, ...], dict] = {}
        self._served: dict[tuple[int, ...], int] = {}
        differs = []
        for prompt, result in zip(request["prompts"], response["results"], strict=True):
            self._by_ids[tuple(prompt["token_ids"])] = result
            if result["prompt_token_ids"] != prompt["token_ids"]:
                differs.append(prompt["id"])
        # the runtime's own tokenization of the prompt texts, where it differs from the harness's
        details["prompt_tokenization_differs"] = differs

    def _result(self, ids) -> dict:
        result = self._by_ids.get(tuple(ids))
        if result is None:
            raise AprQaError(f"stack {self.stack_name!r}: no response for a sequence the request did not hold")
        return result

    def greedy(self, text, ids, max_new_tokens, stop_on_eos, timeout_s):
        key = tuple(ids)
        result = self._result(ids)
        index = self._served.get(key, 0)
        self._served[key] = index + 1
        run = result["runs"][index % len(result["runs"])]
        tokens, out_text, finish = run["token_ids"], run["text"], run["finish_reason"]
        ttft, total = run["timings"]["time_to_first_token_s"], run["timings"]["total_s"]
        if len(tokens) > max_new_tokens:  # a shorter call (the runner's warm-up): greedy's prefix
            n = max_new_tokens
            total = ttft + (total - ttft) * (n - 1) / (len(tokens) - 1)
            tokens, finish = tokens[:n], "length"
            out_text = self.tokenizer.decode(tokens)
        return make_generation(ids, tokens, out_text, finish, ttft, total)

    def logits(self, batch, start: int = 0):
        out = []
        for ids in batch:
            value = self._result(ids)["logits"][start:]
            if self.logits_kind == "top":  # the runtime's top entries; -inf marks what it did not return
                if self.vocab_size is None:
                    raise AprQaError(f"stack {self.stack_name!r}: top-k logits need the vocab_size in config.json")
                dense = torch.full((len(ids) - start, self.vocab_size), float("-inf"))
                for r, row in enumerate(value):
                    dense[r, [e[0] for e in row]] = torch.tensor([float(e[1]) for e in row])
                value = dense
            out.append(value)
        return out
