"""Run the certification scenarios, each model load in a child process, so that a segfault or an
OOM kill of the runtime becomes a recorded crash (G3) instead of taking the certifier down.

Protocol: the parent writes {"model", "backend", "scenarios": [...], "stack"?} to the child's stdin;
the child (`python -m apr_qa.certify.scenarios`) prints one JSON line when the model has loaded and
one per scenario, in order, so the parent always knows which scenario was in flight when the
child died. After a crash or a hard timeout the remaining scenarios go to a fresh child.
serve scenarios start `apr-qa serve` and ask it over HTTP on loopback. With a stack other than
builtin (the job's "stack", a stack specification) the child runs the scenarios on that stack's
adapter (certify/stack_model.py), and what the stack cannot run is recorded as skipped.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ..errors import AprQaError
from ..evaluation.prompts import matches
from ..evidence import Evidence
from ..stacks.registry import StackSpec
from . import garbage, stack_model

CHILD = [sys.executable, "-X", "faulthandler", "-m", "apr_qa.certify.scenarios"]
SERVER = [sys.executable, "-X", "faulthandler", "-m", "apr_qa.cli", "serve"]
POLICIES = ("stop-on-first", "stop-on-p0", "collect-all", "fail-fast")
STDERR_TAIL = 2000


@dataclass
class Scenario:
    id: str
    variant: str
    path: str
    backend: str
    modality: str          # run | chat | serve
    prompt: dict[str, Any]  # apr_qa.evaluation.prompts.Prompt.to_dict(): id, input, turns?, expected_pattern?, category
    run: int = 1
    max_new_tokens: int = 16
    temperature: float = 0.0
    seed: int = 42
    timeout_s: float = 60.0
    level: str = "source"          # the variant's quantization level (its embedding cosine limit)
    reference: str | None = None   # the source weights: an encoder's embedding is compared with theirs

    @property
    def category(self) -> str:
        # chat and serve exercise the surface (modalities), not the model's answers: COMP.
        return "COMP" if self.modality != "run" else self.prompt.get("category", "QUAL")


@dataclass
class Limits:
    load_timeout_s: float = 300.0
    kill_grace_s: float = 30.0   # after a scenario's own timeout, before the process is killed


@dataclass
class Outcome:
    outcome: str                   # pass | fail | crash | timeout | skip
    stage: str                     # load | generate | serve
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- judging one completed scenario ------------------------------------------------------------------

def is_refusal(result: dict[str, Any]) -> bool:
    """The documented refusal: the runtime raised an AprQaError (apr_qa.errors) whose message is one
    line. Anything else the runtime raised (a TypeError, an IndexError, a multi-line message) is the
    runtime failing on the input, not handling it."""
    message = str(result.get("message", result.get("error", "")))
    return bool(result.get("refusal")) and "\n" not in message.strip()


def judge(s: Scenario, result: dict[str, Any]) -> Outcome:
    """Pass/fail of a child's answer: output present, not garbage, expected pattern found; an EDGE
    input passes by completing or by the documented refusal (is_refusal)."""
    edge = s.prompt.get("category") == "EDGE"
    if result["event"] == "error":
        extra = {"exception_type": result.get("error_type") or "unknown", "refusal": is_refusal(result)}
        if not edge:
            return Outcome("fail", "generate", result["error"], extra)
        if extra["refusal"]:
            return Outcome("pass", "generate", f"refused: {result['error']}", extra)
        return Outcome("fail", "generate", f"not the documented refusal (a one-line AprQaError): "
                                           f"{extra['exception_type']}: {result['error']}", extra)
    if "values" in result:
        return _judge_embedding(s, result)
    text = result["text"]
    extra = {"output": text, "token_ids": result.get("token_ids", []), "finish_reason": result.get("finish_reason"),
             "metrics": result.get("metrics", {})}
    if "replies" in result:
        extra["replies"] = result["replies"]
    if result.get("finish_reason") == "timeout":
        return Outcome("timeout", "generate", f"generation hit its {s.timeout_s} s timeout", extra)
    if edge:
        return Outcome("pass", "generate", "survived", extra)
    verdict = garbage.check_text(text)
    extra["garbage"] = asdict(verdict)
    if verdict.garbage:
        return Outcome("fail", "generate", "garbage: " + "; ".join(verdict.reasons), extra)
    pattern = s.prompt.get("expected_pattern")
    if not matches(pattern, text):
        return Outcome("fail", "generate", f"output does not match /{pattern}/", extra)
    return Outcome("pass", "generate", "", extra)


def _cosine(a: list[float], b: list[float]) -> float | None:
    """cosine(a, b) in float64; None when the lengths differ or a vector is zero."""
    if len(a) != len(b):
        return None
    dot, na, nb = math.fsum(x * y for x, y in zip(a, b, strict=True)), math.fsum(x * x for x in a), \
        math.fsum(y * y for y in b)
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else None


def _judge_embedding(s: Scenario, result: dict[str, Any]) -> Outcome:
    """An encoder's answer: finite values whose cosine with the reference embedding of the same text
    (the source weights') reaches the level's limit, the same per-level table as the evaluation's
    embedding gates (T5, I-1: encoder_eval.DEFAULT_MIN_COSINE). A finite vector alone says nothing
    about whether it is the right one."""
    from ..evaluation.encoder_eval import DEFAULT_MIN_COSINE

    verdict = garbage.check_values(result["values"])
    extra: dict[str, Any] = {"garbage": asdict(verdict), "values_checked": len(result["values"]),
                             "level": s.level, "min_cosine": DEFAULT_MIN_COSINE.get(s.level)}
    if verdict.garbage:
        return Outcome("fail", "generate", "; ".join(verdict.reasons), extra)
    if s.prompt.get("category") == "EDGE":
        return Outcome("pass", "generate", "survived", extra)
    reference = result.get("reference_values")
    if reference is None:
        why = result.get("reference_error") or "the certification was given no source weights to compare with"
        return Outcome("fail", "generate", f"no reference embedding: {why}", extra)
    cosine = _cosine([float(v) for v in result["values"]], [float(v) for v in reference])
    extra["cosine"] = cosine
    limit = extra["min_cosine"]
    if limit is None:
        return Outcome("fail", "generate", f"no embedding cosine limit for level {s.level!r}", extra)
    if cosine is None or cosine < limit:
        return Outcome("fail", "generate", f"embedding cosine with the reference {cosine} below the {s.level} "
                                           f"limit {limit}", extra)
    return Outcome("pass", "generate", "", extra)


def record(s: Scenario, o: Outcome) -> Evidence:
    wanted = ("completes, or the documented refusal (a one-line AprQaError)" if s.prompt.get("category") == "EDGE"
              else "output, not garbage" + (f", matches /{s.prompt['expected_pattern']}/"
                                            if s.prompt.get("expected_pattern") else ""))
    output = o.extra.get("output", "")
    details = {"scenario": {k: v for k, v in asdict(s).items() if k != "prompt"} | {"prompt_id": s.prompt.get("id")},
               "category": s.category, "outcome": o.outcome, "stage": o.stage, "reason": o.reason,
               "output_excerpt": output[:200], **o.extra}
    return Evidence(f"{s.category}:{s.id}", f"{s.modality} {s.prompt.get('id')} on {s.variant}/{s.backend}",
                    o.outcome == "pass", o.outcome if o.outcome != "pass" else "ok", wanted,
                    "fail", o.reason if o.outcome != "pass" else "", details)


def is_p0(r: Evidence) -> bool:
    """A gateway-class failure: crash, load failure, no output or garbage (stop-on-p0 halts on these)."""
    d = r.details
    return d["outcome"] == "crash" or (d["outcome"] != "pass" and (
        d["stage"] == "load"
        or d.get("category") != "EDGE" and (not d.get("output") or d.get("garbage", {}).get("garbage"))))


def should_stop(policy: str, r: Evidence) -> bool:
    if policy == "collect-all" or r.details["outcome"] in ("pass", "skip"):
        return False
    return policy in ("stop-on-first", "fail-fast") or is_p0(r)


# -- the parent side -----------------------------------------------------------------------------------

class _Lines:
    """Read JSON lines from a child's stdout with a deadline per line."""

    def __init__(self, stream):
        self.stream, self.buf = stream, b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(stream, selectors.EVENT_READ)

    def next(self, timeout: float) -> dict | str:
        """A parsed line, "eof" or "timeout"."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return "timeout"
            chunk = os.read(self.stream.fileno(), 65536)
            if not chunk:
                return "eof"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return self.next(max(deadline - time.monotonic(), 0.0))  # stray print from a library


def _death(proc: subprocess.Popen, err_path: Path, killed: bool, what: str) -> tuple[str, str, dict[str, Any]]:
    if killed:
        proc.kill()
    rc = proc.wait()
    tail = err_path.read_text(errors="replace")[-STDERR_TAIL:]
    extra = {"returncode": rc, "stderr_tail": tail}
    if killed:
        return "timeout", f"{what}: no answer in time, process killed", extra
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else f"signal {-rc}"
        extra["signal"] = name
        return "crash", f"{what}: process killed by {name} (exit {rc})", extra
    return "crash", f"{what}: process exited with code {rc} before answering", extra


def run_group(scenarios: list[Scenario], limits: Limits, on_record: Callable[[Evidence], bool],
              child: list[str] | None = None, stack: StackSpec | None = None) -> None:
    """run/chat scenarios of one (variant, backend) in child processes, on `stack` (None: builtin).
    on_record returns False to stop."""
    pending = list(scenarios)
    while pending:
        with tempfile.NamedTemporaryFile(prefix="apr-qa-child-", suffix=".err", delete=False) as err:
            err_path = Path(err.name)
        try:
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(child or CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            job: dict[str, Any] = {"model": pending[0].path, "backend": pending[0].backend,
                                   "scenarios": [asdict(s) for s in pending]}
            if (other := stack_model.other_stack(stack)) is not None:
                job["stack"] = other.to_json()
            assert proc.stdin is not None  # stdin=PIPE
            try:
                proc.stdin.write(json.dumps(job).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            lines = _Lines(proc.stdout)
            first = lines.next(limits.load_timeout_s)
            if not isinstance(first, dict) or first.get("event") != "loaded":
                if isinstance(first, dict) and first.get("event") == "load_error":
                    proc.wait()
                    for s in pending:
                        if not on_record(record(s, Outcome("fail", "load", first["error"]))):
                            return
                    return
                outcome, reason, extra = _death(proc, err_path, first == "timeout", "loading the model")
                on_record(record(pending[0], Outcome(outcome, "load", reason, extra)))
                for s in pending[1:]:
                    on_record(record(s, Outcome("skip", "load", f"not run: the model {outcome} while loading")))
                return
            while pending:
                s = pending[0]
                turns = max(1, len(s.prompt.get("turns") or []))
                answer = lines.next(s.timeout_s * turns + limits.kill_grace_s)
                if isinstance(answer, dict):
                    pending.pop(0)
                    if not on_record(record(s, judge(s, answer))):
                        proc.kill()
                        proc.wait()
                        return
                    continue
                outcome, reason, extra = _death(proc, err_path, answer == "timeout", f"scenario {s.id}")
                pending.pop(0)
                if not on_record(record(s, Outcome(outcome, "generate", reason, extra))):
                    return
                break  # respawn for the rest
            else:
                proc.wait()
        finally:
            err_path.unlink(missing_ok=True)


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_error_result(status: int, body: bytes) -> dict[str, Any]:
    """A server's error answer as a scenario result. The server answers a runtime refusal (an
    AprQaError) with 400 and the exception's type (apr_qa.serve.ApiError); a 400 without one is the
    request's validation, and 500 the runtime failing."""
    text = body.decode(errors="replace")
    try:
        error = json.loads(text)["error"]
        message, exception = str(error["message"]), error.get("exception")
    except (ValueError, KeyError, TypeError):
        message, exception = text, None
    return {"event": "error", "error": f"HTTP {status}: {message[:300]}", "message": message,
            "error_type": exception or f"HTTP {status}", "refusal": status == 400 and exception is not None}


