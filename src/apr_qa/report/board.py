"""results/report.md and report.html: the Andon board of a workflow run, written whatever happened.

Built only from the files the stages left behind (manifests, conversion summaries, evidence,
evaluations, andon events, certifications), so the same code writes the report after a green run
(the report rule) and after a failed one (the Snakefile's onerror handler). When models have
certifications (results/certify/<model>/evidence.json) the report adds the certification table and
the Five Whys of every failure, and the board shows each model's certification status on its variants.
The Pareto frontiers (one per model, from the evaluations: pareto.png/.svg next to the report, linked
from the Markdown, embedded in the HTML) appear with or without a tier. The page is assembled once as
blocks and rendered to both Markdown and one self-contained HTML file (apr_qa.report.render).
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import AprQaError
from ..fsutil import sha256_file, write_text_atomic
from ..layout import path
from .render import Block, Cell, to_html, to_markdown
from .render import number as _num
from .stacks import differential_blocks, read_differentials
from .corpus import corpus_blocks
from ..workflow.andon import stop_reason
from ..workflow.fingerprint import job_keys
from ..hub.model_cache import report_blocks as model_cache_blocks
from .sections import (board_blocks, board_status, certification_view, detail_blocks, figure_blocks,
                              headline, scenario_summary, tone)
from ..workflow.summary import read_json, stage_events, summarize_results

COLOUR = {"green": "green", "yellow": "YELLOW", "red": "RED", None: "-"}
STACK = ("apr-qa", "numpy", "torch", "gguf", "safetensors", "tokenizers", "huggingface_hub", "snakemake")


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _with_ci(block: Any, fmt: str = ".3g", scale: float = 1.0) -> str:
    if not isinstance(block, dict):
        return "-"
    value = block.get("value", block.get("mean"))
    if value is None:
        return "-"
    ci = block.get("ci95")
    text = format(value * scale, fmt)
    return text + (f" [{format(ci[0] * scale, fmt)}, {format(ci[1] * scale, fmt)}]" if ci else "")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _variant_rows(results: Path, models: list[str], variants: list[str]) -> list[dict[str, Any]]:
    events = stage_events(path(results, "andon"))
    certs = _certifications(results, models)
    rows = []
    for model in models:
        for variant in variants:
            s = summarize_results(results, model, variant, events)
            if model in certs:  # the model's certification caps what the board says of its variants
                s["_certification"] = certification_view(*certs[model], variant)
            wc = {"model": model, "variant": variant}
            s["_convert"] = read_json(path(results, "conversion", **wc)) or {}
            s["_eval"] = read_json(path(results, "evaluation", **wc)) or {}
            s["_validate"] = read_json(path(results, "validation", **wc)) or {}
            apr = path(results, "apr", **wc)
            s["_size"] = apr.stat().st_size if apr.exists() else None
            rows.append(s)
    return rows


def _board(results: Path, models: list[str], variants: list[str], prompts: Path | None) -> tuple[list[Block], str]:
    rows = _variant_rows(results, models, variants)
    counts = {k: sum(board_status(r) == k for r in rows)
              for k in ("CERTIFIED", "PROVISIONAL", "BLOCKED", "SKIPPED", "PENDING")}
    overall = ("RED" if counts["BLOCKED"] else
               "YELLOW" if counts["PROVISIONAL"] or counts["SKIPPED"] or counts["PENDING"] else "GREEN")
    out: list[Block] = [("h1", "apr-qa certification report")]
    stop = stop_reason(path(results, "andon"))
    if stop is not None:
        out += [("p", f"**LINE STOPPED** ({stop.get('policy')}): {stop.get('level')} in {stop.get('stage')} of "
                      f"{stop.get('subject')}: {stop.get('message')}"),
                ("p", "Review the cause (Five Whys), then `apr-qa andon reset` to restart the line.")]
    out += [("p", f"Overall: **{overall}** - " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()
                                                              if v or k != "PROVISIONAL"))]

    out += [("h2", "Status (Andon board)"), *board_blocks(rows, models, variants)]
    table = []
    for r in rows:
        st = r["stages"]
        why = ""
        if r["status"] == "BLOCKED":
            why = f"{r['gate']} ({r['level']}, {r['stage']}): {r['reason']}"
        elif r["status"] in ("SKIPPED",):
            why = r.get("reason") or ""
        elif r["status"] == "PENDING":
            why = r.get("reason") or f"{r['stage']} not run"
        stages = [Cell(COLOUR[st[s]["colour"]], st[s]["colour"] or "none") for s in st]
        if tone(r) == "yellow" or board_status(r) != r["status"]:
            why = headline(r)  # the warning gate (expected vs actual), or why the model is not CERTIFIED
        table.append([r["model"], r["variant"], Cell(board_status(r), tone(r)), *stages, scenario_summary(r), why])
    out += [("table", ["model", "variant", "status", "download", "convert", "validate", "evaluate",
                       "failed scenarios", "blocking gate / reason"], table)]

    out += [("h2", "Metrics"), ("p", "Intervals are 95 % (Wilson for proportions, Student t for means). "
             "Accuracy: seeded sampling runs matching the expected pattern (exact match; and the greedy pass); "
             "F1: their mean token F1 against the prompts' reference answers (SQuAD's definition, best leading "
             "span; '-' where the golden set has none); logit consistency against the source "
             "weights at fp32: top-k agreement rate (encoders: min embedding cosine), llama.cpp-style "
             "mean KLD +- SE, same top-1 rate, RMS of the reference token's probability change.")]
    table = []
    for r in rows:
        c, e = r["_convert"], r["_eval"]
        lc = _get(e, "logit_consistency", "top_k_agreement") or _get(e, "embedding_consistency") or {}
        kl = _get(e, "logit_consistency", "kl_divergence") or {}
        kld = kl.get("kld") or {}
        table.append([
            r["model"], r["variant"], _num(r["_size"] / 1e6 if r["_size"] else None, ".1f"),
            _num(c.get("seconds"), ".1f"), _num(c.get("param_count"), ","),
            _with_ci(_get(e, "accuracy", "overall")), _with_ci(_get(e, "accuracy", "f1")),
            _num(_get(e, "accuracy", "greedy", "value")),
            _with_ci(e.get("latency")), _with_ci(_get(e, "throughput", "decode_tokens_per_s")),
            _num(lc.get("agreement_rate", lc.get("cosine_min"))),
            f"{kld['mean']:.3g} +- {kld['se']:.2g}" if "mean" in kld else "-",
            _num(_get(kl, "same_top1", "rate")), _num(_get(kl, "delta_p", "rms")),
            _num(_get(e, "memory", "peak_bytes") and _get(e, "memory", "peak_bytes") / 2**20, ".0f"),
        ])
    out += [("table", ["model", "variant", "size MB", "convert s", "params", "accuracy", "F1", "greedy acc",
                       "latency s", "decode tok/s", "top-k agreement / cos min", "mean KLD", "same top-1",
                       "RMS dp", "peak MiB"], table)]

    out += [("h2", "Gates"), ("p", "Failed and warning gates (measured vs threshold); passing gates are counted.")]
    table = []
    for r in rows:
        for stage, s in r["stages"].items():
            gates = s["gates"]
            if not gates:
                continue
            bad = [g for g in gates if not g.get("passed")]
            table.append([r["model"], r["variant"], stage, f"{len(gates) - len(bad)}/{len(gates)}",
                          "; ".join(f"{g['id']} {g.get('level', '')}: {_num(g.get('measured'))} vs "
                                    f"{_num(g.get('threshold'))}" for g in bad) or "-"])
    out += [("table", ["model", "variant", "stage", "passed", "not passed"], table)]
    return out, overall


def _oracle_blocks(results: Path, models: list[str]) -> list[Block]:
    """Our runtime vs transformers on each source (apr-qa oracle), when the workflow ran it."""
    records = {m: read_json(path(results, "oracle", model=m)) or read_json(path(results, "oracle_failure", model=m))
               for m in models}
    rows = [[m, r.get("compared", "-"), _num(r.get("max_relative_diff")), _num(r.get("relative_limit")),
             "RED: runtime disagrees (O1 failed)" if r.get("passed") is False
             else "NOT VERIFIED: transformers cannot load it" if r.get("status") == "unsupported"
             else r.get("status", "-"),
             r.get("verdict") or r.get("reason", "")]
            for m, r in records.items() if r]
    if not rows:
        return []
    return [("h2", "Runtime oracle (gate O1)"),
            ("p", "Our fp32 runtime against HuggingFace transformers on each source's weights (max |diff| "
                  "relative to the reference's value range, at most 1e-4). The runtime computes every reference, "
                  "so a model whose O1 fails gets no reference and no evaluation; a model transformers cannot "
                  "load is evaluated, marked not verified."),
            ("table", ["model", "compared", "max relative diff", "limit", "status", "verdict"], rows)]


def _tail(results: Path, models: list[str], variants: list[str], prompts: Path | None) -> list[Block]:
    out: list[Block] = _oracle_blocks(results, models) + [("h2", "Provenance")]
    table = []
    for model in models:
        m = read_json(path(results, "manifest", model=model)) or {}
        table.append([model, m.get("repo", "-"), m.get("commit", "-"), m.get("status", "not downloaded"),
                      len(m.get("files", [])), _num(m.get("total_bytes") and m["total_bytes"] / 1e6, ".1f")])
    out += [("table", ["model", "repo", "commit", "download", "files", "MB"], table)]
    if prompts is not None and prompts.exists():
        out += [("p", f"Golden set: `{prompts}` sha256 `{sha256_file(prompts)}`")]

    out += model_cache_blocks([read_json(path(results, "manifest", model=m)) or {} for m in models])
    out += [("h2", "Stack")]
    out += [("p", "The code behind each kind of job: the digest of the package files and library versions its "
                  "jobs loaded (docs/rebuild.md); jobs that loaded the same code share one.")]
    by_job: dict[str, list[str]] = {}
    for job, key in job_keys(results).items():
        by_job.setdefault(job.split("/")[0], []).append(key.split(":")[1])
    table = [[job, len(keys), ", ".join(sorted(set(keys)))] for job, keys in by_job.items()]
    out += [("table", ["job", "jobs", "code fingerprints"], table)]
    out += [("p", "Host: " + ", ".join([platform.node(), f"{platform.system()} {platform.release()}",
                                        platform.machine(),
                                        f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"])),
            ("p", "Versions: " + ", ".join(f"{d} {_version(d)}" for d in STACK)),
            ("p", f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}")]
    return out


def _read_certification(file: Path) -> tuple[dict[str, Any], list] | None:
    from ..certify.pipeline import load_records

    if not file.exists():
        return None
    try:
        ctx, records = load_records(file)
    except AprQaError:
        return None
    return (ctx, records) if "mqs" in ctx else None


def _certifications(results: Path, models: list[str]) -> dict[str, tuple[dict[str, Any], list]]:
    """Each model's certification (context, records), for those that have one."""
    out = {}
    for model in models:
        if (cert := _read_certification(path(results, "certification", model=model))) is not None:
            out[model] = cert
    return out


