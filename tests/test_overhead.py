"""The Snakemake process's own overhead controls (apr_qa.workflow.overhead), on the installed Snakemake."""

from __future__ import annotations

import gc
import threading
import time

from snakemake.scheduling.job_scheduler import JobScheduler

from apr_qa.workflow import overhead


class Scheduler:
    """The one attribute of a JobScheduler the re-evaluation timer touches: the semaphore it releases."""

    def __init__(self):
        self._open_jobs = threading.Semaphore(0)

    def passes(self, within_s: float) -> int:
        deadline, n = time.monotonic() + within_s, 0
        while self._open_jobs.acquire(timeout=max(0.0, deadline - time.monotonic())):
            n += 1
        return n


def test_the_installed_snakemake_is_patched():
    # False would mean a Snakemake whose scheduler no longer has the method: look at how it re-evaluates now
    assert overhead.coalesce_reevaluations() is True
    assert getattr(JobScheduler._schedule_reevalutation, "coalesced", False)
    assert overhead.coalesce_reevaluations() is True  # idempotent


def test_requests_while_a_timer_is_pending_share_it():
    overhead.coalesce_reevaluations()
    s = Scheduler()
    for _ in range(20):  # 20 scheduling passes, each asking for a re-evaluation in 0.1 s
        JobScheduler._schedule_reevalutation(s, 0.1)
    assert s.passes(0.5) == 1
    JobScheduler._schedule_reevalutation(s, 0.05)  # after it fired, the next request gets its own timer
    assert s.passes(0.3) == 1


def test_an_earlier_request_is_not_delayed_by_a_later_pending_timer():
    overhead.coalesce_reevaluations()
    s = Scheduler()
    JobScheduler._schedule_reevalutation(s, 5.0)  # e.g. waiting for queue input
    start = time.monotonic()
    JobScheduler._schedule_reevalutation(s, 0.05)  # rate limit: re-evaluate one timespan later
    assert s._open_jobs.acquire(timeout=1.0) and time.monotonic() - start < 1.0


def test_collector_threshold_is_raised_once():
    before = gc.get_threshold()
    try:
        overhead.tame_collector()
        overhead.tame_collector()
        assert gc.get_threshold()[0] >= overhead.YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
    finally:
        gc.set_threshold(*before)