def run_serve_group(scenarios: list[Scenario], limits: Limits, on_record: Callable[[Evidence], bool],
                    server: list[str] | None = None) -> None:
    """serve scenarios of one (variant, backend): start `apr-qa serve` on a free loopback port, ask it."""
    pending = list(scenarios)
    proc = None
    while pending:
        s0 = pending[0]
        with tempfile.NamedTemporaryFile(prefix="apr-qa-serve-", suffix=".err", delete=False) as err:
            err_path = Path(err.name)
        try:
            with open(err_path, "wb") as err:
                proc = subprocess.Popen([*(server or SERVER), s0.path, "--host", "127.0.0.1", "--port", "0",
                                         "--device", s0.backend], stdout=subprocess.PIPE, stderr=err)
            ready = _Lines(proc.stdout).next(limits.load_timeout_s)
            if not isinstance(ready, dict) or "url" not in ready:
                outcome, reason, extra = _death(proc, err_path, ready == "timeout", "starting the server")
                if outcome == "crash" and extra["returncode"] > 0:
                    outcome = "fail"  # a clean error exit (bad model file): a load failure, not a crash
                    last = extra["stderr_tail"].strip().splitlines()
                    reason = f"server did not start: {last[-1] if last else reason}"
                on_record(record(s0, Outcome(outcome, "load", reason, extra)))
                for s in pending[1:]:
                    on_record(record(s, Outcome("skip", "load", "not run: the server did not start")))
                return
            base = ready["url"]
            while pending:
                s = pending[0]
                try:
                    body = _post(f"{base}/v1/completions", {"prompt": s.prompt["input"], "max_tokens": s.max_new_tokens,
                                                           "temperature": s.temperature, "seed": s.seed},
                                 s.timeout_s + limits.kill_grace_s)
                    choice = body["choices"][0]
                    result = {"event": "result", "text": choice["text"], "finish_reason": choice["finish_reason"],
                              "token_ids": choice.get("token_ids", [])}
                    pending.pop(0)
                    if not on_record(record(s, judge(s, result))):
                        return
                except urllib.error.HTTPError as exc:
                    pending.pop(0)
                    if not on_record(record(s, judge(s, http_error_result(exc.code, exc.read())))):
                        return
                except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                    alive = proc.poll() is None
                    outcome, reason, extra = _death(proc, err_path, alive, f"scenario {s.id} ({exc})")
                    pending.pop(0)
                    if not on_record(record(s, Outcome(outcome, "serve", reason, extra))):
                        return
                    break  # restart the server for the rest
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            err_path.unlink(missing_ok=True)