def _stack_certifications(results: Path, models: list[str]) -> dict[str, dict[str, tuple[dict[str, Any], list]]]:
    """Each model's certifications on the other stacks (docs/stacks.md), by stack name."""
    out: dict[str, dict[str, tuple[dict[str, Any], list]]] = {}
    for model in models:
        folder = path(results, "stack_certification", model=model, stack="-").parent
        for file in sorted(folder.glob("*.json")):
            if (cert := _read_certification(file)) is not None:
                out.setdefault(model, {})[file.stem] = cert
    return out


MAX_WHYS_PER_MODEL = 100  # the rest stay in the evidence file and junit.xml


def _failed_scenarios(records: list) -> str:
    """"N: id, id, ..." of a certification's failed, crashed or timed-out scenarios, or "-"."""
    from ..certify.mqs import outcome_of
    from .sections import MAX_SCENARIO_IDS

    failed = [r.id for r in records if "scenario" in r.details and outcome_of(r) in ("fail", "crash", "timeout")]
    if not failed:
        return "-"
    more = f" (+{len(failed) - MAX_SCENARIO_IDS} more)" if len(failed) > MAX_SCENARIO_IDS else ""
    return f"{len(failed)}: {', '.join(failed[:MAX_SCENARIO_IDS])}{more}"


