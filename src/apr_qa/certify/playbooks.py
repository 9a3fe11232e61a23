"""Playbooks: the tier templates in config/playbooks/ and per-model playbooks that extend them.

A model playbook names a template (`extends: quick`, or a path) and overrides any part of it;
mappings merge key by key, lists and scalars replace. The merged result must satisfy
config/playbooks/schema.yaml. `plan` expands a playbook and the model's variant files into the
scenario matrix: variants x backends x modalities x prompts x runs.

`categories` lists the MQS categories the tier's scenarios test, and a listed category must be one
its matrix can measure (check_categories): STAB compares greedy reruns of a prompt, so a tier that
lists it runs every prompt at least twice at temperature 0. A category nothing tested is "not
measured" in the MQS (apr_qa.certify.mqs), never full marks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import yamlsafe
from ..errors import AprQaError
from ..evaluation.prompts import PLAYBOOK_CATEGORIES, parse_prompt
from .scenarios import Limits, Scenario

TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "config" / "playbooks"
TIERS = ("smoke", "mvp", "quick", "standard", "deep")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yamlsafe.load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AprQaError("playbook not found", path) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AprQaError(f"cannot read playbook: {' '.join(str(exc).split())}", path) from None
    if not isinstance(data, dict):
        raise AprQaError("a playbook must be a YAML mapping", path)
    return data


def _resolve(data: dict[str, Any], path: Path, templates: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise AprQaError(f"extends must name a tier ({', '.join(TIERS)}) or a playbook file, not {parent!r:.100}", path)
    parent_path = templates / f"{parent}.yaml" if parent in TIERS else (path.parent / parent).resolve()
    if parent_path in seen:
        raise AprQaError(f"playbook extends itself through {parent!r}", path)
    base = _resolve(_read(parent_path), parent_path, templates, (*seen, parent_path))
    return deep_merge(base, data)


def load_playbook(name_or_path: str | Path, templates: Path | None = None) -> dict[str, Any]:
    """A tier name ("quick") or a playbook file; `extends` resolved, checked against the schema."""
    import jsonschema

    templates = templates or TEMPLATES_DIR
    path = templates / f"{name_or_path}.yaml" if str(name_or_path) in TIERS else Path(name_or_path).resolve()
    playbook = _resolve(_read(path), path, templates, (path,))
    schema = _read(templates / "schema.yaml")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(playbook), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(map(str, e.path)) or "(top level)"
        raise AprQaError(f"invalid playbook at {where}: {e.message}"
                         + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""), path)
    playbook["prompts"] = [parse_prompt(p, i, path, require_pattern=False, categories=PLAYBOOK_CATEGORIES).to_dict()
                           for i, p in enumerate(playbook["prompts"])]
    problems = check_categories(playbook)
    if problems:
        raise AprQaError(f"playbook {playbook['name']}: " + "; ".join(problems), path)
    return playbook


MIN_STAB_RUNS = 2  # the determinism check compares a prompt's greedy reruns: one run has nothing to compare


def check_categories(playbook: dict[str, Any]) -> list[str]:
    """Why a category the playbook lists could not be measured by its scenario matrix (empty: all can)."""
    m = playbook["test_matrix"]
    greedy = m.get("temperature", 0.0) == 0.0
    prompt_categories = {p["category"] for p in playbook["prompts"]}
    max_variants = playbook["variants"].get("max_variants")
    why = {
        "QUAL": None if "QUAL" in prompt_categories else "it lists QUAL but has no QUAL prompt",
        "EDGE": None if "EDGE" in prompt_categories else "it lists EDGE but has no EDGE prompt",
        "PERF": None if "run" in m["modalities"] else "it lists PERF but not the run modality (decode throughput)",
        "COMP": None if {"chat", "serve"} & set(m["modalities"]) else
        "it lists COMP but runs neither the chat nor the serve modality",
        "STAB": None if m["runs_per_prompt"] >= MIN_STAB_RUNS and greedy else
        f"it lists STAB, which compares greedy reruns of each prompt: it needs runs_per_prompt >= {MIN_STAB_RUNS} "
        f"at temperature 0 (has {m['runs_per_prompt']} at {m.get('temperature', 0.0)})",
        "REGR": None if greedy and max_variants != 1 else
        "it lists REGR, which compares each variant's greedy first token with the reference variant's: it needs "
        "temperature 0 and more than one variant",
    }
    return [reason for c in playbook["categories"] if (reason := why.get(c))]


@dataclass
class Variant:
    name: str
    path: str
    format: str            # safetensors | gguf | apr
    quant: str | None = None  # the .apr level


def variant_from_spec(spec: str) -> Variant:
    """NAME=PATH; the format follows from the path, an .apr's level from its metadata."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise AprQaError(f"variant {spec!r} is not NAME=PATH")
    p = Path(path)
    if p.suffix == ".apr":
        from ..apr import AprReader

        with AprReader(p) as reader:
            level = (reader.metadata.get("quantization") or {}).get("level")
        return Variant(name, path, "apr", level)
    if p.suffix == ".gguf":
        return Variant(name, path, "gguf")
    if p.is_dir() or p.suffix == ".safetensors":
        return Variant(name, path, "safetensors")
    raise AprQaError("not a model variant (.apr, .gguf, .safetensors or a model folder)", p)


def select_variants(playbook: dict[str, Any], variants: list[Variant]) -> list[Variant]:
    """The variants the tier certifies, in the playbook's format then quantization order."""
    spec = playbook["variants"]
    formats, quants = spec["formats"], spec["quantizations"]
    chosen = [v for v in variants if v.format in formats and (v.format != "apr" or v.quant in quants)]
    chosen.sort(key=lambda v: (formats.index(v.format), quants.index(v.quant) if v.format == "apr" else 0))
    if spec.get("max_variants"):
        chosen = chosen[: spec["max_variants"]]
    return chosen


def level_of(v: Variant) -> str:
    """The variant's quantization level as the evaluation names it: a .apr's level, else "source"."""
    return (v.quant or "source") if v.format == "apr" else "source"


def plan(playbook: dict[str, Any], variants: list[Variant], reference: str | None = None) -> list[Scenario]:
    """The scenario matrix; `reference` (the source weights) is what an encoder's embeddings are
    compared with."""
    m, t = playbook["test_matrix"], playbook["timeouts"]
    scenarios = []
    for v in select_variants(playbook, variants):
        for backend in m["backends"]:
            for modality in m["modalities"]:
                for prompt in playbook["prompts"]:
                    for run in range(1, m["runs_per_prompt"] + 1):
                        scenarios.append(Scenario(
                            f"{v.name}/{backend}/{modality}/{prompt['id']}/r{run}", v.name, v.path, backend, modality,
                            prompt, run, m.get("max_new_tokens", 16), m.get("temperature", 0.0), m.get("seed", 42),
                            t["scenario_s"], level_of(v), reference))
    return scenarios


def limits(playbook: dict[str, Any]) -> Limits:
    t = playbook["timeouts"]
    return Limits(t.get("load_s", Limits.load_timeout_s), t.get("kill_grace_s", Limits.kill_grace_s))
