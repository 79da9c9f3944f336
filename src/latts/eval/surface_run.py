"""The wide runs behind the accuracy surface: B_max branches, answers forced at every checkpoint L.

``latts eval --surface`` runs each problem once with ``B_max`` branches and the largest thinking
budget; at every smaller budget L the engine copies each still-thinking branch into a probe that is
forced to answer right there (``GenerateRequest(checkpoints=...)``), so a single run yields, per
branch, the answer it would have given with budget L. A branch that ended by itself before L answers
with its own text. Records go to the same resumable JSONL as ``latts eval``; :func:`surface_from_records`
turns them into accuracy(B, L) with bootstrap intervals (see :mod:`latts.eval.surface`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latts.config import BudgetForcing, Plan, SamplingParams
from latts.errors import LattsError
from latts.request import GenerateRequest
from latts.tts.solver import Solver
from latts.eval.surface import Estimate, estimate_surface
from latts.tasks import Problem, Task


@dataclass(frozen=True, slots=True)
class WideRun:
    """One surface configuration: a plan of B_max branches thinking up to its ``max_think``, each still-thinking
    branch also answering at every smaller budget in ``checkpoints``."""

    plan: Plan
    checkpoints: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.plan.gamma:
            raise LattsError("a wide run measures accuracy only: no speculation (it is lossless)")
        if sorted(set(self.checkpoints)) != list(self.checkpoints) or any(
                not 1 <= c < self.plan.max_think for c in self.checkpoints):
            raise LattsError(f"thinking budgets must be distinct and >= 1, got {list(self.thinks)}")

    @property
    def thinks(self) -> tuple[int, ...]:
        """Every budget answered, increasing: the checkpoints and the plan's own ``max_think``."""
        return (*self.checkpoints, self.plan.max_think)

    def key(self) -> str:
        """The resume key (with problem and seed)."""
        return f"surface-B{self.plan.branches}-L{','.join(map(str, self.thinks))}-T{self.plan.temperature:g}"


def wide_run(branches: int, thinks: Sequence[int], temperature: float = 0.7, answer_tokens: int = 16) -> WideRun:
    """The wide run of ``branches`` branches answering at every budget of ``thinks``."""
    if not thinks or min(thinks) < 1 or len(set(thinks)) != len(thinks):
        raise LattsError(f"thinking budgets must be distinct and >= 1, got {list(thinks)}")
    budgets = sorted(thinks)
    plan = Plan(branches=branches, max_think=budgets[-1], temperature=temperature, answer_tokens=answer_tokens,
                early_stop=False)
    return WideRun(plan, tuple(budgets[:-1]))


def run_wide(solver: Solver, problem: Problem, run: WideRun, seed: int) -> dict[str, Any]:
    """One wide run of ``problem``: the record with every branch's answer at every budget."""
    task: Task = solver.task
    plan, thinks = run.plan, list(run.thinks)
    budget = BudgetForcing(0, plan.max_think, answer_prompt=task.answer_prompt, answer_tokens=plan.answer_tokens)
    sampling_seed = problem.sampling_seed(seed)
    sampling = SamplingParams(plan.temperature, plan.top_p, seed=sampling_seed)
    gen = solver.backend.generate(GenerateRequest(task.prompt(problem), branches=plan.branches, budget=budget,
                                                  sampling=sampling, checkpoints=run.checkpoints))
    own = [task.extract(b.text) for b in gen.branches]
    answers: dict[str, list[str | None]] = {str(thinks[-1]): own}
    for L in thinks[:-1]:
        column = list(own)
        for p in gen.probes:
            if p.checkpoint == L:
                column[p.parent] = task.extract(p.text)
        answers[str(L)] = column
    return {
        "task": task.name,
        "problem_id": problem.id,
        "config_key": run.key(),
        "kind": "surface",
        "config": {"B": plan.branches, "thinks": thinks, "temperature": plan.temperature,
                   "answer_tokens": plan.answer_tokens},
        "seed": seed,
        "sampling_seed": sampling_seed,
        "gold": problem.gold,
        "answers": answers,
        "correct": {L: [task.grade(problem.gold, a) if a is not None else False for a in col]
                    for L, col in answers.items()},
        # how long each branch thought; None where the largest budget cut it (it would have gone on)
        "think_tokens": [None if b.forced else b.think_tokens for b in gen.branches],
        "latency_s": round(gen.latency_s, 4),
        "tokens": gen.total_tokens + sum(p.n_tokens for p in gen.probes),
        "steps": gen.steps,
    }


def expected_thinking(records: Sequence[dict[str, Any]], branches: int, think: int) -> tuple[float, float]:
    """(E[steps of thinking], P[some branch is forced]) of a run of B branches with budget L, from wide runs.

    A run lasts as long as its longest branch: each branch thinks min(its own length, L) tokens, and
    the run needs a forced answer when any branch reaches L. Both are averaged over problems, exactly
    over the B-subsets of each wide run's branches (order statistics), so plans whose branches stop
    early by themselves are not predicted to think for their whole budget.
    """
    steps, forced = [], []
    for r in records:
        lengths = [think if t is None else min(int(t), think) for t in r.get("think_tokens") or []]
        n = len(lengths)
        if n < branches:
            continue
        lengths.sort()
        total = math.comb(n, branches)
        # P(the subset's maximum is the j-th smallest) = C(j, B-1) / C(n, B), j = 0..n-1
        steps.append(sum(x * math.comb(j, branches - 1) for j, x in enumerate(lengths)) / total)
        short = sum(1 for x in lengths if x < think)
        forced.append(1 - math.comb(short, branches) / total)
    if not steps:
        return float(think), 1.0
    return statistics.fmean(steps), statistics.fmean(forced)


def surface_from_records(records: Sequence[dict[str, Any]], task: Task, branch_counts: Sequence[int],
                         seed: int = 0) -> list[Estimate]:
    """accuracy(B, L) for every B in ``branch_counts`` and every L of the wide runs in ``records``.

    Each (problem, seed) run is one sample of the bootstrap; every run must have the same budgets.
    """
    wide = [r for r in records if r.get("kind") == "surface"]
    if not wide:
        raise LattsError("no surface records (run latts eval --surface first)")
    thinks = {tuple(r["config"]["thinks"]) for r in wide}
    if len(thinks) != 1:
        raise LattsError(f"surface records with different thinking budgets: {sorted(thinks)}")
    runs = [{int(L): col for L, col in r["answers"].items()} for r in wide]
    return estimate_surface(runs, [r["gold"] for r in wide], task.grade, task.same, branch_counts, seed=seed)
