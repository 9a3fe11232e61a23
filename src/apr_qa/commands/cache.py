"""`apr-qa cache`: the JIT model cache (apr_qa.hub.model_cache): ls, gc, pin, unpin, and the
workflow's restore/release hooks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="the model cache: list, collect (size cap, LRU, retention), pin")
    p.add_argument("--cache-dir", type=Path, help="HF cache directory (default: HF_HUB_CACHE)")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    s = csub.add_parser("ls", help="cached model revisions, least recently used first, with pins, leases, outcomes")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_ls)
    s = csub.add_parser("gc", help="evict expired retentions, then LRU revisions down to the cap")
    s.add_argument("--max-size-gb", type=float, help="cap for this run (default: config model_cache.max_size_gb, 10)")
    s.add_argument("--dry-run", action="store_true", help="say what would be evicted; delete nothing")
    s.set_defaults(func=cmd_gc)
    for name, fn in (("pin", cmd_pin), ("unpin", cmd_unpin)):
        s = csub.add_parser(name, help=f"{name} every revision of REPO (a pinned repo is never evicted)")
        s.add_argument("repo", metavar="REPO")
        s.set_defaults(func=fn)
    s = csub.add_parser("restore", help="workflow: fetch a manifest's evicted revision again (checked against its "
                        "sha256s) and lease it")
    s.add_argument("manifest", type=Path)
    s.set_defaults(func=cmd_restore)
    s = csub.add_parser("release", help="workflow: a model is done; release its lease, record its outcome, collect")
    s.add_argument("manifest", type=Path)
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--certification", type=Path, help="the model's certification (outcome pass/fail/blocked)")
    how.add_argument("--outcome", choices=["pass", "fail", "blocked"])
    s.set_defaults(func=cmd_release)


def _cache(args: argparse.Namespace):
    from ..hub.model_cache import ModelCache, policy_from_env

    return ModelCache(args.cache_dir, policy_from_env())


def _report(evictions, dry_run: bool) -> None:
    verb = "would evict" if dry_run else "evicted"
    for e in evictions:
        print(f"{verb} {e.repo}@{e.commit[:12]} ({e.size / 1e6:.1f} MB): {e.reason}", file=sys.stderr)


def cmd_ls(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    cache = _cache(args)
    size, revisions = cache.listing()
    if args.json:
        print(json.dumps({"cache_dir": str(cache.dir), "size": size, "max_size_gb": cache.policy.max_size_gb,
                          "revisions": [asdict(r) for r in revisions]}, indent=1))
        return 0
    print(f"{cache.dir}: {size / 1e9:.3f} GB of {cache.policy.max_size_gb:g} GB")
    for r in revisions:
        tags = ["pinned"] * r.pinned + [f"leased by {len(r.leased_by)}"] * bool(r.leased_by)
        tags += [f"{r.outcome} {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.outcome_at))}"] * bool(r.outcome)
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_used))
        print(f"{r.repo}@{r.commit[:12]}  {r.size / 1e6:10.1f} MB  used {used}  {', '.join(tags)}".rstrip())
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    evictions, after = _cache(args).gc(args.max_size_gb, dry_run=args.dry_run)
    _report(evictions, args.dry_run)
    print(f"{len(evictions)} revisions {'would be ' if args.dry_run else ''}evicted; cache "
          f"{after / 1e9:.3f} GB", file=sys.stderr)
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    _cache(args).pin(args.repo)
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    _cache(args).unpin(args.repo)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ..hub.model_cache import restore

    n = restore(args.manifest)
    if n:
        print(f"{args.manifest}: {n} evicted files fetched again and verified", file=sys.stderr)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from ..hub.model_cache import outcome_of_certification, release

    outcome = args.outcome or outcome_of_certification(args.certification)
    _report(release(args.manifest, outcome), False)
    return 0
