"""Workflow commands the Snakemake rules call: download, verify-checksums, checksum, fingerprint,
gate, andon, summarize, report, hub-mirror; and sync-generated (docs/gates.md, schema enums)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import AprQaError

DEFAULT_STATE = Path("results/andon")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a model from a HuggingFace hub, verify it, write its manifest")
    p.add_argument("repo", help="hub repository id, e.g. org/name")
    p.add_argument("--id", dest="model_id", help="model id in the workflow (default: the repo name)")
    p.add_argument("--revision", default="main", help="branch, tag or commit (resolved to a commit and recorded)")
    p.add_argument("--files", action="append", default=[], metavar="GLOB",
                   help="fetch only weights matching GLOB (repeatable), e.g. one GGUF of many")
    p.add_argument("--manifest", type=Path, required=True, help="manifest JSON to write")
    p.add_argument("--cache-dir", type=Path, help="HF cache directory (default: HF_HUB_CACHE)")
    p.add_argument("--max-size-gb", type=float, default=10.0, help="gate D5 warns above this total size")
    p.add_argument("--retries", type=int, default=3, help="gate D3 retries on network errors")
    p.add_argument("--slow-s", type=float, default=600.0, help="gate D6 warns when fetch and verify take longer")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry wait in seconds (doubles)")
    p.add_argument("--unsafe-allow-pickle", action="store_true", help="gate G6: allow pickle weights (.bin/.pt)")
    p.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                   help="pin a file's sha256 (repeatable); with pins, every fetched file must be pinned (gate D4)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("verify-checksums", help="re-check the files checksum records name (gate D4): download "
                       "manifests and FILE.sha256.json records; fails when one differs or nothing was verified")
    p.add_argument("records", type=Path, nargs="+", metavar="RECORD")
    p.add_argument("--no-cache", action="store_true", help="rehash even files whose stat is unchanged")
    p.set_defaults(func=cmd_verify_checksums)

    p = sub.add_parser("checksum", help="record (or check) a file's size and sha256 as JSON")
    p.add_argument("file", type=Path)
    p.add_argument("--json", type=Path, help="write the record here (default: print it)")
    p.add_argument("--expect", type=Path, help="a record to verify the file against instead")
    p.set_defaults(func=cmd_checksum)

    p = sub.add_parser("fingerprint", help="a workflow job's code fingerprint, from its code record")
    p.add_argument("record", type=Path, help="the job's record: results/.code/<job>/.../<name>.json")
    p.add_argument("--explain", action="store_true", help="list the files and versions it covers")
    p.set_defaults(func=cmd_fingerprint)

    p = sub.add_parser("gate", help="enforce an evidence file's gates (andon): fail/halt on tripped gates")
    p.add_argument("evidence", type=Path)
    p.add_argument("--stage", required=True)
    p.add_argument("--subject", required=True, help="model or model/variant, for andon lines")
    p.add_argument("--marker", type=Path, required=True, help="file touched when no fail/halt gate tripped")
    _andon_args(p)
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("andon", help="run a stage under the andon cord, or inspect/reset the line")
    asub = p.add_subparsers(dest="andon_command", required=True)
    r = asub.add_parser("run", help="run CMD; record its failure; stop the line per policy")
    r.add_argument("--stage", required=True)
    r.add_argument("--subject", required=True)
    r.add_argument("--evidence", type=Path, help="CMD writes this evidence file even when gates trip")
    _andon_args(r)
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    r.set_defaults(func=cmd_andon_run)
    for name, fn in (("status", cmd_andon_status), ("reset", cmd_andon_reset)):
        s = asub.add_parser(name, help=f"{name} the line")
        s.add_argument("--state", type=Path, default=DEFAULT_STATE)
        s.set_defaults(func=fn)

    p = sub.add_parser("summarize", help="one model/variant's status across the stages (the Andon board's row), "
                       "from the files given")
    p.add_argument("--model", required=True)
    p.add_argument("--variant", required=True)
    for name, what in (("manifest", "download manifest"), ("apr", ".apr file"), ("apr-record", ".apr checksum record"),
                       ("conversion", "conversion record"), ("validation", "validate evidence"),
                       ("evaluation", "evaluate evidence")):
        p.add_argument(f"--{name}", type=Path, required=True, help=f"the variant's {what} (may be missing)")
    p.add_argument("--andon-state", type=Path, help="Andon state folder: its events mark failed stages red")
    p.add_argument("--fingerprint", action="append", default=[], metavar="STAGE:HASH")
    p.add_argument("--json", type=Path, required=True)
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("report", help="write results/report.md from whatever the stages produced")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--models", required=True, help="comma-separated model ids")
    p.add_argument("--variants", required=True, help="comma-separated variants")
    p.add_argument("--prompts", type=Path, help="golden prompt set (its sha256 is reported)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--usd-per-device-hour", type=float, help="price of the evaluation device: the Pareto cost axis")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("gates", help="the gate catalogue: every gate, its stage, level, threshold and gateway")
    p.add_argument("--markdown", action="store_true", help="print docs/gates.md")
    p.set_defaults(func=cmd_gates)

    p = sub.add_parser("sync-generated", help="rewrite docs/gates.md and the config schemas' variant enums "
                       "from the gate catalogue and the quantization registry")
    p.add_argument("--root", type=Path, default=Path("."), help="repository root (default: here)")
    p.add_argument("--check", action="store_true", help="only report stale files (exit 1 when there are any)")
    p.set_defaults(func=cmd_sync_generated)

    p = sub.add_parser("hub-mirror", help="serve local folders as a HuggingFace-compatible hub")
    p.add_argument("repos", nargs="+", metavar="ORG/NAME=FOLDER")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.set_defaults(func=cmd_hub_mirror)


def _andon_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help="andon state directory")
    p.add_argument("--policy", default="stop-on-p0", help="stop-on-first | stop-on-p0 | collect-all")


def cmd_download(args: argparse.Namespace) -> int:
    from ..fsutil import write_text_atomic
    from ..hub.download import ModelSpec, Options, download, failure_record_path, parse_pins, raise_failure

    spec = ModelSpec(args.model_id or args.repo.split("/")[-1], args.repo, args.revision, args.files,
                     args.unsafe_allow_pickle, parse_pins(args.sha256))
    manifest = download(spec, Options(args.cache_dir, args.max_size_gb, args.retries, args.backoff,
                                        lease_holder=str(args.manifest.resolve()), slow_s=args.slow_s))
    failed = failure_record_path(args.manifest)
    if manifest["status"] == "failed":
        # the failed D3/D4 records, as measured, beside the manifest (which a failed job must not leave)
        args.manifest.unlink(missing_ok=True)
        write_text_atomic(failed, json.dumps(manifest, indent=2) + "\n")
        raise_failure(manifest)
    failed.unlink(missing_ok=True)
    write_text_atomic(args.manifest, json.dumps(manifest, indent=2) + "\n")
    if manifest["status"] == "ok":
        print(f"{spec.repo}@{manifest['commit']}: {len(manifest['files'])} files, "
              f"{manifest['total_bytes'] / 1e6:.1f} MB verified", file=sys.stderr)
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AprQaError(f"cannot read JSON: {exc}", path) from None


def cmd_verify_checksums(args: argparse.Namespace) -> int:
    from ..workflow import checksums
    from ..workflow.integrity import verify_records

    if args.no_cache:
        os.environ.pop(checksums.CACHE_ENV, None)
    n = verify_records(args.records)
    where = args.records[0] if len(args.records) == 1 else f"{len(args.records)} records"
    print(f"{where}: {n} files match their recorded sha256", file=sys.stderr)
    return 0


def cmd_checksum(args: argparse.Namespace) -> int:
    from ..errors import GateFailure
    from ..fsutil import write_text_atomic
    from ..workflow.checksums import file_record

    if not args.file.exists():
        raise AprQaError("no such file", args.file)
    record = file_record(args.file)
    if args.expect is not None:
        want = _read_json(args.expect)
        if want.get("sha256") != record["sha256"] or want.get("size") != record["size"]:
            raise GateFailure(f"D4 checksum mismatch: recorded sha256 {want.get('sha256')}, now {record['sha256']}",
                              "halt", args.file)
        return 0
    text = json.dumps(record, indent=2) + "\n"
    if args.json:
        write_text_atomic(args.json, text)
    else:
        print(text, end="")
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from ..workflow import fingerprint

    if not args.record.is_file():
        raise AprQaError(f"{args.record}: no code record (the job has not run yet)")
    print(fingerprint.plan_key(fingerprint.rule_of(args.record), args.record))
    if args.explain:
        print("\n".join(fingerprint.explain(args.record)))
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from ..workflow.andon import enforce

    return enforce(args.evidence, args.stage, args.subject, args.state, args.policy, args.marker)


def cmd_andon_run(args: argparse.Namespace) -> int:
    from ..workflow.andon import run

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise AprQaError("andon run: no command given (use: apr-qa andon run ... -- CMD ARGS)")
    return run(cmd, args.stage, args.subject, args.state, args.policy, args.evidence)


def cmd_andon_status(args: argparse.Namespace) -> int:
    from ..workflow.andon import load_events, stop_reason

    stop = stop_reason(args.state)
    print("line STOPPED: " + json.dumps(stop) if stop else "line running")
    for e in load_events(args.state):
        print(f"{e['level'].upper():5} {e['stage']:9} {e['subject']}: {e['message']}")
    return 1 if stop else 0


def cmd_andon_reset(args: argparse.Namespace) -> int:
    from ..workflow.andon import reset

    print("line restarted" if reset(args.state) else "line was not stopped")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from ..fsutil import write_text_atomic
    from ..workflow.summary import stage_events, summarize

    fps = dict(f.split(":", 1) for f in args.fingerprint)
    files = {"manifest": args.manifest, "apr": args.apr, "apr_record": args.apr_record, "conversion": args.conversion,
             "validation": args.validation, "evaluation": args.evaluation}
    events = stage_events(args.andon_state) if args.andon_state else None
    summary = summarize(files, args.model, args.variant, fps, events)
    write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
    print(f"{args.model}/{args.variant}: {summary['status']}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.board import write_report

    status = write_report(args.results, args.models.split(","), args.variants.split(","), args.out, args.prompts,
                          args.usd_per_device_hour)
    print(f"{args.out}: {status}", file=sys.stderr)
    return 0


def cmd_gates(args: argparse.Namespace) -> int:
    from ..gate_catalogue import GATES, markdown

    if args.markdown:
        print(markdown(), end="")
        return 0
    for g in GATES:
        print(f"{g.id:4} {g.stage:9} {g.level:5} {g.gateway or '-':3} {g.category or '-':4} "
              f"{g.measures}: {g.threshold}")
    return 0


def cmd_sync_generated(args: argparse.Namespace) -> int:
    from ..workflow.generated import stale, sync

    if args.check:
        files = stale(args.root)
        for rel in files:
            print(f"{rel}: out of date (run `apr-qa sync-generated`)", file=sys.stderr)
        return 1 if files else 0
    for rel in sync(args.root):
        print(f"{rel}: rewritten", file=sys.stderr)
    return 0


def cmd_hub_mirror(args: argparse.Namespace) -> int:
    from ..hub.mirror import HubMirror

    repos = {}
    for item in args.repos:
        repo, sep, folder = item.partition("=")
        if not sep:
            raise AprQaError(f"expected ORG/NAME=FOLDER, got {item!r}")
        repos[repo] = folder
    mirror = HubMirror(repos, args.host, args.port)
    print(f"serving {len(repos)} repos at {mirror.url} (export HF_ENDPOINT={mirror.url})", file=sys.stderr)
    try:
        mirror.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
