"""Majority voting over branch answers, with answer equivalence, abstentions, weights and early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from latts.errors import LattsError


@dataclass(frozen=True)
class Vote:
    """The result of a vote: the winning answer (None if every branch abstained) and the tally behind it.

    ``counts`` has one (representative, total weight) entry per class of equivalent answers, the
    representative being the first answer of that class in branch order; it is sorted by weight, highest
    first, ties going to the class that appeared first. ``abstained`` counts branches without an answer.
    """

    answer: str | None
    counts: list[tuple[str, float]] = field(default_factory=list)
    abstained: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"answer": self.answer, "counts": [list(c) for c in self.counts], "abstained": self.abstained}


def vote(
    answers: list[str | None],
    same: Callable[[str, str], bool],
    weights: list[float] | None = None,
) -> Vote:
    """Group ``answers`` into classes with ``same(representative, answer)`` and tally them.

    None or blank answers abstain. With ``weights`` (one finite, non-negative number per answer, e.g.
    ``exp(mean token logprob)``) each answer counts its weight instead of 1. ``same`` is called at most
    once per distinct answer string and class, so an expensive equivalence (math-verify) stays affordable.
    """
    if weights is None:
        weights = [1.0] * len(answers)
    elif len(weights) != len(answers):
        raise LattsError(f"vote needs one weight per answer: {len(answers)} answers, {len(weights)} weights")
    elif not all(math.isfinite(w) and w >= 0 for w in weights):
        raise LattsError("vote weights must be finite and >= 0")
    labels, reps = answer_classes(answers, same)
    totals = [0.0] * len(reps)
    for label, weight in zip(labels, weights):
        if label >= 0:
            totals[label] += float(weight)
    abstained = labels.count(-1)
    order = sorted(range(len(reps)), key=lambda i: (-totals[i], i))
    counts = [(reps[i], totals[i]) for i in order]
    return Vote(counts[0][0] if counts else None, counts, abstained)


def answer_classes(answers: list[str | None], same: Callable[[str, str], bool]) -> tuple[list[int], list[str]]:
    """Each answer's equivalence-class id (-1: no answer) and the classes' representatives, in first-seen order.

    Answers are compared stripped; ``same(representative, answer)`` is called at most once per distinct
    answer string and class.
    """
    reps: list[str] = []
    class_of: dict[str, int] = {}  # stripped answer text -> class index
    labels = []
    for answer in answers:
        key = answer.strip() if answer is not None else ""
        if not key:
            labels.append(-1)
            continue
        index = class_of.get(key)
        if index is None:
            index = next((i for i, rep in enumerate(reps) if same(rep, key)), None)
            if index is None:
                index = len(reps)
                reps.append(key)
            class_of[key] = index
        labels.append(index)
    return labels, reps


def decided(vote: Vote, remaining: int, max_weight: float = 1.0) -> bool:
    """True when the leader cannot be caught, not even tied, if all ``remaining`` branches back the runner-up.

    Each unfinished branch is assumed to add at most ``max_weight`` (1 for plain votes and for
    ``exp(mean logprob)`` weights). A tie is never decided; with no answers yet nothing is.
    """
    if remaining < 0:
        raise LattsError(f"remaining branches must be >= 0, got {remaining}")
    if not vote.counts:
        return False
    leader = vote.counts[0][1]
    runner_up = vote.counts[1][1] if len(vote.counts) > 1 else 0.0
    return leader > runner_up + remaining * max_weight
