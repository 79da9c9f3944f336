"""Measure this machine: prefill time vs prompt length, decode-forward time vs (B, k, context), drafter cost.

The measurements, gathered in a :class:`~latts.latency.profile.Profile`, feed
:class:`~latts.latency.model.LatencyModel`. Forwards are timed directly on the
engine's model (not through ``generate``), after a warm-up, as the median of a few repeats in each of
three passes over all shapes (the median of the passes is kept), so the profile takes two or three
minutes. The machine is described alongside, since a profile only holds for the machine (and load) it
was taken on.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from latts.config import SamplingParams
from latts.engine.speculation.drafters import NGramDrafter
from latts.engine.engine import Engine
from latts.engine.models.kv_cache import KVCache
from latts.errors import LattsError
from latts.engine.loading.machine import cpu_name
from latts.latency.model import LoopSample, PrefillSample, StepSample
from latts.latency.profile import Profile
from latts.request import GenerateRequest
from latts.engine.models.threads import configured_threads

DEFAULT_BRANCHES = (1, 2, 4, 8, 16, 32)
DEFAULT_K = (1, 2, 4, 8)
DEFAULT_CONTEXTS = (256, 1024)
DEFAULT_PREFILLS = (64, 256, 1024)
OWN_TOKENS = 256  # tokens each row holds of its own in the forwards that measure own-token attention


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, threads and library versions: what a profile is valid for."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": configured_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "system": platform.platform()}


def _median_time(fn: Callable[[], object], repeats: int, min_seconds: float = 0.4) -> float:
    """Median seconds of ``fn`` after a warm-up call: at least ``repeats`` calls, more (up to 4×) for short
    calls until ``min_seconds`` have been timed, so a burst of noise on a 2-core machine is outvoted."""
    fn()  # warm-up: first calls of a shape allocate
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 4 * repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_steps(
    engine: Engine,
    shapes: Sequence[tuple[int, ...]],
    repeats: int = 3,
    passes: int = 3,
    progress: Callable[[str], None] | None = None,
    order_seed: int = 0,
) -> list[StepSample]:
    """Median seconds of one decode forward for every (B rows, k tokens per row, context[, own]) in ``shapes``.

    ``own``: tokens every row already holds of its own (0 when not given), decoded into the rows in
    chunks before the timing, as a run's generated tokens would be. ``order_seed`` seeds the passes' orders
    (a caller timing one pass at a time gives each its own).

    Each shape is timed in ``passes`` separate passes over all shapes, in a new random order each pass,
    and the median of the passes is kept: on a shared 2-core machine the speed drifts and stalls for
    seconds at a time, and a stall then lands on one pass of a few shapes instead of all repeats of one.
    The prompt is prefilled once per context and shared by every shape (a 1-row cache and a B-row one).

    Forwards of several tokens per row are speculative verifies, whose rows have advanced by different
    amounts: they are measured ragged (masked attention, scattered cache writes), as they run.
    """
    if not shapes:
        return []
    full = [(s[0], s[1], s[2], s[3] if len(s) > 3 else 0) for s in shapes]  # (B, k, context, own)
    if min(min(shape[:3]) for shape in full) < 1 or min(shape[3] for shape in full) < 0:
        raise LattsError("forward shapes need B, k and context >= 1 and own >= 0")
    m = engine.model
    slots = 2 * max(k for _, k, _, _ in full) + 8
    caches: dict[tuple[int, int, bool], KVCache] = {}
    for c, own in sorted({(c, own) for _, _, c, own in full}):
        prompt = torch.randint(100, 20000, (1, c), generator=torch.Generator().manual_seed(c))
        rows = {b for b, _, cc, o in full if (cc, o) == (c, own)}
        sizes = ([1] if 1 in rows else []) + ([max(rows)] if max(rows) > 1 else [])  # 1 row has its own layout
        for n in sizes:
            cache = m.new_cache(n, c, own + slots)
            m.prefill(prompt, cache)
            for at in range(0, own, 32):  # the rows' own tokens, as a run would have generated them
                chunk = torch.randint(100, 20000, (n, min(32, own - at)), generator=torch.Generator().manual_seed(at))
                m.decode(chunk, torch.full((n,), c + at), cache)
            caches[(c, own, n == 1)] = cache

    def timed(b: int, k: int, c: int, own: int) -> float:
        g = torch.Generator().manual_seed(b * 1000 + k)
        tokens = torch.randint(100, 20000, (b, k), generator=g)
        start = torch.full((b,), c + own)
        cache = caches[(c, own, b == 1)]
        if k > 1 and b > 1:
            # rows as a round of different acceptances leaves them: row r holds c + r % k positions (written
            # here, so that an engine whose rows must continue their stored positions, llama.cpp's, runs it too)
            ahead = torch.arange(b) % k
            m.decode(tokens, start, cache, lengths=ahead + 1)
            start = start + ahead
        return _median_time(lambda: m.decode(tokens, start, cache), repeats, min_seconds=0.15)

    times: dict[tuple[int, int, int, int], list[float]] = {shape: [] for shape in full}
    order = list(times)
    rng = random.Random(order_seed)
    for i in range(passes):
        rng.shuffle(order)
        for shape in order:
            times[shape].append(timed(*shape))
        if progress:
            progress(f"forwards pass {i + 1}/{passes}: {len(order)} shapes timed")
    return [StepSample(b, k, c, statistics.median(t), own) for (b, k, c, own), t in times.items()]


def measure_loop(engine: Engine, branches: int, gamma: int, context: int, steps: int = 24) -> LoopSample:
    """What a decode step (γ = 0) or speculative round costs in ``Engine.generate`` beyond its forward.

    Sampling or acceptance, drafting, bookkeeping: timed as a whole run's seconds per step (or round)
    minus the forward of the same shape. Plain steps sample at temperature 0.7; speculative rounds run
    greedy, where the model soon repeats itself and the n-gram drafter proposes often. A round's forward
    computes the proposed positions only, so the forward compared with is interpolated between k = 1 and
    k = γ + 1 at the run's mean verify width.
    """
    ids = torch.randint(100, 20000, (context,), generator=torch.Generator().manual_seed(7)).tolist()
    sampling = SamplingParams(0.0 if gamma else 0.7, seed=0)
    gen = engine.generate(GenerateRequest(ids, branches=branches, max_new_tokens=steps * (gamma + 1),
                                          sampling=sampling, ignore_eos=True, gamma=gamma,
                                          drafter=NGramDrafter() if gamma else None))
    # every step of the run is one round; both widths timed over one prefilled prompt
    plain, *verify = measure_steps(engine, [(branches, k, context) for k in sorted({1, gamma + 1})], repeats=5,
                                   passes=1)
    forward = plain.seconds
    if gamma:
        share = (gen.spec.mean_verify_width - 1) / gamma
        forward += share * (verify[0].seconds - forward)
    return LoopSample(branches, gamma, max(0.0, gen.decode_s / max(1, gen.steps) - forward))


def measure_prefill(engine: Engine, tokens: int, repeats: int = 3) -> float:
    """Median seconds to prefill ``tokens`` prompt tokens."""
    m = engine.model
    ids = torch.randint(100, 20000, (1, tokens), generator=torch.Generator().manual_seed(tokens))

    def run() -> None:
        cache = m.new_cache(1, tokens, 1)
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
    repeats: int = 3,
    passes: int = 3,
    progress: Callable[[str], None] | None = None,
    steps: Sequence[StepSample] | None = None,
) -> Profile:
    """Measure every (B, k, context) forward and every prefill length on ``engine``.

    ``steps``: forwards measured already (by :func:`measure_steps`, e.g. interleaved with held-out shapes
    so both see the same machine); measured here over ``branches`` × ``ks`` × ``contexts`` when None.
    """
    loaded = engine.loaded
    prof = Profile(loaded.name, loaded.weights, describe_machine(), switch_rows=loaded.quant_max_rows,
                   measured_with=loaded.measured_with())
    engine.warmup()
    for p in prefills:
        prof.prefills.append(PrefillSample(p, measure_prefill(engine, p)))
        if progress:
            progress(f"prefill {p} tokens: {prof.prefills[-1].seconds * 1e3:.1f} ms")
    if steps is None:
        steps = measure_steps(engine, grid(branches, ks, contexts) + own_shapes(branches, contexts), repeats, passes,
                              progress)
    prof.steps = list(steps)
    if progress:
        for x in prof.steps:
            own = f" own={x.own}" if x.own else ""
            progress(f"forward B={x.branches} k={x.k} context={x.context}{own}: {x.seconds * 1e3:.1f} ms")
    prof.ngram_per_row_s = measure_ngram()
    for gamma in (0, 3):
        for b in _least_middle_most(branches):
            prof.loops.append(measure_loop(engine, b, gamma, contexts[0]))
            if progress:
                progress(f"engine loop B={b} γ={gamma}: {prof.loops[-1].seconds * 1e3:.1f} ms beyond the forward")
    return prof


def grid(branches: Sequence[int], ks: Sequence[int], contexts: Sequence[int]) -> list[tuple[int, int, int]]:
    """Every (B, k, context) of a profile, in that nesting order."""
    return [(b, k, c) for c in contexts for b in branches for k in ks]


def own_shapes(branches: Sequence[int], contexts: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """The forwards over rows' own tokens a profile adds: one token a row at the shortest context, the least,
    a middle and the most rows, each row holding :data:`OWN_TOKENS` of its own."""
    return [(b, 1, min(contexts), OWN_TOKENS) for b in _least_middle_most(branches)]


def _least_middle_most(branches: Sequence[int]) -> list[int]:
    """The first, middle and last of the profile's row counts (fewer when they coincide)."""
    return sorted({branches[0], branches[len(branches) // 2], branches[-1]})
