"""The latency-optimal plan: argmax accuracy(B, L) subject to predicted latency(B, γ, L) <= T (Eq. 1).

Accuracy comes from the one-run surface (it does not depend on γ: speculation is lossless), latency
from the fitted model with the measured acceptance rate of each γ. Among plans of equal accuracy the
faster one wins; the Pareto frontier lists every plan no other plan beats on both axes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """One (B, γ, L) with its estimated accuracy and predicted latency."""

    branches: int
    gamma: int
    think: int
    accuracy: float
    latency_s: float


def candidates(
    accuracy: dict[tuple[int, int], float],
    latency: Callable[[int, int, int], float],
    gammas: Iterable[int],
) -> list[Candidate]:
    """Every (B, L) of the surface crossed with every γ, with predicted latency."""
    gammas = list(gammas)
    return [Candidate(b, g, L, acc, latency(b, g, L)) for (b, L), acc in accuracy.items() for g in gammas]


def best_plan(cands: Sequence[Candidate], deadline_s: float) -> Candidate | None:
    """The most accurate candidate predicted to finish by ``deadline_s`` (faster wins ties); None if none fits."""
    fitting = [c for c in cands if c.latency_s <= deadline_s]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (-round(c.accuracy, 12), c.latency_s, c.branches, c.gamma, c.think))


def pareto_frontier(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates not dominated in (higher accuracy, lower latency), by increasing latency."""
    frontier: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.latency_s, -c.accuracy)):
        if not frontier or c.accuracy > frontier[-1].accuracy:
            frontier.append(c)
    return frontier
