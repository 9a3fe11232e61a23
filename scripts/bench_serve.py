#!/usr/bin/env python
"""Loopback load test of `apr-qa serve`: N requests, C at once, latency percentiles and errors.

Starts `apr-qa serve MODEL --port 0` on 127.0.0.1, then sends --requests chat completions through
--concurrency client threads, every other one with `stream: true` (read to its `data: [DONE]`), each
asking for --max-tokens tokens. A request counts as an error on any non-200 status, a transport error, a
stream without `[DONE]` or a body without a finish_reason. Latency is the wall time of the whole request
as the client sees it (queueing behind the server's one-generation-at-a-time lock included). Bounded:
requests not started before --deadline seconds are reported as "not run", never silently dropped.

--peer-url adds any other OpenAI-compatible server already listening on loopback (for instance
llama.cpp's `python -m llama_cpp.server --model X.gguf --interrupt_requests False`: by default it cuts a
running stream off when the next request arrives, which under this load breaks every other stream), loaded
the same way; the rounds alternate which server goes first, and medians over rounds are printed side by side.
The load average is printed before and after, since the machine is shared.

    .venv/bin/python scripts/bench_serve.py [MODEL] [--requests 200] [--concurrency 16] [--max-tokens 2]
        [--rounds 1] [--deadline 600] [--peer-url http://127.0.0.1:PORT --peer-model NAME]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def one_request(base: str, model: str, i: int, max_tokens: int, stream: bool) -> str | None:
    """-> None on success, else the error in a few words."""
    body = {"model": model, "messages": [{"role": "user", "content": f"Say something about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            data = resp.read().decode()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    if stream:
        events = [e for e in data.replace("\r\n", "\n").split("\n\n") if e.strip()]
        return None if events and events[-1].strip() == "data: [DONE]" else "stream without [DONE]"
    return None if json.loads(data)["choices"][0].get("finish_reason") else "no finish_reason"


def load(base: str, model: str, n: int, concurrency: int, max_tokens: int, deadline_s: float) -> dict:
    stop_at = time.perf_counter() + deadline_s
    latencies: list[float] = []
    errors: dict[str, int] = {}
    not_run = 0

    def task(i: int):
        if time.perf_counter() > stop_at:
            return None, "not run"
        t0 = time.perf_counter()
        err = one_request(base, model, i, max_tokens, stream=bool(i % 2))
        return time.perf_counter() - t0, err

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for latency, err in pool.map(task, range(n)):
            if err == "not run":
                not_run += 1
                continue
            latencies.append(latency)
            if err:
                errors[err] = errors.get(err, 0) + 1
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"done": len(latencies), "not_run": not_run, "errors": sum(errors.values()), "error_kinds": errors,
            "p50_s": q[49] if q else None, "p99_s": q[98] if q else None, "wall_s": wall,
            "req_per_s": len(latencies) / wall if wall else 0.0}


def start_ours(model: Path, weights: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "apr_qa.cli", "serve", str(model), "--host", "127.0.0.1",
                             "--port", "0", "--weights", weights],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        sys.exit(f"bench_serve: apr-qa serve {model} exited with {proc.wait()} before listening")
    info = json.loads(line)
    return proc, info["url"], info["model"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", default=ROOT / "models/derived/SmolLM2-135M-Instruct")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds per load run; later requests: not run")
    ap.add_argument("--weights", choices=["packed", "dequantized"], default="packed")
    ap.add_argument("--peer-url", help="another OpenAI-compatible server on loopback, loaded the same way")
    ap.add_argument("--peer-model", default="", help="the model name the peer expects")
    args = ap.parse_args()
    if args.peer_url and urllib.parse.urlsplit(args.peer_url).hostname not in LOOPBACK:
        sys.exit(f"bench_serve: --peer-url {args.peer_url} is not a loopback address")

    print(f"load average before: {os.getloadavg()}  cpus: {os.cpu_count()}")
    proc, url, model_id = start_ours(args.model, args.weights)
    servers = {"apr-qa serve": (url, model_id)}
    if args.peer_url:
        servers["peer"] = (args.peer_url.rstrip("/"), args.peer_model)
    results: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for r in range(args.rounds):
            names = list(servers)
            for name in names[r % len(names):] + names[:r % len(names)]:
                base, model = servers[name]
                res = load(base, model, args.requests, args.concurrency, args.max_tokens, args.deadline)
                results[name].append(res)
                print(f"round {r + 1} {name}: " + json.dumps(res))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{args.requests} requests x {args.rounds} rounds, {args.concurrency} at once, max_tokens "
          f"{args.max_tokens}, half streamed; medians over rounds")
    print(f"{'server':14} {'p50 s':>8} {'p99 s':>8} {'req/s':>7} {'errors':>7} {'not run':>8}")
    for name, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k in ("p50_s", "p99_s", "req_per_s")}
        print(f"{name:14} {med['p50_s']:8.3f} {med['p99_s']:8.3f} {med['req_per_s']:7.1f} "
              f"{sum(x['errors'] for x in runs):7d} {sum(x['not_run'] for x in runs):8d}")
    return 1 if any(x["errors"] for runs in results.values() for x in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
