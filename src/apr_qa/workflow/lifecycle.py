"""A workflow run's life outside its jobs: recovery after a crash, the Andon board's "not current" mark,
the model cache's leases, and the board and certifications written after a failed run.

The Snakefile calls these from its parse step and its onstart / onsuccess / onerror handlers with one
`Line` built from the config (rules/common.smk); they never run in a job.

After a crash. The board describes the results as they are when the last run ended. A run that
executes jobs marks it "not current" when it starts (removing it then would make Snakemake rerun the
report rule); the report rule, or else onsuccess/onerror, rewrites it, so a killed run leaves the mark.
The next run that finds no Snakemake lock in its directory (after `--unlock`) removes a marked board,
so that its report rule writes a current one, and the temporary files of killed commands
(`tempfiles`). A dry run (`snakemake -n`) changes nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout
from ..fsutil import write_text_atomic
from ..report.render import inline
from ..stacks import StackSpec


# A run that executes jobs marks the board "not current" when it starts; the report rule (or the
# Snakefile's onsuccess/onerror) rewrites it when the run ends. A killed run leaves the mark, so the
# board never passes for a description of results that the killed jobs may have removed.
NOT_CURRENT = "<!-- apr-qa: not current -->"


def mark_not_current(out: Path, started: str) -> bool:
    """Prefix report.md (and report.html beside it) with the mark; False when there is no board."""
    note = (f"**Not current:** a workflow run started {started} has not finished (still running, or "
            "interrupted). This board describes the results before that run; rerun the workflow to rewrite it.")
    try:
        text = out.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    if NOT_CURRENT not in text:
        write_text_atomic(out, f"{NOT_CURRENT}\n> {note}\n\n{text}")
    page_path = out.with_suffix(".html")
    try:
        page = page_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    if NOT_CURRENT not in page and "<body>" in page:
        banner = f"<body>\n{NOT_CURRENT}<p style=\"background:#fdd;padding:8px\">{inline(note)}</p>"
        write_text_atomic(page_path, page.replace("<body>", banner, 1))
    return True


def is_not_current(out: Path) -> bool:
    try:
        return NOT_CURRENT in out.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False


@dataclass
class Line:
    """What the run-level steps need to know of the configured workflow."""

    results: Path
    models: dict[str, dict[str, Any]]  # id -> the config's model entry (repo, family...)
    variants: dict[str, list[str]]  # id -> the variants built
    prompts: Path
    checksum_cache: Path
    playbook: dict[str, Any] | None = None  # the tier's; None runs the gates only
    other_stacks: dict[str, StackSpec] = field(default_factory=dict)
    usd_per_device_hour: float | None = None

    # -- paths ---------------------------------------------------------------------------------
    @property
    def report(self) -> Path:
        return layout.path(self.results, "report")

    def manifest(self, model: str) -> Path:
        return layout.path(self.results, "manifest", model=model)

    def certifications(self, models: list[str] | None = None) -> list[Path]:
        """Every certification file of these models (all by default): builtin's, then each other stack's."""
        models = list(self.models) if models is None else models
        return [layout.path(self.results, "certification", model=m) for m in models] + [
            layout.path(self.results, "stack_certification", model=m, stack=s)
            for m in models for s in self.other_stacks]

    def all_variants(self) -> list[str]:
        return sorted({v for vs in self.variants.values() for v in vs})

    # -- commands the report rule runs as well -------------------------------------------------
    def certification_commands(self, certifications: list[Path]) -> list[str]:
        """With a tier: models.csv and junit.xml of the given certification files."""
        if not (self.playbook and certifications):
            return []
        files = " ".join(str(c) for c in certifications)
        models_csv, junit = layout.path(self.results, "models_csv"), layout.path(self.results, "junit")
        return [f"rm -f {models_csv} && apr-qa export-csv {files} --output {models_csv}",
                f"apr-qa junit {files} --output {junit}"]

    def report_commands(self) -> list[str]:
        """The report rule: the certification files of every model, then the board (report.md/.html)."""
        board = (f"apr-qa report --results {self.results} --models {','.join(self.models)} "
                 f"--variants {','.join(self.all_variants())} --prompts {self.prompts} --out {self.report}"
                 + (f" --usd-per-device-hour {self.usd_per_device_hour}" if self.usd_per_device_hour is not None
                    else ""))
        return [*self.certification_commands(self.certifications() if self.playbook else []), board]

    # -- the board -----------------------------------------------------------------------------
    def drop_board(self) -> None:
        for path in (self.report, layout.path(self.results, "report_html")):
            path.unlink(missing_ok=True)

    def write_board(self) -> str:
        """The board, written in this process (no apr-qa command needed): it can always be written."""
        from ..report.board import write_report

        overall = write_report(self.results, list(self.models), self.all_variants(), self.report, self.prompts,
                               self.usd_per_device_hour)
        print(f"{self.report}: {overall}", file=sys.stderr)
        return overall

    # -- the run's steps -------------------------------------------------------------------------
    def recover_from_crash(self, locked: bool, dry_run: bool) -> None:
        """At parse time: while no Snakemake holds this directory's lock, and unless this is a dry run,
        remove killed commands' temporary files and a board an interrupted run left "not current"."""
        if locked or dry_run:
            return
        self.remove_leftovers()
        if is_not_current(self.report):
            print(f"{self.report} was left 'not current' by an interrupted run: the report rule rewrites it",
                  file=sys.stderr)
            self.drop_board()

    def start(self) -> None:
        """onstart (a run with jobs, under Snakemake's lock)."""
        self.remove_leftovers()
        mark_not_current(self.report, time.strftime("%Y-%m-%d %H:%M:%S %Z"))

    def finish(self) -> None:
        """onsuccess: the leases end; the board, when this run did not rewrite it (no report job ran)."""
        self.release_leases()
        if is_not_current(self.report):
            self.write_board()

    def after_failure(self) -> None:
        """onerror: BLOCKED certifications for the models whose tier variants the gates stopped (from
        their stage evidence), then the reports of whatever exists. Every step that fails says so on
        stderr; the board is removed first, so it never claims a state the results no longer have."""
        self.drop_board()
        self.release_leases()
        if self.playbook:
            for model in self.models:
                self._certify_blocked(model)
        existing = [c for c in self.certifications() if c.exists()]
        for cmd in self.certification_commands(existing):
            proc = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            if proc.returncode:
                print(f"ERROR: after the failure, `{cmd}` failed too: {proc.stderr.strip()}", file=sys.stderr)
        try:
            self.write_board()
        except Exception as exc:  # noqa: BLE001 - the one line is the point: there is no board
            print(f"ERROR: the failure report {self.report} could not be written ({type(exc).__name__}: {exc}); "
                  "there is no report until the next run", file=sys.stderr)

    # -- pieces ----------------------------------------------------------------------------------
    def remove_leftovers(self) -> None:
        from .tempfiles import remove_stale_temps

        for path in remove_stale_temps([self.results, self.checksum_cache]):
            print(f"removed {path}: temporary file of a killed run", file=sys.stderr)

    def release_leases(self) -> None:
        """At the end of a run nothing of it is queued any more: the leases its jobs took on the models'
        revisions in the model cache end here (one left by a killed run expires after lease_hours)."""
        from ..hub import model_cache

        for model in self.models:
            manifest = self.manifest(model)
            try:
                if manifest.exists():
                    model_cache.release(manifest, None)
            except Exception as exc:  # noqa: BLE001 - best effort: the lease still expires
                print(f"ERROR: releasing the model cache lease of {model}: {exc}", file=sys.stderr)

    def _certify_blocked(self, model: str) -> None:
        """A model's BLOCKED certification on builtin and on every other stack (the download, conversion
        and validation gates are the artifact's); a blocked model's outcome goes to the model cache."""
        from ..hub import model_cache
        from .blocked import certify_blocked

        assert self.playbook is not None
        entry = self.models[model]
        for stack_name, stack in [("builtin", None), *self.other_stacks.items()]:
            output = (layout.path(self.results, "certification", model=model) if stack is None
                      else layout.path(self.results, "stack_certification", model=model, stack=stack_name))
            try:
                blocked = certify_blocked(self.results, model, entry["repo"], self.playbook, self.variants[model],
                                          output, family=entry.get("family"), stack=stack)
                if blocked and stack is None and self.manifest(model).exists():
                    model_cache.release(self.manifest(model), "blocked")
            except Exception as exc:  # noqa: BLE001 - best effort: the board must still be written
                where = "" if stack is None else f" on stack {stack_name}"
                print(f"ERROR: certification of {model}{where} after failure: {exc}", file=sys.stderr)
