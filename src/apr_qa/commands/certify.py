"""`apr-qa score`, `certify`, `export-csv`, `sync-readme`, `junit`, `pareto`, `certify-report`, `serve`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import AprQaError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="MQS of an evidence file: raw, normalized, grade, status, gateways")
    p.add_argument("evidence", type=Path, nargs="+", help="evidence JSON file(s), scored together")
    p.add_argument("--json", action="store_true", help="print the score as JSON")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("certify", help="run a playbook's scenario matrix on a model's variants and score it")
    p.add_argument("--model-id", required=True, help="HuggingFace repo id (the registry key)")
    p.add_argument("--playbook", required=True, help="tier name (smoke, mvp, quick, standard, deep) or a playbook file")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=PATH",
                   help="a model file to certify (.apr, .gguf, SafeTensors folder); repeat")
    p.add_argument("--output", type=Path, required=True, help="evidence JSON to write")
    p.add_argument("--family", help="model family for the registry")
    p.add_argument("--evidence", type=Path, action="append", default=[],
                   help="evidence JSON of other stages (validate, eval, download) to include in the score")
    p.add_argument("--reference", help="the source weights (SafeTensors folder or file): an encoder variant's "
                   "embeddings must match theirs within the level's cosine limit (default: a SafeTensors --variant)")
    p.add_argument("--source-index", type=Path,
                   help="model.safetensors.index.json (Five Whys name the shard of a missing tensor)")
    p.add_argument("--failure-policy", choices=["stop-on-first", "stop-on-p0", "collect-all", "fail-fast"],
                   help="override the playbook's policy")
    p.add_argument("--stack", default="builtin",
                   help="the stack certified (docs/stacks.md): builtin (default), llamacpp, or a stack specification "
                        "as JSON; the scenarios run on it, and --evidence must hold its own evaluations (download "
                        "and validation evidence is the artifact's, every stack's)")
    p.add_argument("--dry-run", action="store_true", help="print the scenario plan and exit")
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("export-csv", help="upsert certify evidence into the models.csv registry")
    p.add_argument("evidence", type=Path, nargs="*", help="certify evidence files")
    p.add_argument("--evidence-dir", type=Path, help="also every */evidence.json below this folder, and every "
                   "stack's certification beside it (*/stacks/*.json)")
    p.add_argument("--output", type=Path, required=True, help="models.csv to update")
    p.set_defaults(func=cmd_export_csv)

    p = sub.add_parser("sync-readme", help="rewrite the certification table between the README markers")
    p.add_argument("file", type=Path, help="Markdown file with <!-- CERTIFICATION-TABLE-START/END --> markers")
    p.add_argument("--csv", type=Path, required=True, help="models.csv")
    p.set_defaults(func=cmd_sync_readme)

    p = sub.add_parser("junit", help="JUnit XML of evidence files (one testcase per gate/scenario)")
    p.add_argument("evidence", type=Path, nargs="+")
    p.add_argument("--output", type=Path, required=True)
    p.set_defaults(func=cmd_junit)

    p = sub.add_parser("pareto", help="Pareto frontier of variants: table, value scores, PNG/SVG plot")
    p.add_argument("input", type=Path,
                   help="certify evidence JSON, or a JSON list of {name, accuracy, latency_s, size_bytes, cost?}")
    p.add_argument("--png", type=Path)
    p.add_argument("--svg", type=Path)
    p.add_argument("--json", type=Path, help="write the analysis rows here")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("certify-report", help="HTML and Markdown report of a certify evidence file")
    p.add_argument("evidence", type=Path)
    p.add_argument("--html", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--pareto-png", type=Path, help="plot to embed (written here when absent)")
    p.set_defaults(func=cmd_report)

    from .. import serve as server  # stdlib only: cheap to import for the defaults

    p = sub.add_parser("serve",
                       help="OpenAI-compatible HTTP server for a model (/v1/completions, /v1/chat/completions)")
    p.add_argument("model", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stdout)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request generation timeout, seconds")
    p.add_argument("--weights", choices=["packed", "dequantized"], default="packed",
                   help="quantized variants: run from their blocks (default) or dequantized at load")
    p.add_argument("--model-id", help="the model name clients see and send (default: the file or folder name)")
    p.add_argument("--max-tokens-limit", type=int, default=server.MAX_TOKENS_LIMIT,
                   help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=server.MAX_BODY_BYTES, help="larger request bodies get 413")
    p.add_argument("--socket-timeout", type=float, default=server.SOCKET_TIMEOUT_S,
                   help="seconds a connection may stall on one read or write before it is closed")
    p.add_argument("--max-queue", type=int, default=server.MAX_QUEUE,
                   help="requests that may wait while one generates; more get 503 with Retry-After at once")
    p.set_defaults(func=cmd_serve)


def cmd_score(args: argparse.Namespace) -> int:
    from ..certify.mqs import score
    from ..certify.pipeline import load_records

    records = [r for path in args.evidence for r in load_records(path)[1]]
    s = score(records)
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
    else:
        print(f"MQS {s.raw}/1000  normalized {s.normalized:.1f}  grade {s.grade}  status {s.status}")
        print("gateways: " + "  ".join(f"{g.id} {'pass' if g.passed else 'FAIL'}" for g in s.gateways))
        for g in s.gateways:
            if not g.passed:
                print(f"  {g.id}: {g.reason}")
        print("categories: " + "  ".join(f"{k} {c.label()}" for k, c in s.categories.items()))
        if s.penalty:
            print(f"penalty: {s.penalty} ({s.crashes} crashes, {s.timeouts} timeouts)")
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    from ..certify.mqs import NOT_APPLICABLE
    from ..certify.pipeline import certify
    from ..certify.playbooks import load_playbook, plan, select_variants, variant_from_spec
    from ..stacks import StackSpec

    stack = StackSpec.parse(args.stack, "--stack")
    playbook = load_playbook(args.playbook)
    variants = [variant_from_spec(v) for v in args.variant]
    if args.dry_run:
        for s in plan(playbook, select_variants(playbook, variants)):
            print(s.id)
        return 0
    source_index = None
    if args.source_index:
        try:
            source_index = json.loads(args.source_index.read_text())
        except (OSError, ValueError) as exc:
            raise AprQaError(f"cannot read source index: {exc}", args.source_index) from None
    records, score = certify(args.model_id, playbook, variants, args.output, family=args.family,
                             extra_evidence=args.evidence, source_index=source_index, policy=args.failure_policy,
                             reference=args.reference, stack=stack)
    on = "" if stack.kind == "builtin" else f" on stack {stack.name}"
    if score.status == NOT_APPLICABLE:  # the stack does not run this model: said so, not a failure
        reason = json.loads(args.output.read_text()).get("not_applicable")
        print(f"{args.model_id}: not certified{on}: {reason} -> {args.output}", file=sys.stderr)
        return 0
    threshold = playbook["thresholds"]["mqs_pass"]
    print(f"{args.model_id}{on}: MQS {score.raw} ({score.normalized:.1f}, {score.grade}) {score.status}; tier "
          f"{playbook['tier']} {'passed' if score.tier_passed(threshold) else 'NOT passed'} (needs {threshold}) "
          f"-> {args.output}", file=sys.stderr)
    return 0 if score.tier_passed(threshold) else 1


def cmd_export_csv(args: argparse.Namespace) -> int:
    from ..certify.registry import export_csv

    files = list(args.evidence)
    if args.evidence_dir:
        files += sorted(args.evidence_dir.glob("*/evidence.json")) + sorted(args.evidence_dir.glob("*/stacks/*.json"))
    if not files:
        raise AprQaError("no evidence files given (pass files or --evidence-dir)")
    rows = export_csv(files, args.output)
    print(f"{args.output}: {len(rows)} models", file=sys.stderr)
    return 0


def cmd_sync_readme(args: argparse.Namespace) -> int:
    from ..certify.registry import sync_readme

    changed = sync_readme(args.file, args.csv)
    print(f"{args.file}: {'table updated' if changed else 'already up to date'}", file=sys.stderr)
    return 0


def cmd_junit(args: argparse.Namespace) -> int:
    from ..certify.junit import write_junit
    from ..certify.pipeline import load_records

    suites = []
    for path in args.evidence:
        ctx, records = load_records(path)
        name = str(ctx.get("subject") or path.stem)
        stack = (ctx.get("certified_stack") or {}).get("name", "builtin")
        suites.append((name if stack == "builtin" else f"{name} on {stack}", str(ctx.get("stage") or "evidence"),
                       records))
    counts = write_junit(args.output, suites)
    print(f"{args.output}: {counts}", file=sys.stderr)
    return 0


def _pareto_points(path: Path):
    from ..certify.pareto import Point, points_from_certify
    from ..certify.pipeline import load_records

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AprQaError(f"cannot read: {exc}", path) from None
    if isinstance(data, dict):
        return points_from_certify(*load_records(path))
    try:
        return [Point(**p) for p in data]
    except (TypeError, ValueError) as exc:
        raise AprQaError(f"bad point: {exc}", path) from None


def cmd_pareto(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ..certify.pareto import analyze
    from ..certify.plots import pareto_plot
    from ..fsutil import write_text_atomic

    points = _pareto_points(args.input)
    if not points:
        raise AprQaError("no variant with accuracy and latency to compare", args.input)
    rows = analyze(points)
    print(tabulate([[r["model"] or "-", r["name"], r["accuracy"], r["latency_s"], r["size_bytes"], r["cost"],
                     r["on_frontier"], r["value_score"]] for r in rows],
                   headers=["model", "variant", "accuracy", "latency s", "bytes", "cost", "frontier", "value"]))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=2) + "\n")
    if args.png or args.svg:
        pareto_plot(points, args.png or args.svg.with_suffix(".png"), args.svg)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.evidence import write_reports
    from ..certify.pareto import analyze, points_from_certify
    from ..certify.plots import pareto_plot
    from ..certify.pipeline import load_records

    ctx, records = load_records(args.evidence)
    if "mqs" not in ctx:
        raise AprQaError("not a certify evidence file (no 'mqs' section)", args.evidence)
    points = points_from_certify(ctx, records)
    png = args.pareto_png
    if points and png and not png.exists():
        pareto_plot(points, png)
    write_reports(ctx, records, analyze(points), args.markdown, args.html, png if png and png.exists() else None)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import serve

    return serve(str(args.model), args.host, args.port, args.device, args.timeout, args.weights,
                 model_id=args.model_id, max_tokens_limit=args.max_tokens_limit,
                 max_body_bytes=args.max_body_bytes, socket_timeout_s=args.socket_timeout,
                 max_queue=args.max_queue)
