"""What took a measurement: the engine build, weight format, CPU and threads a cached profile, plan or
tuning was measured with.

A measured cost holds only for the code and weights that produced it: an edited kernel, kernels turned
off, another dtype or quantized format, another CPU or thread count all change it. So every cached
measurement records a :class:`MeasuredWith`, and before one is used it is compared with what would run
now (:meth:`latts.backends.Opened.measured_with`): a stale cache that latts keeps for itself is measured
again, a stale file the user named is refused with :class:`Stale`. Data only, no torch, so that reading
a profile stays cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from latts.errors import LattsError

# what a user reads for each field in a staleness message
_LABELS = {"engine": "engine build", "weights": "weights", "cpu": "CPU", "threads": "threads", "torch": "torch"}


@dataclass(frozen=True, slots=True)
class MeasuredWith:
    """The engine and machine a measurement holds for (JSON-ready via :meth:`to_dict`)."""

    engine: str  # kernels.build_id(): 'native-<hash>' or 'torch-ops'; 'remote:<model>' on a server
    weights: str  # dtype and quantized format: 'bfloat16 q4+q8', 'float32'; 'remote' on a server
    cpu: str  # latts.engine.loading.machine.cpu_name(); 'remote' on a server
    threads: int  # torch's intra-op threads (0 on a server)
    torch: str = ""  # torch's version ('' on a server): torch's ops change with it, latts' kernels or not

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> MeasuredWith | None:
        """Read :meth:`to_dict`'s output; None for no record (a file written before latts kept one)."""
        if d is None:
            return None
        if not isinstance(d, dict):
            raise TypeError(f"measured_with must be an object, not {type(d).__name__}")
        return cls(str(d["engine"]), str(d["weights"]), str(d["cpu"]), int(d["threads"]),
                   str(d.get("torch", "")))

    def describe(self) -> str:
        """One line for reports: ``engine build native-…, weights bfloat16 q4+q8, 2 threads on <CPU>``."""
        return f"engine build {self.engine}, weights {self.weights}, {self.threads} threads on {self.cpu}"


def stale_reason(recorded: MeasuredWith | None, current: MeasuredWith) -> str | None:
    """Why a measurement that recorded ``recorded`` does not hold for ``current`` (None when it does).

    The reason names only what differs, e.g. ``was measured with engine build native-abc, weights float32;
    this engine has engine build native-def, weights bfloat16 q4+q8``. A file with no record counts as
    stale: nothing says which build's costs it holds.
    """
    if recorded is None:
        return "records no engine build or weight format (written before latts recorded them)"
    differ = [f.name for f in fields(MeasuredWith) if getattr(recorded, f.name) != getattr(current, f.name)]
    if not differ:
        return None

    def listed(m: MeasuredWith) -> str:
        return ", ".join(f"{_LABELS[name]} {getattr(m, name) or '?'}" for name in differ)

    return f"was measured with {listed(recorded)}; this engine has {listed(current)}"


class Stale(LattsError):
    """A cached measurement taken with another engine build, weight format or machine: never used as is."""


def check_current(what: str, recorded: MeasuredWith | None, current: MeasuredWith, remedy: str) -> None:
    """Raise :class:`Stale` (``"<what> <reason>: <remedy>"``) unless ``recorded`` holds for ``current``."""
    reason = stale_reason(recorded, current)
    if reason is not None:
        raise Stale(f"{what} {reason}: {remedy}")
