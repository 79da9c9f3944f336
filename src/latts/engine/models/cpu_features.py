"""What this CPU can execute, read without importing torch: the kernels' build, the engine's dtype and the
llama.cpp paths latts avoids all depend on it."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def cpu_flags_line() -> str:
    """The ``flags`` line of ``/proc/cpuinfo`` (the processor name where there is none): a build compiled with
    ``-march=native`` holds for exactly these features."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux names them (``avx2``, ``avx512_vnni``, ``amx_int8``, ...)."""
    return frozenset(cpu_flags_line().split())
