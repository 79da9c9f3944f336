"""Online confidence pruning (DeepConf-style): the confidence, the group's bar, and pruning in the engine."""

from __future__ import annotations

import math

import pytest
import torch

from latts.config import BudgetForcing, Plan, Pruning, SamplingParams
from latts.engine.pruning import ConfidencePruner, token_confidence
from latts.errors import LattsError
from latts.request import GenerateRequest


def test_token_confidence_is_minus_the_mean_top_k_log_probability() -> None:
    logits = torch.zeros(2, 50)
    logits[0, 0] = 8.0  # one token leads the other 49 by 8 nats
    got = token_confidence(logits, top_k=5)
    top, rest = 8 - math.log(math.exp(8) + 49), -math.log(math.exp(8) + 49)
    assert got[0].item() == pytest.approx(-(top + 4 * rest) / 5, rel=1e-5)
    assert got[1].item() == pytest.approx(math.log(50), rel=1e-5)  # uniform
    assert got[0] > got[1]  # a peaked distribution is the more confident


def _peaked(strength: float, n: int) -> torch.Tensor:
    """n positions of logits whose top token leads the rest by ``strength`` nats (V = 50)."""
    logits = torch.zeros(n, 50)
    logits[:, 0] = strength
    return logits


def test_the_bar_is_the_groups_quantile_and_the_least_confident_go_first() -> None:
    p = Pruning(below=0.5, window=2, warmup=4, top_k=5, min_branches=2)
    pruner = ConfidencePruner(p)
    strengths = {0: 8.0, 1: 6.0, 2: 4.0, 3: 2.0}
    for i, s in strengths.items():
        pruner.observe(i, _peaked(s, 3))
    assert pruner.to_prune([0, 1, 2, 3], 4) == [] and pruner.bar is None  # warm-up: 3 of 4 tokens
    for i, s in strengths.items():
        pruner.observe(i, _peaked(s, 1))
    lows = torch.tensor([token_confidence(_peaked(s, 1), 5).item() for s in strengths.values()])
    got = pruner.to_prune([0, 1, 2, 3], 4)
    assert pruner.bar == pytest.approx(float(lows.quantile(0.5)))
    assert got == [3, 2]  # under the median, least confident first
    assert pruner.to_prune([0, 1, 2, 3], 3) == [3]  # never below min_branches running


def test_bad_pruning_settings_are_refused() -> None:
    with pytest.raises(LattsError, match="quantile"):
        Pruning(below=1.5)
    with pytest.raises(LattsError, match="warmup"):
        Pruning(window=16, warmup=8)
    with pytest.raises(LattsError, match="quantile"):
        Plan(prune=-0.2)


def test_the_engine_prunes_unconfident_branches_and_they_do_not_vote(engine) -> None:
    """8 sampled branches, bar at the group's median: some stop as ``pruned`` (after the warm-up, before
    their thinking budget, never below two running), the others go on to answer; pruned ones abstain."""
    from latts.tasks import get_task
    from latts.tts.solver import Solver

    task = get_task("arith")
    problem = task.load(limit=2)[1]
    ids = engine.encode(task.prompt(problem))
    # thinking held open for 40 tokens (past the warm-up), so that branches are still thinking to be pruned
    budget = BudgetForcing(min_think=40, max_think=96, answer_tokens=8, answer_prompt=task.answer_prompt)
    pruning = Pruning(below=0.5)  # what a plan's prune=0.5 asks for
    sampling = SamplingParams(temperature=0.8, seed=3)
    full = engine.generate(GenerateRequest(ids, branches=8, sampling=sampling, budget=budget))
    pruned = engine.generate(GenerateRequest(ids, branches=8, sampling=sampling, budget=budget, pruning=pruning))
    stopped = [b for b in pruned.branches if b.finish_reason == "pruned"]
    assert 1 <= len(stopped) <= 6
    assert all(len(b.token_ids) >= pruning.warmup for b in stopped)
    assert all(b.forced is None for b in stopped)  # stopped while thinking, never mid-answer
    assert all(b.think_tokens < budget.max_think for b in stopped)  # stopped before its budget ran out
    assert {b.finish_reason for b in full.branches} & {"pruned"} == set()  # off unless asked for
    solution = Solver(engine, task).solve(problem, Plan(branches=8, min_think=40, max_think=96, answer_tokens=8,
                                                        temperature=0.8, seed=3, prune=0.5, early_stop=False))
    # the same request through a plan: the same branches stop, and they abstain
    assert [b.finish_reason for b in solution.branches] == [b.finish_reason for b in pruned.branches]
    for b, answer in zip(solution.branches, solution.branch_answers):
        if b.finish_reason == "pruned":
            assert answer is None
