"""AIME 2024 and 2025 (30 problems each, integer answers), shipped in ``latts/data/aime2{4,5}.jsonl``."""

from __future__ import annotations

import re

from latts.tasks.grading import as_integer, equation_value, math_equal
from latts.tasks.base import MathTask


_DIGIT = re.compile(r"\d")


class AimeTask(MathTask):
    """An AIME year: answers are integers, so ``025`` equals ``25`` (and ``9 + 2 = 11`` equals ``11``);
    anything else goes to math-verify."""

    def __init__(self, name: str, filename: str) -> None:
        self.name = name
        self.filename = filename

    def extract(self, completion: str) -> str | None:
        """The answer as :meth:`MathTask.extract` finds it, or None (an abstention) when it holds no digit: an AIME
        answer is an integer from 0 to 999, so a box of letters or words (``\\boxed{A}``, ``\\boxed{n}``) cannot
        be right and must not take a vote from the branches that answered."""
        answer = super().extract(completion)
        return answer if answer is not None and _DIGIT.search(answer) else None

    def grade(self, gold: str, pred: str | None) -> bool:
        """Integer equality when both sides are integers (leading zeros ignored), else math-verify."""
        return pred is not None and self.same(gold, pred)

    def same(self, a: str, b: str) -> bool:
        """Integer equality when both are integers, else math-verify with ``a`` first.

        An equation ending in a single number (``999 + 1 = 1,000``) counts as that number.
        """
        ia, ib = as_integer(equation_value(a) or a), as_integer(equation_value(b) or b)
        if ia is not None and ib is not None:
            return ia == ib
        return math_equal(a, b)


AIME24 = AimeTask("aime24", "aime24.jsonl")
AIME25 = AimeTask("aime25", "aime25.jsonl")
