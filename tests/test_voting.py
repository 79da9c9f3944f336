"""Majority voting: equivalent answers merge, None abstains, first seen wins ties, weights, early stop."""

from __future__ import annotations

import pytest

from latts.errors import LattsError
from latts.tasks.grading import math_equal
from latts.tasks import get_task
from latts.tts.voting import Vote, decided, vote


def test_equivalent_answers_merge_into_the_first_spelling() -> None:
    result = vote(["0.5", "\\frac{1}{2}", "3", "\\dfrac12", None, "3"], math_equal)
    assert result.answer == "0.5"
    assert result.counts == [("0.5", 3.0), ("3", 2.0)]
    assert result.abstained == 1


def test_blank_and_none_abstain() -> None:
    result = vote([None, "  ", None], math_equal)
    assert result == Vote(None, [], 3)
    assert decided(result, 0) is False


def test_tie_goes_to_the_class_seen_first() -> None:
    assert vote(["7", "5", "5", "7"], get_task("arith").same).answer == "7"
    assert vote(["5", "7", "7", "5"], get_task("arith").same).answer == "5"
    assert vote(["B", "(A)", "a", "b"], get_task("gpqa_diamond").same).counts == [("B", 2.0), ("(A)", 2.0)]


def test_weights_can_outvote_a_plain_majority() -> None:
    answers = ["12", "012", "13", "13", "13"]
    assert vote(answers, get_task("aime24").same).answer == "13"
    weighted = vote(answers, get_task("aime24").same, weights=[0.9, 0.9, 0.5, 0.4, 0.1])
    assert weighted.answer == "12"
    assert weighted.counts == [("12", pytest.approx(1.8)), ("13", pytest.approx(1.0))]


def test_same_is_called_once_per_distinct_answer_and_class() -> None:
    calls: list[tuple[str, str]] = []

    def same(a: str, b: str) -> bool:
        calls.append((a, b))
        return a == b

    vote(["1", "2", "1", "2", "1", " 2 "], same)
    assert calls == [("1", "2")]


def test_bad_weights_are_rejected() -> None:
    with pytest.raises(LattsError, match="one weight per answer"):
        vote(["1", "2"], math_equal, weights=[1.0])
    with pytest.raises(LattsError, match="finite"):
        vote(["1"], math_equal, weights=[float("nan")])


@pytest.mark.parametrize(
    ("answers", "remaining", "expected"),
    [
        (["4", "4", "4", "5"], 1, True),  # 3 vs 1+1: cannot be caught
        (["4", "4", "4", "5"], 2, False),  # 3 vs 1+2: could be tied
        (["4", "4"], 1, True),  # 2 vs 0+1
        (["4", "4"], 2, False),  # a new answer could tie
        (["4", "5"], 0, False),  # a tie is never decided
        (["4"], 0, True),
        ([None, None], 1, False),
    ],
)
def test_decided(answers: list[str | None], remaining: int, expected: bool) -> None:
    assert decided(vote(answers, get_task("arith").same), remaining) is expected


def test_decided_with_weights_and_bad_remaining() -> None:
    weighted = vote(["4", "5"], get_task("arith").same, weights=[0.9, 0.2])
    assert decided(weighted, 0) is True
    assert decided(weighted, 1, max_weight=0.5) is True
    assert decided(weighted, 1) is False
    with pytest.raises(LattsError, match="remaining"):
        decided(weighted, -1)
