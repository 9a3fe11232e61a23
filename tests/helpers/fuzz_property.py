"""The property every fuzzed input must keep, and the tally the fuzz tests print.

A reader given a corrupted file either succeeds or raises one AprQaError whose single line names a
file of the input; it never raises anything else, never runs for more than HANG_S seconds (a
watchdog turns a hang into a failure instead of a stuck suite), never grows the process's peak
memory more than 50 MB beyond what the pristine file needs, and never leaves an output file (or
its temporary) behind when it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable

from apr_qa.errors import AprQaError

# Examples per fuzz target; FUZZ_EXAMPLES=N raises every tiny-model target to N (real-model targets,
# seconds per case, to N // 25).
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0") or 0)
HANG_S = float(os.environ.get("FUZZ_HANG_S", "20"))
MEMORY_MARGIN = 50 << 20


def examples(default: int, real_model: bool = False) -> int:
    if not FUZZ_EXAMPLES:
        return default
    return max(default, FUZZ_EXAMPLES // 25) if real_model else FUZZ_EXAMPLES


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no `except Exception` in the code swallows it."""


@contextlib.contextmanager
def watchdog(seconds: float):
    def fire(signum, frame):
        raise Hang(f"still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


RSS_PEAK = _can_reset_peak()  # Linux: VmHWM is reset by writing 5 to clear_refs


@contextlib.contextmanager
def peak_growth():
    """Yields a one-element list that holds, afterwards, how far peak memory rose above its start (bytes):
    peak RSS (native allocations included) where the kernel lets it be reset, else tracemalloc's peak."""
    box = [0]
    if RSS_PEAK:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = _status_kb("VmRSS")
        try:
            yield box
        finally:
            box[0] = (_status_kb("VmHWM") - start) << 10
    else:
        tracemalloc.start()
        try:
            yield box
        finally:
            box[0] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


@dataclass
class Tally:
    """What one fuzz target saw: cases, outcomes, the slowest case and the largest memory growth."""

    tried: int = 0
    ok: int = 0
    refused: int = 0
    max_s: float = 0.0
    max_growth: int = 0
    crashes: int = 0
    hangs: int = 0
    baseline: int | None = None  # peak growth on the pristine input
    kinds: Counter = field(default_factory=Counter)

    def line(self, name: str) -> str:
        return (f"{name}: {self.tried} cases, {self.ok} read, {self.refused} refused with one line, "
                f"{self.crashes} crashes, {self.hangs} hangs; slowest {self.max_s:.2f} s, "
                f"peak memory +{self.max_growth / 2**20:.1f} MB (pristine +{(self.baseline or 0) / 2**20:.1f} MB)")


TALLIES: dict[str, Tally] = {}


def _leftovers(outputs: Iterable[Path]) -> list[Path]:
    found = []
    for out in outputs:
        if out.exists():
            found.append(out)
        found += out.parent.glob(f".{out.name}.*.tmp")
    return found


def expect_clean(target: str, action: Callable[[], object], *, within: Path, outputs: Iterable[Path] = (),
                 description: str = "") -> bool:
    """Run `action` on a corrupted input under the property above; True if it succeeded.

    within: the error must name this path or one below it (the input that was corrupted)."""
    within = Path(os.path.abspath(within))
    tally = TALLIES.setdefault(target, Tally())
    outputs = list(outputs)
    started = time.perf_counter()
    with peak_growth() as growth:
        try:
            with watchdog(HANG_S):
                action()
            ok = True
        except AprQaError as exc:
            ok = False
            text = str(exc)
            assert "\n" not in text, f"{description}: multi-line error {text!r}"
            assert str(within) in text, f"{description}: the error names no file of the input: {text}"
            tally.kinds[type(exc).__name__] += 1
        except Hang:
            tally.hangs += 1
            raise
        except BaseException:
            tally.crashes += 1
            raise
    seconds = time.perf_counter() - started
    tally.tried += 1
    tally.ok += ok
    tally.refused += not ok
    tally.max_s = max(tally.max_s, seconds)
    tally.max_growth = max(tally.max_growth, growth[0])
    baseline = tally.baseline or 0
    assert growth[0] <= baseline + MEMORY_MARGIN, \
        f"{description}: peak memory grew {growth[0] / 2**20:.0f} MB (pristine {baseline / 2**20:.0f} MB)"
    if not ok:
        left = _leftovers(outputs)
        assert not left, f"{description}: failed but left {left}"
    return ok


def pristine(target: str, action: Callable[[], object], warm: bool = True) -> None:
    """Run `action` on the unmodified input (it must succeed) and record its memory growth as the baseline
    (after a first run that imports what it needs, unless `warm` is False: for seconds-long real models)."""
    tally = TALLIES.setdefault(target, Tally())
    if warm:
        action()
    with peak_growth() as growth:
        action()
    tally.baseline = growth[0]
