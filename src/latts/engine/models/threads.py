"""How many threads a forward runs on: all of latts' threads on a quiet machine, one while other processes
hold the cores.

Why: a step or a prefill on two threads is a fork-join region (the native step meets at a barrier about
120 times a step, torch's prefill runs hundreds of small parallel ops). When another process holds a core,
the scheduler keeps taking one of latts' two threads off its core, and its partner waits for it at every
join: measured on a 2-core Xeon with one busy process beside it, a B=1 step went from 4.4 ms to 13 ms (with
stalls to 190 ms) and a 76-token prefill from 74 ms to 660 ms; on one thread the same step took 9.0 ms and
the prefill 100 ms, whatever else ran (``docs/measurement-history.md``). So a forward runs on as many
threads as there are cores nobody else is using, at least one.

:class:`CoreShare` reads how much of the machine other processes use: the CPU time ``/proc/stat`` counts as
busy (steal time included: a hypervisor's other guests take cores too) less this process's own, over the
last window; before a first window, the number of runnable tasks (``/proc/loadavg``) less this process's
own. Reading costs tens of microseconds and happens at most every ``interval`` seconds.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import torch

_configured: list[int] = []  # the thread count latts was started with (torch's, before any adapting)


def configured_threads() -> int:
    """The threads latts computes with on a quiet machine (torch's count when first asked): what measurements
    record, whatever the machine's load made a forward use at that moment."""
    if not _configured:
        _configured.append(torch.get_num_threads())
    return _configured[0]


def use_threads(n: int) -> None:
    """Run the next forwards on ``n`` threads (torch's ops and latts' kernels; llama.cpp's contexts read it
    too)."""
    configured_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class CoreShare:
    """The cores other processes hold right now, and how many threads latts' forwards should run on."""

    def __init__(self, interval: float = 0.05, window: float = 0.2) -> None:
        self.interval = interval  # seconds between two readings of /proc/stat
        self.window = window  # seconds an estimate looks back over
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._last: tuple[float, float, float] | None = None  # (wall, machine busy s, own CPU s) at the last reading
        self.others = 0.0  # cores other processes held over the last window (estimate)

    def update(self, now: float | None = None) -> float:
        """Refresh the estimate if ``interval`` has passed since the last reading; the cores others hold."""
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last[0] < self.interval:
            return self.others
        reading = _busy_seconds()
        own = _own_cpu_seconds()
        if reading is None:
            return self.others
        if self._last is None or now - self._last[0] > 10 * self.window:
            self.others = _runnable_others()  # no recent window: what is runnable this instant
        else:
            dt = now - self._last[0]
            took = max(0.0, (reading - self._last[1]) - (own - self._last[2])) / dt
            weight = min(1.0, dt / self.window)
            self.others += weight * (min(took, self.cores) - self.others)
        self._last = (now, reading, own)
        return self.others

    def threads(self) -> int:
        """Threads for the next forward: the configured count while others hold less than half a core, else the
        cores left over (at least one)."""
        want = configured_threads()
        if self.others < 0.5:
            return want
        return max(1, min(want, int(self.cores - self.others + 0.5)))

    def apply(self, now: float | None = None) -> int:
        """Update the estimate and set the forwards' threads from it; the threads now in use."""
        self.update(now)
        n = self.threads()
        use_threads(n)
        return n


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal) since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds this process has used, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _runnable_others() -> float:
    """Runnable tasks on the machine this instant less this process's own running threads."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    own = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R":
                own += 1
        except (OSError, IndexError):
            pass
    return float(max(0, running - max(own, 1)))
