"""The controller on the real default model: voting, early stopping, forced answers under a deadline."""

from __future__ import annotations

import math

import pytest
import torch

from latts.config import SamplingParams
from latts.errors import LattsError
from latts.config import Plan
from latts.tts.solver import Solver
from latts.tasks import get_task
from latts.tts.voting import vote
from latts.request import GenerateRequest

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


@pytest.fixture(scope="module")
def solver(engine) -> Solver:
    return Solver(engine, "arith")


def test_solution_is_the_vote_of_its_branches(solver) -> None:
    sol = solver.solve(QUESTION, Plan(branches=6, max_think=96, temperature=0.8, seed=3, early_stop=False))
    task = get_task("arith")
    expected = vote([task.extract(b.text) for b in sol.branches], task.same)
    assert sol.branch_answers == [task.extract(b.text) for b in sol.branches]
    assert sol.answer == expected.answer
    assert sol.votes == expected.counts
    assert sum(c for _, c in sol.votes) + sol.abstained == 6
    assert sol.tokens == sum(b.n_tokens for b in sol.branches)
    assert not sol.early_stopped
    assert all(b.finish_reason in {"eos", "answered"} for b in sol.branches)
    assert all(b.think_tokens <= 96 for b in sol.branches)


def test_forced_answers_are_extracted(solver) -> None:
    # thinking cut at 8 tokens: every branch answers after "Final answer: \boxed{"
    sol = solver.solve(QUESTION, Plan(branches=4, max_think=8, answer_tokens=6, temperature=0.7, early_stop=False))
    from latts.tasks.grading import as_integer, extract_boxed

    for b, a in zip(sol.branches, sol.branch_answers):
        assert b.forced == "max_think"
        if b.finish_reason == "answered":
            box = extract_boxed(b.text)
            assert box is not None  # the forced answer's box
            # a box that spells a number is read as it; one that holds no number abstains (arith's answers are numbers)
            assert a is not None or as_integer(box) is None, (b.text, a)


def test_early_stop_only_when_the_vote_is_decided(solver) -> None:
    sol = solver.solve(QUESTION, Plan(branches=8, max_think=200, temperature=0.3, seed=0, early_stop=True))
    cancelled = [b for b in sol.branches if b.finish_reason == "cancelled"]
    assert sol.early_stopped == bool(cancelled)
    if sol.early_stopped:
        finished = [a for b, a in zip(sol.branches, sol.branch_answers) if b.finish_reason != "cancelled"]
        tally = vote(finished, get_task("arith").same)
        lead = tally.counts[0][1]
        runner = tally.counts[1][1] if len(tally.counts) > 1 else 0
        assert lead > runner + len(cancelled)


def test_deadline_forces_every_unfinished_branch(solver) -> None:
    long_q = "Write a very long story about numbers, then add 2 and 3."
    sol = solver.solve(long_q, Plan(branches=4, max_think=4000, temperature=1.0, early_stop=False), deadline_s=2.0)
    assert sol.deadline_s == 2.0
    for b in sol.branches:
        assert b.finish_reason in {"eos", "answered", "deadline"}
        if b.finish_reason != "eos" and sol.prefill_s < 0.5:  # (a loaded machine can spend it all on prefill)
            assert b.forced == "deadline"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"question": "", "plan": Plan(branches=1)}, "empty question"),
        ({"question": QUESTION, "deadline_s": 0}, "deadline must be > 0"),
        ({"question": QUESTION, "deadline_s": -3}, "deadline must be > 0"),
    ],
)
def test_bad_input_is_named(solver, kwargs, message) -> None:
    with pytest.raises(LattsError, match=message):
        solver.solve(**kwargs)


def test_bad_plans_are_named() -> None:
    with pytest.raises(LattsError, match=r"min_think \(9\) must not exceed max_think \(4\)"):
        Plan(min_think=9, max_think=4)
    with pytest.raises(LattsError, match="branches must be >= 1"):
        Plan(branches=0)


def test_weighted_vote_uses_branch_log_probabilities(solver) -> None:
    sol = solver.solve(QUESTION, Plan(branches=4, max_think=64, temperature=0.9, seed=5, early_stop=False,
                                      weighted=True))
    weights = [math.exp(b.mean_logprob) for b in sol.branches]
    assert all(0 < w <= 1 for w in weights)
    assert sol.votes == vote(sol.branch_answers, get_task("arith").same, weights).counts


def test_logprobs_are_the_models_own(engine, hf_model) -> None:
    """Each branch's summed log-probability equals HF's teacher-forced one, its first token included."""
    ids = engine.encode(QUESTION)
    gen = engine.generate(GenerateRequest(ids, branches=2, max_new_tokens=12,
                                          sampling=SamplingParams(temperature=0.9, seed=4), logprobs=True,
                                          ignore_eos=True))
    for b in gen.branches:
        seq = torch.tensor([ids + b.token_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(hf_model(seq).logits[0].float(), -1)
        positions = range(len(ids) - 1, len(ids) + b.n_tokens - 1)  # position p predicts token p + 1
        expected = sum(float(logp[p, seq[0, p + 1]]) for p in positions)
        assert b.logprob_count == b.n_tokens
        assert b.logprob_sum == pytest.approx(expected, abs=1e-3)
