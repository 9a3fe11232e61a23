"""Reference implementation of the `command` stack contract (docs/stacks.md), on our own runtime.

Usage: python stack_reference.py [--break WHAT] REQUEST.json RESPONSE.json
It loads the request's model with apr_qa's runtime, generates each prompt greedily `repeats` times,
and scores the request's token ids (full logits as .npy files in output_dir, or the top entries), so
the command stack running it must give exactly what the builtin stack gives. `--break WHAT` breaks the
contract in one way (the tests' contract violations); `--model-override PATH` runs other weights.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from apr_qa.runtime import load_model  # noqa: E402


def respond(request: dict, model_path: str | None = None) -> dict:
    model = load_model(model_path or request["model"])
    out_dir = Path(request["output_dir"])
    results = []
    for i, prompt in enumerate(request["prompts"]):
        runs = []
        for _ in range(request["repeats"]):
            g = model.generate([prompt["text"]], request["max_new_tokens"], temperature=0.0,
                               stop_on_eos=request["stop_on_eos"])[0]
            runs.append({"text": g.text, "token_ids": g.token_ids, "finish_reason": g.finish_reason,
                         "timings": {"time_to_first_token_s": g.time_to_first_token_s, "total_s": g.total_time_s}})
        result = {"id": prompt["id"], "prompt_token_ids": model.tokenizer.encode(prompt["text"]), "runs": runs}
        if request["logits"] != "none":
            logits = model.logits([prompt["token_ids"]])[0].float().numpy()
            if request["logits"] == "full":
                np.save(out_dir / f"logits_{i}.npy", logits)
                result["logits_npy"] = f"logits_{i}.npy"
            else:
                order = np.argsort(-logits, axis=-1, kind="stable")[:, :request["top_logits"]]
                result["top_logits"] = [[[int(t), float(row[t])] for t in top]
                                        for row, top in zip(logits, order, strict=True)]
        results.append(result)
    return {"contract": "apr-qa-stack/1", "runtime": {"name": "apr-qa-reference", "version": torch.__version__},
            "results": results}


BREAKS = {
    "wrong-contract": lambda r: r.update(contract="apr-qa-stack/0"),
    "missing-runs": lambda r: r["results"][0].pop("runs"),
    "few-runs": lambda r: r["results"][0]["runs"].pop(),
    "token-outside-vocab": lambda r: r["results"][1]["runs"][0]["token_ids"].append(10**9),
    "negative-time": lambda r: r["results"][0]["runs"][0]["timings"].update(total_s=-1.0),
    "ttft-after-total": lambda r: r["results"][0]["runs"][0]["timings"].update(time_to_first_token_s=1e6),
    "bad-finish": lambda r: r["results"][0]["runs"][0].update(finish_reason="done"),
    "extra-key": lambda r: r["results"][0].update(surprise=1),
    "reordered": lambda r: r["results"].reverse(),
    "logits-rows": lambda r, d=None: np.save(Path(r["_dir"]) / "logits_0.npy", np.zeros((1, 3), np.float32)),
    "logits-nan": lambda r: np.save(Path(r["_dir"]) / "logits_0.npy",
                                    np.full(np.load(Path(r["_dir"]) / "logits_0.npy").shape, np.nan, np.float32)),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--break", dest="breaks", choices=[*BREAKS, "not-json", "no-response", "exit-nonzero"])
    parser.add_argument("--model-override", help="run these weights instead of the request's (a stack that "
                        "loads the wrong file: what the differential comparison must flag)")
    parser.add_argument("request", type=Path)
    parser.add_argument("response", type=Path)
    args = parser.parse_args()
    request = json.loads(args.request.read_text())
    if args.breaks == "exit-nonzero":
        raise SystemExit("reference runtime: refusing on purpose") from None
    if args.breaks == "no-response":
        return 0
    response = respond(request, args.model_override)
    if args.breaks == "not-json":
        args.response.write_text("{not json")
        return 0
    if args.breaks:
        response["_dir"] = request["output_dir"]
        BREAKS[args.breaks](response)
        response.pop("_dir")
    args.response.write_text(json.dumps(response))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
