"""The latency-optimal plan: argmax accuracy(B, L) subject to predicted latency(B, γ, L) <= T (Eq. 1).

Accuracy comes from the one-run surface (it does not depend on γ: speculation is lossless), latency
from the fitted model with the measured acceptance rate of each γ. Among plans of equal accuracy the
faster one wins; the Pareto frontier lists every plan no other plan beats on both axes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from latts.config import Plan


@dataclass(frozen=True, slots=True)
class Candidate:
    """A plan's (B, γ, L) with its estimated accuracy and predicted latency."""

    plan: Plan
    accuracy: float
    latency_s: float

    @classmethod
    def of(cls, branches: int, gamma: int, think: int, accuracy: float, latency_s: float,
           drafter: str = "ngram") -> Candidate:
        """The candidate of a plan with ``branches``, ``gamma`` (drafts from ``drafter``) and thinking budget
        ``think`` (other settings default)."""
        return cls(Plan(branches=branches, gamma=gamma, drafter=drafter, max_think=think), accuracy, latency_s)

    def to_dict(self) -> dict[str, Any]:
        """The plans file's form: B, γ, L, how drafts are made and verified, pruning, accuracy and predicted latency."""
        p = self.plan
        return {"branches": p.branches, "gamma": p.gamma, "think": p.max_think, "drafter": p.drafter,
                "gamma_policy": p.gamma_policy, "prune": p.prune, "accuracy": self.accuracy,
                "latency_s": self.latency_s}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Candidate:
        """A candidate read back from :meth:`to_dict`'s form (KeyError, TypeError or ValueError if it is not one;
        LattsError for a setting a plan refuses). Files written before plans named their drafter, γ policy
        and pruning get the defaults those plans ran with (n-gram drafts, cost policy, no pruning)."""
        plan = Plan(branches=int(doc["branches"]), gamma=int(doc["gamma"]), max_think=int(doc["think"]),
                    drafter=str(doc.get("drafter", "ngram")), gamma_policy=str(doc.get("gamma_policy", "cost")),
                    prune=float(doc.get("prune", 0.0)))
        return cls(plan, float(doc["accuracy"]), float(doc["latency_s"]))


def candidates(
    accuracy: dict[tuple[int, int], float],
    latency: Callable[[int, int, int], float],
    gammas: Iterable[int],
) -> list[Candidate]:
    """Every (B, L) of the surface crossed with every γ, with predicted latency."""
    gammas = list(gammas)
    return [Candidate.of(b, g, L, acc, latency(b, g, L)) for (b, L), acc in accuracy.items() for g in gammas]


def best_plan(cands: Sequence[Candidate], deadline_s: float) -> Candidate | None:
    """The most accurate candidate predicted to finish by ``deadline_s`` (faster wins ties); None if none fits."""
    fitting = [c for c in cands if c.latency_s <= deadline_s]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (-round(c.accuracy, 12), c.latency_s, c.plan.branches, c.plan.gamma,
                                       c.plan.max_think))


def pareto_frontier(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates not dominated in (higher accuracy, lower latency), by increasing latency."""
    frontier: list[Candidate] = []
    for c in sorted(cands, key=lambda c: (c.latency_s, -c.accuracy)):
        if not frontier or c.accuracy > frontier[-1].accuracy:
            frontier.append(c)
    return frontier
