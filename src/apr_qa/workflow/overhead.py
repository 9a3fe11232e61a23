"""Keep the Snakemake process's own CPU small: planning large DAGs, and waiting through long runs.

Both are called from the Snakefile, in every Snakemake process that parses it. Figures from
`scripts/bench_dag.py` (planning) and `scripts/bench_sched.py` (real runs); docs/rebuild.md has them.

Collector. Planning builds hundreds of thousands of long-lived objects (jobs, file names, wildcards,
params), and garbage is nearly all freed by reference counting. With CPython's default thresholds
the cyclic collector still walks the whole heap again and again while the DAG grows, and several
more times at exit: at 500 models x 5 variants (a no-op plan of 15,502 jobs) 3.3 s of 20 s went to
collections while planning and 3.4 s to those at exit. `tame_collector` raises the young-generation
threshold (a collection per 50,000 allocations instead of 700) and freezes the heap at exit, so
the exit-time collections skip it. Reference cycles live a little longer; nothing else changes.

Re-evaluation timers. Snakemake's scheduler rate-limits job starts (--max-jobs-per-timespan,
100/1s by default). While ready jobs wait for resources (here: most of a run, since evaluations
take one `evaluations` slot each) every scheduling pass starts a timer that triggers another pass
one timespan later, and that pass starts its own timer. Each job that finishes adds a pass and so
one more self-renewing timer: after n jobs, n passes per second, each a full job selection. In a
50-minute run of the default models that took 8.5 CPU-minutes of a 2-core machine.
`coalesce_reevaluations` keeps one pending timer per scheduler: a pass that asks for a
re-evaluation no earlier than the pending timer fires is served by it. The rate limit itself is
untouched: a pass still re-evaluates one timespan after it was rate-limited, or earlier.
"""

from __future__ import annotations

import atexit
import gc
import threading
import time

YOUNG_THRESHOLD = 50_000
_tamed = False
_timer_lock = threading.Lock()  # guards each scheduler's pending due time


def tame_collector() -> None:
    """Idempotent: a Snakefile is parsed more than once in some Snakemake modes."""
    global _tamed
    if _tamed:
        return
    _tamed = True
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, _young), older, oldest)
    atexit.register(gc.freeze)


def coalesce_reevaluations() -> bool:
    """Patch Snakemake's JobScheduler so it keeps at most one pending re-evaluation timer that fires
    no later than every request made since. Returns False, changing nothing, where this Snakemake's
    scheduler has no such method (a version that schedules differently: tests/test_overhead.py
    notices)."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler  # type: ignore[import-untyped]
    except ImportError:
        return False
    original = getattr(JobScheduler, "_schedule_reevalutation", None)  # sic: Snakemake's spelling
    if original is None:
        return False
    if getattr(original, "coalesced", False):
        return True

    def schedule_reevaluation(self, delay: float) -> None:
        due = time.monotonic() + delay
        with _timer_lock:
            pending = getattr(self, "_apr_qa_reevaluation_due", None)
            if pending is not None and pending <= due:
                return  # the pending timer fires first and re-evaluates then
            self._apr_qa_reevaluation_due = due

        def fire() -> None:
            with _timer_lock:
                if getattr(self, "_apr_qa_reevaluation_due", None) == due:
                    self._apr_qa_reevaluation_due = None
            self._open_jobs.release()

        timer = threading.Timer(delay, fire)
        timer.daemon = True  # a pending re-evaluation never holds up the exit
        timer.start()

    schedule_reevaluation.coalesced = True  # type: ignore[attr-defined]
    JobScheduler._schedule_reevalutation = schedule_reevaluation
    return True

