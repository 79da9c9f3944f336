"""How many of its drafts each row verifies this round: γ per step and per row, from measured costs.

A verified draft costs a position in the verify forward and pays off only when it is accepted. While
decoding is memory-bound (few rows) a forward of 1 or 8 positions costs about the same and every draft
pays; once the batch's positions saturate the cores (on two cores from about 8 positions) each
extra position costs as much as a plain row's token, and a draft accepted with probability 0.6 loses
time. vLLM ties γ to the batch size by hand; here it follows from two measurements:

- :class:`CostShape`: the seconds of one forward by the positions it carries, measured on this machine
  once (at warm-up), used only as a ratio between two widths, so it holds at any context length;
- :class:`AcceptanceStats`: how often the j-th draft of a row is accepted given the ones before it,
  per drafter match length (a draft after a 12-token match is accepted far more often than after a
  1-token one), learned online from every round the engine verifies.

:func:`choose_drafts` then keeps, each round, the drafts that maximise the expected tokens per second
of the round, ``(rows + expected accepted drafts) / (cost(rows + verified drafts) + extra)``, where
``extra`` is what drafting and the rejection sampler add to a round (measured online); no draft at all
(a plain step) is one of the choices, so speculation never costs more than it is expected to save.
Which drafts are verified depends only on earlier rounds, so rejection sampling stays exact.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence

import torch

# positions per forward at which the shape is measured (16 rows at most, as many tokens each as needed)
SHAPE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
SHAPE_ROWS = 16
MATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12)  # a row's drafter match length, bucketed (0: no match length known)


class CostShape:
    """Seconds of one decode forward on this machine: a verify by its total positions (rows x tokens,
    ragged) and a plain step (one token a row, the engine's fastest path) by its rows.

    Piecewise linear between measured sizes, linear beyond the largest (compute-bound there), flat below
    the smallest, and never decreasing (noise must not make a wider forward look cheaper)."""

    def __init__(self, verify: dict[int, float], plain: dict[int, float] | None = None) -> None:
        if not verify:
            raise ValueError("a cost shape needs at least one measured size")
        self.sizes, self.seconds = _monotone(verify)
        self._plain = _monotone(plain) if plain else (self.sizes, self.seconds)

    @classmethod
    def measure(cls, model: object, context: int = 64, repeats: int = 5,
                sizes: Sequence[int] = SHAPE_SIZES) -> CostShape:
        """Time ``model.decode`` (any engine's decoder interface) at each total of ``sizes`` positions
        (``min(t, 16)`` rows, ragged lengths summing to ``t``) and plain steps of 1-16 rows, over a
        ``context``-token prompt; the fastest of ``repeats`` (a stall only ever adds time)."""
        prompt = torch.randint(100, 1000, (1, context), generator=torch.Generator().manual_seed(0))
        rows = min(max(sizes), SHAPE_ROWS)
        width = -(-max(sizes) // rows)
        cache = model.new_cache(rows, context, width + 2)  # type: ignore[attr-defined]
        model.prefill(prompt, cache)  # type: ignore[attr-defined]
        start = torch.full((rows,), context)

        def fastest(tokens: torch.Tensor, lengths: torch.Tensor | None) -> float:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.decode(tokens, start[: len(tokens)], cache, lengths)  # type: ignore[attr-defined]
                times.append(time.perf_counter() - t0)
            return min(times)

        verify = {}
        for t in sizes:
            n = min(t, rows)
            lengths = torch.full((n,), t // n) + (torch.arange(n) < t % n)
            verify[t] = fastest(torch.randint(100, 1000, (n, int(lengths.max()))), lengths)
        plain = {n: fastest(torch.randint(100, 1000, (n, 1)), None) for n in (1, 2, 4, 8, rows) if n <= rows}
        return cls(verify, plain)

    def __call__(self, positions: int) -> float:
        """Estimated seconds of a verify forward carrying ``positions`` positions."""
        return _interpolate(self.sizes, self.seconds, positions)

    def plain(self, rows: int) -> float:
        """Estimated seconds of a plain step of ``rows`` rows."""
        return _interpolate(*self._plain, rows)


def _monotone(points: dict[int, float]) -> tuple[list[int], list[float]]:
    sizes, running, seconds = sorted(points), 0.0, []
    for t in sizes:
        running = max(running, points[t])
        seconds.append(running)
    return sizes, seconds


def _interpolate(s: list[int], c: list[float], x: int) -> float:
    if x <= s[0]:
        return c[0]
    if x >= s[-1]:
        slope = (c[-1] - c[-2]) / (s[-1] - s[-2]) if len(s) > 1 else c[-1] / s[-1]
        return c[-1] + max(slope, 0.0) * (x - s[-1])
    i = bisect.bisect_right(s, x)
    lo, hi = s[i - 1], s[i]
    return c[i - 1] + (c[i] - c[i - 1]) * (x - lo) / (hi - lo)


def match_bucket(length: int) -> int:
    """The bucket of a drafter match length (0 when the drafter gives none)."""
    if length <= 0:
        return 0
    return MATCH_BUCKETS[bisect.bisect_right(MATCH_BUCKETS, length) - 1]


class AcceptanceStats:
    """How often the j-th draft of a row is accepted once the drafts before it were, per match bucket.

    A Beta prior (``prior`` accepted of ``weight`` tried) stands in until rounds are observed."""

    def __init__(self, prior: float = 0.5, weight: float = 2.0) -> None:
        self.prior, self.weight = prior, weight
        self._tried: dict[tuple[int, int], float] = {}
        self._kept: dict[tuple[int, int], float] = {}

    def rate(self, bucket: int, j: int) -> float:
        """Estimated chance that draft ``j`` (0-based) is accepted given drafts ``0..j-1`` were."""
        key = (bucket, j)
        return (self._kept.get(key, 0.0) + self.prior * self.weight) / (self._tried.get(key, 0.0) + self.weight)

    def record(self, buckets: Sequence[int], proposed: Sequence[int], accepted: Sequence[int]) -> None:
        """One verified round: row ``r`` (match bucket ``buckets[r]``) offered ``proposed[r]`` drafts and
        kept the first ``accepted[r]``."""
        for bucket, n, a in zip(buckets, proposed, accepted):
            for j in range(min(a + 1, n)):  # draft j was looked at only if every earlier one was kept
                key = (bucket, j)
                self._tried[key] = self._tried.get(key, 0.0) + 1
                if j < a:
                    self._kept[key] = self._kept.get(key, 0.0) + 1


def drafts_may_pay(rows: int, gamma: int, stats: AcceptanceStats, cost: CostShape, extra: float = 0.0,
                   slower: float = 1.0) -> bool:
    """False when no choice of drafts could pay this round even if every one had the best acceptance seen
    in any match bucket: then the round is a plain step and the drafter is not even asked (drafting and
    the rejection sampler cost about a millisecond a round at B = 4 here)."""
    best = max(stats.rate(bucket, 0) for bucket in (0, *MATCH_BUCKETS))
    plain = rows / cost.plain(rows)
    return any((rows + x * best) / (slower * cost(rows + x) + extra) > plain for x in range(1, rows * gamma + 1))


def choose_drafts(proposed: Sequence[int], buckets: Sequence[int], stats: AcceptanceStats,
                  cost: CostShape, extra: float = 0.0, slower: float = 1.0) -> list[int]:
    """How many of its ``proposed`` drafts each row verifies this round: the choice that maximises
    ``(rows + expected accepted) / (slower * cost(rows + verified) + extra)``, ``extra`` being what drafting
    and acceptance add to a round (in the shape's seconds) and ``slower`` how much slower than the shape says
    verifies have run (learned online: the shape is measured at a short context); all zeros when a plain
    step is better."""
    rows = len(proposed)
    # every draft's chance to be accepted: the product of its row's conditional rates so far; within a
    # row these never grow, so taking drafts by decreasing chance keeps each row's drafts a prefix
    chances: list[tuple[float, int]] = []
    for r, (n, bucket) in enumerate(zip(proposed, buckets)):
        p = 1.0
        for j in range(n):
            p *= stats.rate(bucket, j)
            chances.append((p, r))
    chances.sort(key=lambda c: -c[0])
    best_x, best, gained = 0, rows / cost.plain(rows), 0.0
    for x, (p, _) in enumerate(chances, 1):
        gained += p
        value = (rows + gained) / (slower * cost(rows + x) + extra)
        if value > best:
            best_x, best = x, value
    keep = [0] * rows
    for _, r in chances[:best_x]:
        keep[r] += 1
    return keep
