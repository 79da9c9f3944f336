"""Measure this machine: prefill time vs prompt length, decode-forward time vs (B, k, context), drafter cost.

The measurements feed :class:`~latts.latency_model.LatencyModel`. Forwards are timed directly on the
engine's model (not through ``generate``), after a warm-up, as the median of a few repeats, so the
profile takes a minute or two. The machine is described alongside, since a profile only holds for the
machine (and load) it was taken on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from latts.config import SamplingParams
from latts.engine.drafters import NGramDrafter
from latts.engine.engine import Engine
from latts.engine.kv_cache import KVCache
from latts.errors import LattsError
from latts.latency_model import LatencyModel, LoopSample, PrefillSample, StepSample
from latts.models import cpu_name

DEFAULT_BRANCHES = (1, 2, 4, 8, 16, 32)
DEFAULT_K = (1, 2, 4, 8)
DEFAULT_CONTEXTS = (256, 1024)
DEFAULT_PREFILLS = (64, 256, 1024)


@dataclass(slots=True)
class Profile:
    """Everything measured, plus where: JSON-serialisable."""

    model: str
    dtype: str
    machine: dict[str, Any]
    steps: list[StepSample] = field(default_factory=list)
    prefills: list[PrefillSample] = field(default_factory=list)
    ngram_per_row_s: float = 0.0
    switch_rows: int = 0  # the engine's int4/dense weight-format switch when profiled
    loops: list[LoopSample] = field(default_factory=list)

    def fit(self) -> LatencyModel:
        """The latency model fitted to this profile."""
        return LatencyModel.fit(self.steps, self.prefills, draft_per_row=self.ngram_per_row_s,
                                switch_rows=self.switch_rows, loops=self.loops)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"model": self.model, "dtype": self.dtype, "machine": self.machine,
                "steps": [asdict(s) for s in self.steps], "prefills": [asdict(p) for p in self.prefills],
                "ngram_per_row_s": self.ngram_per_row_s, "switch_rows": self.switch_rows,
                "loops": [asdict(x) for x in self.loops]}

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
                       int(d.get("switch_rows", 0)), [LoopSample(**x) for x in d.get("loops", [])])
        except OSError as e:
            raise LattsError(f"cannot read profile {path}: {e.strerror}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise LattsError(f"{path} is not a latts profile ({e})") from None


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, threads and library versions: what a profile is valid for."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "system": platform.platform()}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls of a shape allocate
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_step(engine: Engine, branches: int, k: int, context: int, repeats: int = 5) -> float:
    """Median seconds of one decode forward: ``branches`` rows × ``k`` tokens after a ``context``-token prompt.

    Forwards of several tokens per row are speculative verifies, whose rows have advanced by different
    amounts: they are measured ragged (masked attention, scattered cache writes), as they run.
    """
    m = engine.model
    s = m.shape
    cache = KVCache(s.n_layers, branches, s.n_kv_heads, context, 2 * k + 8, s.head_dim, m.dtype)
    g = torch.Generator().manual_seed(context)
    m.prefill(torch.randint(100, 20000, (1, context), generator=g), cache)
    tokens = torch.randint(100, 20000, (branches, k), generator=g)
    start = torch.full((branches,), context)
    if k > 1 and branches > 1:
        start = start + torch.arange(branches) % k
    return _median_time(lambda: m.decode(tokens, start, cache), repeats)


def measure_loop(engine: Engine, branches: int, gamma: int, context: int, steps: int = 24) -> LoopSample:
    """What a decode step (γ = 0) or speculative round costs in ``Engine.generate`` beyond its forward.

    Sampling or acceptance, drafting, bookkeeping: timed as a whole run's seconds per step (or round)
    minus the forward of the same shape. Plain steps sample at temperature 0.7; speculative rounds run
    greedy, where the model soon repeats itself and the n-gram drafter proposes all γ tokens, so the
    round has the shape of the forward it is compared with.
    """
    ids = torch.randint(100, 20000, (context,), generator=torch.Generator().manual_seed(7)).tolist()
    sampling = SamplingParams(0.0 if gamma else 0.7, seed=0)
    gen = engine.generate(ids, branches=branches, max_new_tokens=steps * (gamma + 1), sampling=sampling,
                          ignore_eos=True, gamma=gamma, drafter=NGramDrafter() if gamma else None)
    forward = measure_step(engine, branches, gamma + 1, context)  # every step of the run is one round
    return LoopSample(branches, gamma, max(0.0, gen.decode_s / max(1, gen.steps) - forward))


def measure_prefill(engine: Engine, tokens: int, repeats: int = 3) -> float:
    """Median seconds to prefill ``tokens`` prompt tokens."""
    m = engine.model
    s = m.shape
    ids = torch.randint(100, 20000, (1, tokens), generator=torch.Generator().manual_seed(tokens))

    def run() -> None:
        cache = KVCache(s.n_layers, 1, s.n_kv_heads, tokens, 1, s.head_dim, m.dtype)
        m.prefill(ids, cache)

    return _median_time(run, repeats)


def measure_ngram(rows: int = 16, history: int = 1024, gamma: int = 4, repeats: int = 20) -> float:
    """Seconds per row of one n-gram proposal (lookups on a ``history``-token history)."""
    g = torch.Generator().manual_seed(0)
    hists = [torch.randint(100, 400, (history,), generator=g).tolist() for _ in range(rows)]
    drafter = NGramDrafter()
    drafter.begin(hists[0][:64], rows, 256)
    params = SamplingParams(temperature=0.0)
    return _median_time(lambda: drafter.propose(hists, gamma, params, g), repeats) / rows


def profile(
    engine: Engine,
    branches: Sequence[int] = DEFAULT_BRANCHES,
    ks: Sequence[int] = DEFAULT_K,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    prefills: Sequence[int] = DEFAULT_PREFILLS,
    repeats: int = 5,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Measure every (B, k, context) forward and every prefill length on ``engine``."""
    loaded = engine.loaded
    prof = Profile(loaded.name, loaded.weights, describe_machine(), switch_rows=loaded.int4_max_rows)
    engine.warmup()
    for p in prefills:
        prof.prefills.append(PrefillSample(p, measure_prefill(engine, p)))
        if progress:
            progress(f"prefill {p} tokens: {prof.prefills[-1].seconds * 1e3:.1f} ms")
    for c in contexts:
        for b in branches:
            for k in ks:
                prof.steps.append(StepSample(b, k, c, measure_step(engine, b, k, c, repeats)))
                if progress:
                    progress(f"forward B={b} k={k} context={c}: {prof.steps[-1].seconds * 1e3:.1f} ms")
    prof.ngram_per_row_s = measure_ngram()
    loop_branches = sorted({branches[0], branches[len(branches) // 2], branches[-1]})
    for gamma in (0, 3):
        for b in loop_branches:
            prof.loops.append(measure_loop(engine, b, gamma, contexts[0]))
            if progress:
                progress(f"engine loop B={b} γ={gamma}: {prof.loops[-1].seconds * 1e3:.1f} ms beyond the forward")
    return prof
