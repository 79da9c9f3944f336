"""``GenerateRequest``: what a backend is asked to decode, checked when it is built (no model needed)."""

from __future__ import annotations

import pytest

from latts.config import MAX_GAMMA, BudgetForcing, SamplingParams
from latts.errors import LattsError
from latts.request import GenerateRequest


def test_defaults_and_normalisation() -> None:
    r = GenerateRequest([3, 1, 2], sampling=None, stop=["\n", ""], checkpoints=[20, 5, 20],
                        budget=BudgetForcing(max_think=30))
    assert r.prompt == (3, 1, 2) and r.sampling == SamplingParams(temperature=0.0) and r.sampling.greedy
    assert r.stop == ("\n",) and r.checkpoints == (5, 20)
    assert r.branches == 1 and r.max_new_tokens == 256 and r.chat and r.deadline is None
    hash(r)  # frozen and hashable: a request can key a cache


@pytest.mark.parametrize("kwargs, message", [
    ({"branches": 0}, r"branches \(-B\) must be >= 1, got 0"),
    ({"branches": 100_000}, r"branches \(-B\) must be <= 1024"),
    ({"max_new_tokens": 0}, "max tokens must be >= 1, got 0"),
    ({"gamma": -1}, f"gamma must be between 0 and {MAX_GAMMA}, got -1"),
    ({"gamma": MAX_GAMMA + 1}, f"gamma must be between 0 and {MAX_GAMMA}"),
    ({"checkpoints": (5,)}, r"checkpoints need budget forcing and plain decoding \(gamma 0\)"),
    ({"checkpoints": (5,), "budget": BudgetForcing(max_think=20), "gamma": 2}, "plain decoding"),
    ({"checkpoints": (20,), "budget": BudgetForcing(max_think=20)}, r"between 1 and max_think - 1 \(19\)"),
    ({"checkpoints": (0, 5), "budget": BudgetForcing(max_think=20)}, "between 1 and max_think - 1"),
])
def test_bad_requests_are_named(kwargs, message) -> None:
    with pytest.raises(LattsError, match=message):
        GenerateRequest("Say hi.", **kwargs)


@pytest.mark.parametrize("prompt", ["", "   \n", [], ()])
def test_empty_prompt(prompt) -> None:
    with pytest.raises(LattsError, match="empty prompt"):
        GenerateRequest(prompt)
