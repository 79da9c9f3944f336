"""s1 budget forcing inside the engine, on the real default model (fp32)."""

from __future__ import annotations

import time

import pytest

from latts.config import BudgetForcing, SamplingParams
from latts.engine.speculation.drafters import NGramDrafter
from latts.errors import LattsError
from latts.request import GenerateRequest

SHORT = "Say hi."  # the model answers in a handful of tokens and stops
LONG = "Write a very long essay about the history of the sea, with many chapters."


def _ids(engine, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


def test_min_think_suppresses_stops_with_the_ignore_string(engine) -> None:
    budget = BudgetForcing(min_think=40, max_think=80, ignore="Wait", answer_tokens=8)
    got = engine.generate(GenerateRequest(SHORT, branches=3, sampling=SamplingParams(temperature=0.8, seed=2),
                                          budget=budget))
    ignore = _ids(engine, "Wait")
    for b in got.branches:
        assert b.ignored >= 1, "the model stops after a few tokens, so a stop must have been suppressed"
        assert b.think_tokens >= 40
        assert "Wait" in b.text
        # wherever the ignore string sits, it replaced an end-of-sequence token: none is left inside
        body = b.token_ids[:-1]
        assert not set(body) & engine.eos
        starts = [j for j in range(len(b.token_ids)) if b.token_ids[j : j + len(ignore)] == ignore]
        assert len(starts) >= b.ignored


def test_max_think_forces_an_answer_within_bounds(engine) -> None:
    budget = BudgetForcing(max_think=24, answer_tokens=6)
    got = engine.generate(GenerateRequest(LONG, branches=4, sampling=SamplingParams(temperature=0.7, seed=0),
                                          budget=budget))
    answer = _ids(engine, budget.answer_prompt)
    for b in got.branches:
        assert b.forced == "max_think"
        assert b.think_tokens == 24
        assert b.n_tokens <= 24 + len(answer) + budget.answer_tokens
        assert "Final answer: \\boxed{" in b.text
        assert b.finish_reason in {"answered", "eos"}
        at = b.token_ids.index(answer[0], 24)
        assert b.token_ids[at : at + len(answer)] == answer


def test_forced_text_continues_exactly_like_a_fresh_prompt(engine) -> None:
    """The ragged catch-up forward over forced tokens leaves the cache as if they had been in the prompt."""
    budget = BudgetForcing(min_think=30, max_think=60, answer_tokens=4)
    got = engine.generate(GenerateRequest(SHORT, branches=2, sampling=None, budget=budget))
    b = got.branches[0]
    ignore = _ids(engine, budget.ignore)
    cut = next(j for j in range(len(b.token_ids)) if b.token_ids[j : j + len(ignore)] == ignore) + len(ignore)
    prefix = engine.encode(SHORT) + b.token_ids[:cut]
    fresh = engine.generate(GenerateRequest(prefix, branches=1, max_new_tokens=12, sampling=None,
                                            ignore_eos=True))
    assert b.token_ids[cut : cut + 12] == fresh.branches[0].token_ids[: len(b.token_ids[cut : cut + 12])]
    assert len(b.token_ids) - cut >= 6


def test_budget_forcing_with_speculation_matches_plain_greedy(engine) -> None:
    budget = BudgetForcing(min_think=48, max_think=96, answer_tokens=8)
    plain = engine.generate(GenerateRequest(SHORT, branches=4, sampling=None, budget=budget))
    spec = engine.generate(GenerateRequest(SHORT, branches=4, sampling=None, budget=budget, gamma=3, gamma_policy="fixed",
                                           drafter=NGramDrafter()))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]
    assert all(b.ignored >= 1 for b in spec.branches)


def test_deadline_forces_answers_before_it(engine) -> None:
    budget = BudgetForcing(max_think=4000, answer_tokens=6)
    got = engine.generate(GenerateRequest(LONG, branches=4, sampling=SamplingParams(temperature=0.7, seed=1),
                                          budget=budget, deadline=time.monotonic() + 2.0))
    assert {b.forced for b in got.branches} == {"deadline"}
    for b in got.branches:
        assert "Final answer: \\boxed{" in b.text
        assert b.finish_reason in {"answered", "eos", "deadline"}
    assert any(b.finish_reason == "answered" for b in got.branches)