def _certification_row(model: str, stack: str, ctx: dict[str, Any], records: list) -> list[Any]:
    from ..certify.mqs import GATEWAYS, NOT_APPLICABLE, category_label

    mqs = ctx["mqs"]
    if mqs["status"] == NOT_APPLICABLE:
        return [model, ctx["subject"], stack, ctx.get("tier"), "-", "-", "-", mqs["status"],
                *("-" for _ in GATEWAYS), "-", "-", str(ctx.get("not_applicable") or "-").replace("|", "/")]
    gws = {g["id"]: g for g in mqs["gateways"]}
    reason = "; ".join(f"{g['id']}: {g['reason']}" for g in mqs["gateways"] if not g["passed"])
    if not reason and not ctx.get("tier_passed"):
        reason = f"MQS {mqs['raw']} below the tier's {ctx.get('pass_threshold')}"
    categories = ", ".join(f"{k} {category_label(c)}" for k, c in mqs["categories"].items())
    return [model, ctx["subject"], stack, ctx.get("tier"), mqs["raw"], f"{mqs['normalized']:.1f}", mqs["grade"],
            mqs["status"], *("pass" if gws.get(g, {}).get("passed") else "FAIL" for g in GATEWAYS),
            _failed_scenarios(records), categories, reason[:300].replace("|", "/") or "-"]