def run_matrix(scenarios: list[Scenario], policy: str = "collect-all", limits: Limits | None = None,
               child: list[str] | None = None, server: list[str] | None = None,
               stack: StackSpec | None = None) -> list[Evidence]:
    """Every scenario once, grouped by (variant, backend, run|serve); stops per the failure policy.
    cuda scenarios on a host without CUDA are recorded as skipped, not run; so are the scenarios
    `stack` (None: builtin) does not run (stack_model.skip_reason)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown failure policy {policy!r} (one of {', '.join(POLICIES)})")
    limits = limits or Limits()
    records: list[Evidence] = []
    stopped: list[str] = []

    def on_record(r: Evidence) -> bool:
        records.append(r)
        if not stopped and should_stop(policy, r):
            stopped.append(r.details["scenario"]["id"])
        return not stopped

    groups: dict[tuple, list[Scenario]] = {}
    for s in scenarios:
        groups.setdefault((s.variant, s.backend, s.modality == "serve"), []).append(s)
    cuda = None
    for (_variant, backend, serve), group in groups.items():
        if stopped:
            break
        if (why := stack_model.skip_reason(stack, "serve" if serve else "run", backend)) is not None:
            records += [record(s, Outcome("skip", "load", why)) for s in group]
            continue
        if backend == "cuda":
            cuda = _cuda_available() if cuda is None else cuda
            if not cuda:
                for s in group:
                    records.append(record(s, Outcome("skip", "load", "no CUDA device on this host")))
                continue
        if serve:
            run_serve_group(group, limits, on_record, server)
        else:
            run_group(group, limits, on_record, child, stack)
    done = {r.details["scenario"]["id"] for r in records}
    for s in scenarios:
        if s.id not in done:
            reason = f"not run: {policy} stopped after {stopped[0]}"
            if policy == "fail-fast":
                reason += " (its stderr tail is in that record)"
            records.append(record(s, Outcome("skip", "load", reason)))
    return records


def _cuda_available() -> bool:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                         capture_output=True, text=True)
    return out.stdout.strip() == "True"


# -- the child side ------------------------------------------------------------------------------------

def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _generate(model, s: dict, prompt: str) -> dict:
    g = model.generate([prompt], max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                       seed=s["seed"], timeout_s=s["timeout_s"])[0]
    return {"text": g.text, "token_ids": list(g.token_ids), "finish_reason": g.finish_reason,
            "metrics": {"tokens": len(g.token_ids), "time_to_first_token_s": g.time_to_first_token_s,
                        "total_time_s": g.total_time_s, "decode_tokens_per_s": g.decode_tokens_per_s}}


_references: dict[str, Any] = {}  # the child's loaded reference models, by path


def _reference_embedding(path: str, text: str) -> dict:
    """The source weights' embedding of `text` (float32, on the CPU), or why there is none."""
    try:
        if path not in _references:
            from ..runtime import load_model

            _references[path] = load_model(path, device="cpu", weights="dequantized")
        return {"reference_values": [float(v) for v in list(_references[path].embed([text])[0])]}
    except Exception as exc:  # noqa: BLE001 - the scenario records why it could not be compared
        return {"reference_error": f"{type(exc).__name__}: {exc}"}