def test_one_stalled_step_does_not_force_every_answer(fast_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that stalls once (another process had the CPU) says little about the next ones: answers are
    forced when the steps' usual time says the deadline is near, not at the first hiccup."""
    from latts.engine.engine import Engine

    engine = Engine(fast_model)
    decode, calls = engine.model.decode, []

    def stalls_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            time.sleep(0.5)
        return decode(*args, **kwargs)

    monkeypatch.setattr(engine.model, "decode", stalls_once)
    budget = BudgetForcing(max_think=30, answer_tokens=16)
    got = engine.generate(GenerateRequest(LONG, branches=2, budget=budget, deadline=time.monotonic() + 2.5,
                                          sampling=SamplingParams(temperature=0.7, seed=1)))
    assert len(calls) > 4
    # taking the 0.5 s step as the pace would put 18 answer steps (~2.7 s at an EMA of 0.3) past the deadline
    # at once; the steps' median lets every branch think to max_think (~0.3 s of work here)
    assert [b.forced for b in got.branches] == ["max_think", "max_think"], \
        [(b.forced, b.finish_reason, b.n_tokens) for b in got.branches]


def test_on_step_can_cancel_the_request(engine) -> None:
    calls = []

    def stop_after_five(branches) -> bool:
        calls.append(1)
        return len(calls) >= 5

    got = engine.generate(GenerateRequest(LONG, branches=3, max_new_tokens=200,
                                          sampling=SamplingParams(seed=0)), on_step=stop_after_five)
    assert got.steps == 5
    assert {b.finish_reason for b in got.branches} == {"cancelled"}
    assert all(b.n_tokens == 6 for b in got.branches)  # the prefill's token and five steps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_think": 10, "max_think": 5}, "min_think (10) must not exceed max_think (5)"),
        ({"max_think": 0}, "max_think must be >= 1"),
        ({"min_think": -1}, "min_think must be >= 0"),
        ({"answer_tokens": 0}, "answer_tokens must be >= 1"),
    ],
)
def test_bad_budgets_are_named(kwargs, message) -> None:
    with pytest.raises(LattsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BudgetForcing(**kwargs)


def test_checkpoint_probes_answer_like_runs_with_that_budget(engine) -> None:
    """One wide run with checkpoints gives, per branch, the answer a run with max_think = L would give."""
    from dataclasses import replace

    budget = BudgetForcing(max_think=40, answer_tokens=6)
    wide = engine.generate(GenerateRequest(LONG, branches=2, budget=budget,
                                           checkpoints=(1, 12, 28)))  # greedy, fp32
    assert sorted((p.parent, p.checkpoint) for p in wide.probes) == [(b, L) for b in (0, 1) for L in (1, 12, 28)]
    for L in (1, 12, 28):
        direct = engine.generate(GenerateRequest(LONG, branches=1,
                                                 budget=replace(budget, max_think=L))).branches[0]
        for p in (p for p in wide.probes if p.checkpoint == L):
            assert p.forced == "checkpoint" and p.think_tokens == L
            assert p.token_ids == direct.token_ids, (L, p.text, direct.text)
            assert p.finish_reason == direct.finish_reason
    # the branches themselves went on, untouched by their probes
    full = engine.generate(GenerateRequest(LONG, branches=2, budget=budget))
    assert [b.token_ids for b in wide.branches] == [b.token_ids for b in full.branches]
    assert all(b.forced == "max_think" for b in wide.branches)


def test_sampled_probes_continue_their_parent(engine) -> None:
    budget = BudgetForcing(max_think=30, answer_tokens=5)
    wide = engine.generate(GenerateRequest(LONG, branches=3, budget=budget, checkpoints=(10,),
                                           sampling=SamplingParams(temperature=1.0, seed=4)))
    assert len(wide.probes) == 3
    answer = _ids(engine, budget.answer_prompt)
    for p in wide.probes:
        parent = wide.branches[p.parent]
        assert p.token_ids[:10] == parent.token_ids[:10]  # the parent's first 10 thinking tokens ...
        assert p.token_ids[10 : 10 + len(answer)] == answer  # ... then the answer prompt right there
        assert parent.token_ids[10 : 10 + len(answer)] != answer  # while the parent thought on
        assert p.finish_reason == "answered"


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoints": (5,)}, "budget forcing"),
    ({"checkpoints": (5,), "budget": BudgetForcing(max_think=20), "gamma": 2}, "plain decoding"),
    ({"checkpoints": (20,), "budget": BudgetForcing(max_think=20)}, "between 1 and max_think"),
])
def test_bad_checkpoints_are_refused(engine, kwargs, message) -> None:
    if kwargs.get("gamma"):
        kwargs["drafter"] = NGramDrafter()
    with pytest.raises(LattsError, match=message):
        engine.generate(GenerateRequest(SHORT, branches=2, **kwargs))


def test_answer_end_is_one_rule_for_both_backends() -> None:
    """Where a forced answer ends (the engine's finish and the openai backend's cut): the opened brace
    closes, else the line ends, else the answer token budget is spent."""
    from latts.engine.budget import answer_end

    boxed = BudgetForcing(answer_tokens=4)  # the default answer prompt opens \boxed{
    assert answer_end("42} so", 2, boxed) == 3
    assert answer_end("\\frac{1}{2}}.", 4, boxed) == 12  # nested braces are the answer's own
    assert answer_end("42\n", 2, boxed) is None  # a line end does not end a braced answer
    assert answer_end("4242", 3, boxed) is None
    assert answer_end("4242", 4, boxed) == 4  # the token budget: all of it
    line = BudgetForcing(answer_prompt="\nAnswer:", answer_tokens=4)
    assert answer_end(" 42\nso", 2, line) == 3
    assert answer_end(" 42}", 2, line) is None
    assert answer_end(" 42", 4, line) == 3
