"""Accuracy of every (B, L) from one wide run: subsampled majority votes with bootstrap intervals.

One run of ``B_max`` branches, each forced to answer at checkpoints ``L1 < L2 < ...``, gives for every
problem and checkpoint ``B_max`` answers. The accuracy of a plan with ``B <= B_max`` branches and budget
``L`` is the chance that the majority of ``B`` of those answers is right: estimated per problem by
drawing branch subsets (all of them when there are few, else a seeded Monte-Carlo sample), then
averaged over problems, with a bootstrap over problems for the confidence interval. Speculative
decoding is lossless, so γ does not enter: it changes latency only.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from latts.errors import LattsError
from latts.tts.voting import answer_classes


@dataclass(frozen=True, slots=True)
class Estimate:
    """Accuracy of one (B, L) with a bootstrap confidence interval."""

    branches: int
    think: int
    accuracy: float
    low: float
    high: float


def majority_class(subset: Sequence[int]) -> int:
    """The winning class of a vote over ``subset`` (branch order); ties go to the class seen first; -1 if none.

    :func:`latts.tts.voting.vote` on integer labels, without re-comparing answers for every subset.
    """
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for pos, c in enumerate(subset):
        if c < 0:
            continue
        counts[c] = counts.get(c, 0) + 1
        first.setdefault(c, pos)
    if not counts:
        return -1
    return min(counts, key=lambda c: (-counts[c], first[c]))


def vote_accuracy(labels: Sequence[int], correct: set[int], branches: int, rng: random.Random,
                  samples: int = 256) -> float:
    """P(majority of ``branches`` answers drawn without replacement from ``labels`` is in ``correct``)."""
    n = len(labels)
    if not 1 <= branches <= n:
        raise LattsError(f"B={branches} needs 1..{n} branches in the wide run")
    if math.comb(n, branches) <= samples:
        subsets = list(itertools.combinations(range(n), branches))
    else:
        subsets = [sorted(rng.sample(range(n), branches)) for _ in range(samples)]
    hits = sum(majority_class([labels[i] for i in s]) in correct for s in subsets)
    return hits / len(subsets)


def estimate_surface(
    runs: Sequence[dict[int, Sequence[str | None]]],
    golds: Sequence[str],
    grade: Callable[[str, str | None], bool],
    same: Callable[[str, str], bool],
    branch_counts: Sequence[int],
    samples: int = 256,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Estimate]:
    """Accuracy of every (B, L): ``runs[p][L]`` are the wide run's answers of problem ``p`` at checkpoint L."""
    if len(runs) != len(golds) or not runs:
        raise LattsError("one gold answer per problem, and at least one problem, are needed")
    rng = random.Random(seed)
    thinks = sorted(runs[0])
    out = []
    for think in thinks:
        per_problem_labels = []
        for run, gold in zip(runs, golds):
            answers = list(run[think])
            labels, _ = answer_classes(answers, same)
            correct = {labels[i] for i, a in enumerate(answers) if labels[i] >= 0 and grade(gold, a)}
            per_problem_labels.append((labels, correct))
        for b in branch_counts:
            probs = [vote_accuracy(labels, correct, b, rng, samples) for labels, correct in per_problem_labels]
            mean = sum(probs) / len(probs)
            boots = sorted(
                sum(probs[rng.randrange(len(probs))] for _ in probs) / len(probs) for _ in range(bootstrap)
            )
            tail = (1 - confidence) / 2
            low = boots[int(tail * (bootstrap - 1))]
            high = boots[int((1 - tail) * (bootstrap - 1))]
            out.append(Estimate(b, think, mean, low, high))
    return out