def run_one(model, s: dict) -> dict:
    """One scenario in this process: run = one prompt, chat = the turns through the chat template;
    an encoder embeds the prompt (and, given the source weights, the reference embeds it too)."""
    prompt = s["prompt"]
    if getattr(model, "kind", "decoder") != "decoder":
        vectors = model.embed([prompt["input"]])
        out: dict[str, Any] = {"values": [float(v) for v in list(vectors[0])]}
        if s.get("reference") and prompt.get("category") != "EDGE":
            out.update(_reference_embedding(s["reference"], prompt["input"]))
        return out
    if s["modality"] == "chat":
        messages: list[dict] = []
        replies, metrics = [], {}
        for turn in prompt.get("turns") or [prompt["input"]]:
            messages.append({"role": "user", "content": turn})
            text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            out = _generate(model, s, text)
            messages.append({"role": "assistant", "content": out["text"]})
            replies.append(out["text"])
            metrics = out["metrics"]
            if out["finish_reason"] == "timeout":
                break
        return {**out, "text": replies[-1], "replies": replies, "metrics": metrics}
    return _generate(model, s, prompt["input"])


def child_main() -> int:
    job = json.load(sys.stdin)
    try:
        model = stack_model.load(job)  # our runtime, or the job's stack through its adapter
    except Exception as exc:  # noqa: BLE001 - any load error is this scenario's finding
        _emit({"event": "load_error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _emit({"event": "loaded", "kind": getattr(model, "kind", "decoder")})
    for s in job["scenarios"]:
        try:
            _emit({"event": "result", "id": s["id"], **run_one(model, s)})
        except Exception as exc:  # noqa: BLE001 - reported per scenario; the parent judges it
            _emit({"event": "error", "id": s["id"], "error": f"{type(exc).__name__}: {exc}", "message": str(exc),
                   "error_type": type(exc).__name__, "refusal": isinstance(exc, AprQaError)})
    if isinstance(model, stack_model.StackScenarioModel):
        model.close()  # its work folder (the GGUF export, a command's request and response)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
