"""A machine's measured costs as data: what ``latts profile`` writes and the latency model is fitted to.

Kept apart from :mod:`latts.latency.profiler` (which measures, and so needs torch and the engine) so that
reading a profile — for the optimizer, the report's figures or a remote server's profile — imports no
torch. A profile only holds for the machine (and load) it was taken on, so it carries a description of
that machine, and for the engine build and weight format it measured (:class:`~latts.provenance.MeasuredWith`),
which a user of the profile compares with its own before trusting it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latts.errors import LattsError
from latts.latency.model import LatencyModel, LoopSample, PrefillSample, StepSample
from latts.provenance import MeasuredWith


@dataclass(slots=True)
class Profile:
    """Everything measured, plus where: JSON-serialisable."""

    model: str
    dtype: str
    machine: dict[str, Any]
    steps: list[StepSample] = field(default_factory=list)
    prefills: list[PrefillSample] = field(default_factory=list)
    ngram_per_row_s: float = 0.0
    switch_rows: int = 0  # the engine's quantized/dense weight-format switch when profiled
    loops: list[LoopSample] = field(default_factory=list)
    measured_with: MeasuredWith | None = None  # None: an older profile, stale for every engine

    def fit(self) -> LatencyModel:
        """The latency model fitted to this profile."""
        return LatencyModel.fit(self.steps, self.prefills, draft_per_row=self.ngram_per_row_s,
                                switch_rows=self.switch_rows, loops=self.loops)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"model": self.model, "dtype": self.dtype, "machine": self.machine,
                "steps": [asdict(s) for s in self.steps], "prefills": [asdict(p) for p in self.prefills],
                "ngram_per_row_s": self.ngram_per_row_s, "switch_rows": self.switch_rows,
                "loops": [asdict(x) for x in self.loops],
                "measured_with": self.measured_with.to_dict() if self.measured_with else None}

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Profile:
        """Read a profile written by :meth:`save`, or a clear error."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["model"], d["dtype"], d["machine"], [StepSample(**s) for s in d["steps"]],
                       [PrefillSample(**p) for p in d["prefills"]], d.get("ngram_per_row_s", 0.0),
                       int(d.get("switch_rows", 0)), [LoopSample(**x) for x in d.get("loops", [])],
                       MeasuredWith.from_dict(d.get("measured_with")))
        except OSError as e:
            raise LattsError(f"cannot read profile {path}: {e.strerror}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise LattsError(f"{path} is not a latts profile ({e})") from None