def _certification_blocks(results: Path, models: list[str], certs: dict, out_dir: Path) -> list[Block]:
    """The certification table (one row per model and stack: builtin's, then each other stack's beside
    it) and the Five Whys of every failure."""
    from ..certify.mqs import GATEWAYS, NOT_APPLICABLE, category_of, outcome_of

    stack_certs = _stack_certifications(results, models)
    out: list[Block] = [("h2", "Certification"),
                        ("p", "MQS raw 0-1000 over six categories; any failed gateway (G0-G4) zeroes it. A category "
                              "the tier did not test is not measured: left out, with the measured categories' "
                              "weights scaled to the 1000 points. Normalized = 100 log(1 + 9x) / log 10. "
                              "Registry: `models.csv`; CI: `junit.xml`."),
                        ("p", "Each stack is certified in its own right (docs/stacks.md): the same tier playbook's "
                              "scenarios run on that stack, scored with the artifact's download and validation "
                              "evidence (shared) and the stack's own evaluations. builtin is our runtime; "
                              "NOT_APPLICABLE: the stack does not run the model (an encoder on a decoder-only "
                              "stack).")]
    table = []
    for model in models:
        if model not in certs:
            m = read_json(path(results, "manifest", model=model)) or {}
            status = "SKIPPED" if m.get("status") == "skipped" else "PENDING"
            table.append([model, m.get("repo", "-"), "builtin", "-", "-", "-", "-", status, *("-" for _ in GATEWAYS),
                          "-", "-", m.get("skip_reason") or "not certified in this run"])
        else:
            table.append(_certification_row(model, "builtin", *certs[model]))
        for stack, (ctx, records) in stack_certs.get(model, {}).items():
            table.append(_certification_row(model, stack, ctx, records))
    statuses = [row[7] for row in table]
    judged = set(statuses) - {NOT_APPLICABLE}
    verdict = "RED" if "BLOCKED" in judged else "GREEN" if judged <= {"CERTIFIED"} else "YELLOW"
    out += [("p", f"Certification: **{verdict}** - " + ", ".join(
        f"{statuses.count(k)} {k.lower()}" for k in ("CERTIFIED", "PROVISIONAL", "BLOCKED", "PENDING", "SKIPPED",
                                                     NOT_APPLICABLE)
        if statuses.count(k)) + " (the board above shows the stage gates per variant, on builtin)")]
    out += [("table", ["model", "model id", "stack", "tier", "MQS raw", "MQS norm", "grade", "status", *GATEWAYS,
                       "failed scenarios", "MQS categories", "blocking reason"], table)]

    # the Pareto frontier comes from the evaluations, tier or not (certify.certification.pareto_blocks)

    out += [("h2", "Failures and their Five Whys"),
            ("p", "Every failed gate, gateway and scenario of the certifications, with its root-cause chain "
                  "derived from the evidence.")]
    every = [(model, "builtin", ctx, records, path(results, "certification", model=model))
             for model, (ctx, records) in certs.items()]
    every += [(model, stack, ctx, records, path(results, "stack_certification", model=model, stack=stack))
              for model, by_stack in stack_certs.items() for stack, (ctx, records) in by_stack.items()]
    for model, stack, ctx, records, file in every:
        failed = [r for r in records if not r.passed and outcome_of(r) != "skip"]
        if not failed:
            continue
        on = "" if stack == "builtin" else f" on stack {stack}"
        out += [("h3", f"{model} ({ctx['subject']}){on}: {len(failed)} failures")]
        items = []
        for r in failed[:MAX_WHYS_PER_MODEL]:
            fw = r.details.get("five_whys") or {}
            where = r.details.get("variant") or (r.details.get("scenario") or {}).get("variant")
            head = (f"**{r.id}** ({category_of(r)}, {r.level}{', ' + where if where else ''}): measured "
                    f"`{_num(r.measured)}`, threshold `{_num(r.threshold)}`")
            subs = [f"why {i}: {w}" for i, w in enumerate(fw.get("whys", []), 1)]
            if fw:
                subs.append(f"root cause: {fw['root_cause']}; countermeasure: {fw['countermeasure']}")
            items.append((head, subs))
        out += [("list", items)]
        if len(failed) > MAX_WHYS_PER_MODEL:
            out += [("p", f"... and {len(failed) - MAX_WHYS_PER_MODEL} more in `{file}`")]
    return out


