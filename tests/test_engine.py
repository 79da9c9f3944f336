"""Engine behaviour on the real default model: seeds, stops, independent finishing, deadlines."""

from __future__ import annotations

import time

import pytest

from latts.config import SamplingParams
from latts.errors import LattsError
from latts.request import GenerateRequest

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def test_seeded_sampling_is_reproducible(engine) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=7)
    a = engine.generate(GenerateRequest(QUESTION, branches=4, max_new_tokens=24, sampling=params))
    b = engine.generate(GenerateRequest(QUESTION, branches=4, max_new_tokens=24, sampling=params))
    assert [x.token_ids for x in a.branches] == [x.token_ids for x in b.branches]
    c = engine.generate(GenerateRequest(QUESTION, branches=4, max_new_tokens=24,
                                        sampling=SamplingParams(0.8, 0.95, 0, seed=8)))
    assert [x.token_ids for x in a.branches] != [x.token_ids for x in c.branches]
    # branches of one request are distinct samples, not copies
    assert len({tuple(x.token_ids) for x in a.branches}) > 1


def test_rows_finish_independently_on_stop_string(engine) -> None:
    params = SamplingParams(temperature=1.0, seed=3)
    got = engine.generate(GenerateRequest(QUESTION, branches=8, max_new_tokens=48, sampling=params,
                                          stop=["."]))
    reasons = [b.finish_reason for b in got.branches]
    assert "stop" in reasons
    stopped = [b for b in got.branches if b.finish_reason == "stop"]
    first_stop = min(b.n_tokens for b in stopped)
    assert max(b.n_tokens for b in got.branches) > first_stop, "other rows should go on after one stops"
    for b in stopped:
        assert "." not in b.text
    for b in got.branches:
        assert b.finish_reason in {"stop", "eos", "length"}
        assert len(b.token_times) == b.n_tokens
        assert b.token_times == sorted(b.token_times)


def test_eos_and_length_finish(engine) -> None:
    got = engine.generate(GenerateRequest("Say hi.", branches=2, max_new_tokens=200, sampling=None))
    for b in got.branches:
        assert b.finish_reason == "eos"
        assert b.token_ids[-1] in engine.eos
    short = engine.generate(GenerateRequest("Say hi.", branches=2, max_new_tokens=3, sampling=None))
    assert [b.n_tokens for b in short.branches] == [3, 3]
    assert {b.finish_reason for b in short.branches} == {"length"}


def test_deadline_in_the_past_returns_at_once(engine) -> None:
    got = engine.generate(GenerateRequest(QUESTION, branches=4, max_new_tokens=64,
                                          deadline=time.monotonic() - 1.0))
    assert [b.finish_reason for b in got.branches] == ["deadline"] * 4
    assert all(b.n_tokens == 0 for b in got.branches)
    assert got.steps == 0


def test_deadline_stops_every_row(engine) -> None:
    params = SamplingParams(temperature=1.0, seed=1)
    got = engine.generate(GenerateRequest("Write a very long essay about the sea.", branches=4,
                                          max_new_tokens=5000, sampling=params,
                                          deadline=time.monotonic() + 1.0))
    live = [b for b in got.branches if b.finish_reason not in {"eos"}]
    assert live and all(b.finish_reason == "deadline" for b in live)
    assert all(0 < b.n_tokens < 5000 for b in got.branches)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"branches": 0}, "branches"),
        ({"branches": 100_000}, "branches"),
        ({"max_new_tokens": 0}, "max tokens"),
    ],
)
def test_bad_arguments(engine, kwargs, message) -> None:
    with pytest.raises(LattsError, match=message):
        engine.generate(GenerateRequest(QUESTION, **kwargs))


def test_empty_prompt(engine) -> None:
    with pytest.raises(LattsError, match="empty prompt"):
        engine.generate(GenerateRequest("   "))
    with pytest.raises(LattsError, match="empty prompt"):
        engine.generate(GenerateRequest([]))


def test_context_and_gamma_limits(engine) -> None:
    with pytest.raises(LattsError, match="exceeds the model's context"):
        engine.generate(GenerateRequest(QUESTION, max_new_tokens=engine.model.max_positions))
    with pytest.raises(LattsError, match="gamma must be between"):
        engine.generate(GenerateRequest(QUESTION, gamma=-1))
    with pytest.raises(LattsError, match="gamma must be between"):
        engine.generate(GenerateRequest(QUESTION, gamma=1000))
