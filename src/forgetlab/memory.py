"""A job's own peak memory, logged to MLflow by every training and evaluation job (forgetlab.tracking).

Jobs run in a fork of the fork server (forgetlab.forkserver), which has torch, transformers and
mlflow imported: a forked child's `ru_maxrss` (getrusage) starts from its parent's high-water mark,
and its resident set counts the parent's pages that it maps. So the job's peak is measured from its
own start: `PeakMemory()` resets the kernel's resident high-water mark of the process (Linux:
`echo 5 > /proc/self/clear_refs` sets VmHWM to the current VmRSS) and notes the RSS then; `metrics()`
reads VmHWM again. Reported, in MiB:
  peak_rss_mb               the highest resident set since the job's start (VmHWM after the reset):
                            the job's own memory plus the server's pages it maps (torch's code, ...)
  peak_rss_above_start_mb   that peak less the RSS at the start: what the job itself added at most
  peak_cuda_allocated_mb    on a GPU: torch.cuda.max_memory_allocated of the job's device (the fork
                            server never touches CUDA, so this is the job's own), reset at the start
Without /proc/self/clear_refs (not Linux, or a kernel without it) the RSS peak is ru_maxrss, which
may include the parent's, and `peak_memory_method` says so (1: clear_refs, 0: ru_maxrss). Of a
data-parallel job these are rank 0's (the one that logs).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
MB = 1024 * 1024
# the MLflow metrics of a job's peak memory: they describe the machine's run, not the computation
# (a resumed or rerun job logs other values), so comparisons of a job's numbers leave them out
METRICS = ("peak_rss_mb", "peak_rss_above_start_mb", "peak_memory_method", "peak_cuda_allocated_mb")


def _status_kb(field: str) -> int | None:
    """A `VmXXX:` field of /proc/self/status in KiB (None without it)."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset this process's resident high-water mark to its current RSS; False where it cannot."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def _cuda():
    torch = sys.modules.get("torch")  # never imported here: a job that does not use torch has no CUDA peak
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


class PeakMemory:
    """The peak memory of the job from its creation on (see the module docstring)."""

    def __init__(self):
        self.exact = reset_peak()
        self.start_kb = _status_kb("VmRSS") if self.exact else self._maxrss_kb()
        torch = _cuda()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def _maxrss_kb() -> int:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux

    def peak_kb(self) -> int:
        return (_status_kb("VmHWM") if self.exact else None) or self._maxrss_kb()

    def metrics(self) -> dict[str, float]:
        peak = self.peak_kb()
        out = {"peak_rss_mb": round(peak / 1024, 1),
               "peak_rss_above_start_mb": round(max(0, peak - (self.start_kb or 0)) / 1024, 1),
               "peak_memory_method": 1.0 if self.exact else 0.0}
        torch = _cuda()
        if torch is not None:
            out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
        return out
