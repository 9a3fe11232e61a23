"""Peak memory while a block runs: process RSS sampled by a background thread, plus CUDA allocator peaks.

A sampler (rather than getrusage's ru_maxrss) measures only the evaluated window: ru_maxrss is the
whole process's lifetime peak, which in a test run or a workflow includes earlier, unrelated work.
"""

from __future__ import annotations

import resource
import sys
import threading

import psutil
import torch


class PeakMemory:
    """Context manager; afterwards `.as_dict()` reports the peaks seen inside the block."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_before = 0
        self.rss_peak = 0
        self.cuda_peak_allocated: int | None = None
        self.cuda_peak_reserved: int | None = None

    def _sample(self) -> None:
        rss = self._process.memory_info().rss
        if rss > self.rss_peak:
            self.rss_peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self.rss_before = self.rss_peak = self._process.memory_info().rss
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._run, name="apr-qa-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_allocated = torch.cuda.max_memory_allocated(self.device)
            self.cuda_peak_reserved = torch.cuda.max_memory_reserved(self.device)

    @property
    def peak_bytes(self) -> int:
        """The figure gate T3 judges: device memory on CUDA, process RSS on CPU."""
        if self.cuda_peak_allocated is not None:
            return self.cuda_peak_allocated
        return self.rss_peak

    def as_dict(self) -> dict:
        # ru_maxrss is KiB on Linux, bytes on macOS
        scale = 1 if sys.platform == "darwin" else 1024
        return {
            "peak_bytes": self.peak_bytes,
            "rss_before_bytes": self.rss_before,
            "rss_peak_bytes": self.rss_peak,
            "rss_growth_bytes": self.rss_peak - self.rss_before,
            "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "cuda_max_allocated_bytes": self.cuda_peak_allocated,
            "cuda_max_reserved_bytes": self.cuda_peak_reserved,
            "sampling_interval_s": self.interval_s,
        }