def render_blocks(results: Path, models: list[str], variants: list[str], prompts: Path | None,
                  out_dir: Path, usd_per_device_hour: float | None = None) -> tuple[list[Block], str]:
    from . import certification

    blocks, overall = _board(results, models, variants, prompts)
    rows = _variant_rows(results, models, variants)
    blocks += certification.stage_five_whys(rows) + certification.pareto_blocks(rows, out_dir, usd_per_device_hour)
    blocks += figure_blocks(rows, out_dir)
    blocks += corpus_blocks(results, models, variants, out_dir)
    certs = _certifications(results, models)
    if certs or _stack_certifications(results, models):
        blocks += _certification_blocks(results, models, certs, out_dir)
    blocks += differential_blocks(read_differentials(results, models, variants))  # stacks (docs/stacks.md)
    blocks += detail_blocks(results, rows, out_dir)
    return blocks + _tail(results, models, variants, prompts), overall


def render(results: Path, models: list[str], variants: list[str], prompts: Path | None) -> tuple[str, str]:
    blocks, overall = render_blocks(results, models, variants, prompts, results)
    return to_markdown(blocks, results), overall


def write_report(results: Path, models: list[str], variants: list[str], out: Path, prompts: Path | None,
                 usd_per_device_hour: float | None = None) -> str:
    """report.md at `out` and report.html beside it, plus pareto.png/.svg of the evaluated variants."""
    blocks, overall = render_blocks(results, models, variants, prompts, out.parent, usd_per_device_hour)
    write_text_atomic(out, to_markdown(blocks, out.parent))
    write_text_atomic(out.with_suffix(".html"), to_html(blocks))
    return overall
