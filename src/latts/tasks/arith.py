"""arith: generated arithmetic problems with integer answers, at difficulty levels 1-6.

A benchmark a small model can partly solve, so that sampling more branches and voting visibly helps.
Levels 1-2 are bare expressions ("What is 7 + 5? Answer with just the number."); levels 3-6 are
multi-step word problems ("Tom has 23 apples. He buys 4 bags with 12 apples in each bag. Then he gives
17 apples to Mia. How many apples does Tom have now?") with more steps and bigger numbers as the level
rises. Problem ``i`` of level ``L`` comes from ``random.Random(f"arith-{seed}-L{L}-{i}")``, so a smaller
``limit`` gives a prefix of a larger one and every run and machine sees the same problems.
``Problem.meta["expression"]`` is the arithmetic the problem describes (the answer is its value).

DEFAULT_LEVEL is 1 because the default model cannot do word problems but answers bare one-digit sums
and products about half the time, where a majority of 8 branches is right far more often than one
branch (the calibration is in ``docs/measurement-history.md``; ``benchmarks/tts_arith.py`` measures it
on 100 problems).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from latts.config import ANSWER_PROMPT
from latts.errors import LattsError
from latts.tasks.grading import after_thinking, as_integer, equation_value, extract_boxed
from latts.tasks.base import Problem, check_limit

DEFAULT_LEVEL = 1  # calibrated for the default model: see the note above
DEFAULT_COUNT = 200  # problems load() makes when no limit is given
LEVELS = (1, 2, 3, 4, 5, 6)
BARE_LEVELS = (1, 2)  # bare expressions; the rest are word problems
BARE_PROMPT = "What is {expression}? Answer with just the number."
# One worked example: the default 135M model copies its format (and answers more often) far better than it
# follows an instruction alone. Its answer, 64, is out of reach at levels 1 and 2, so copying it never scores.
EXAMPLE = (
    "Example:\nSam has 45 marbles. He gives 18 marbles to Mia. Then he finds 37 more marbles. How many marbles"
    " does Sam have now?\nSolution: 45 - 18 = 27. 27 + 37 = 64. The answer is \\boxed{64}."
)

NAMES = (("Tom", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"), ("Ben", "he"), ("Emma", "she"),
         ("Jack", "he"), ("Zoe", "she"), ("Leo", "he"), ("Ava", "she"))
# (item, items, group, groups)
ITEMS = (("apple", "apples", "bag", "bags"), ("marble", "marbles", "box", "boxes"),
         ("sticker", "stickers", "pack", "packs"), ("cookie", "cookies", "jar", "jars"),
         ("pencil", "pencils", "box", "boxes"), ("card", "cards", "pack", "packs"),
         ("egg", "eggs", "carton", "cartons"), ("stamp", "stamps", "book", "books"))


@dataclass(frozen=True)
class Level:
    """How hard a level is: how many steps follow the start and how big the numbers get."""

    steps: int
    start: tuple[int, int]  # range of the starting amount
    small: tuple[int, int]  # range of added or removed amounts
    groups: tuple[int, int]  # range of the number of bags/boxes (and of a split)
    per_group: tuple[int, int]  # range of items per bag/box
    ops: tuple[str, ...]


LEVEL_SPECS = {
    1: Level(1, (2, 9), (2, 9), (2, 9), (2, 9), ("add", "mul")),  # a + b or a * b, one digit each
    2: Level(1, (10, 99), (2, 9), (2, 9), (2, 9), ("add", "sub")),  # two digits plus or minus one
    3: Level(1, (2, 9), (2, 9), (2, 3), (2, 5), ("add",)),
    4: Level(2, (5, 30), (2, 15), (2, 4), (2, 6), ("add", "sub", "buy")),
    5: Level(3, (10, 60), (3, 30), (2, 5), (3, 12), ("add", "sub", "buy", "sell")),
    6: Level(5, (20, 100), (5, 50), (2, 6), (4, 15), ("add", "sub", "buy", "sell", "split")),
}


def make_problem(level: int, index: int, seed: int = 0) -> Problem:
    """Problem ``index`` of ``level`` for ``seed``: a short story, its integer answer and the expression."""
    spec = LEVEL_SPECS[level]
    rng = random.Random(f"arith-{seed}-L{level}-{index}")
    if level in BARE_LEVELS:
        return _bare_problem(spec, level, index, rng)
    (name, he), (item, items, group, groups) = rng.choice(NAMES), rng.choice(ITEMS)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    value = rng.randint(*spec.start)
    expression = str(value)
    sentences = [f"{name} has {_count(value, item, items)}."]
    for step in range(spec.steps):
        then = "Then " + he if step else he.capitalize()
        op = _pick_op(rng, spec, value)
        if op == "add":
            n = rng.randint(*spec.small)
            value, expression = value + n, f"{expression} + {n}"
            sentences.append(f"{then} finds {n} more {item if n == 1 else items}.")
        elif op == "sub":
            n = rng.randint(1, min(value, spec.small[1]))
            value, expression = value - n, f"{expression} - {n}"
            sentences.append(f"{then} gives {_count(n, item, items)} to {friend}.")
        elif op == "buy":
            k, m = rng.randint(*spec.groups), rng.randint(*spec.per_group)
            value, expression = value + k * m, f"{expression} + {k} * {m}"
            sentences.append(f"{then} buys {_count(k, group, groups)} with {m} {items} in each {group}.")
        elif op == "sell":
            m = rng.randint(*spec.per_group)
            k = rng.randint(1, min(value // m, spec.groups[1]))
            value, expression = value - k * m, f"{expression} - {k} * {m}"
            sentences.append(f"{then} sells {_count(k, group, groups)} with {m} {items} in each {group}.")
        else:  # split: share equally, keep one share
            k = rng.choice([d for d in range(spec.groups[0], spec.groups[1] + 1) if value % d == 0])
            inner = f"({expression})" if " " in expression else expression
            value, expression = value // k, f"{inner} / {k}"
            sentences.append(f"{then} shares the {items} equally among {k} friends and keeps one share.")
    sentences.append(f"How many {items} does {name} have now?")
    pid = f"arith-L{level}-{index:04d}"
    return Problem(pid, " ".join(sentences), str(value), {"level": level, "expression": expression})


def _bare_problem(spec: Level, level: int, index: int, rng: random.Random) -> Problem:
    """One operation on small numbers, asked as a bare expression."""
    op = rng.choice(spec.ops)
    a, b = rng.randint(*spec.start), rng.randint(*spec.small)
    symbol, value = {"add": ("+", a + b), "sub": ("-", a - b), "mul": ("*", a * b)}[op]
    expression = f"{a} {symbol} {b}"
    pid = f"arith-L{level}-{index:04d}"
    return Problem(pid, BARE_PROMPT.format(expression=expression), str(value), {"level": level, "expression": expression})


def _count(n: int, one: str, many: str) -> str:
    """``"1 apple"`` or ``"3 apples"``."""
    return f"{n} {one if n == 1 else many}"


def _pick_op(rng: random.Random, spec: Level, value: int) -> str:
    """A random step that keeps the amount a whole, non-negative number."""
    possible = [
        op
        for op in spec.ops
        if (op != "sub" or value >= 1)
        and (op != "sell" or value >= spec.per_group[1])
        and (op != "split" or any(value % d == 0 for d in range(spec.groups[0], spec.groups[1] + 1)))
    ]
    return rng.choice(possible)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# a box that answers with a number: the number, then at most a few words of unit ("31 cards", "\\$12", "40%")
_BOXED_NUMBER = re.compile(r"(?:\\\$|\$)?\s*(-?\d[\d,]*(?:\.\d+)?)\s*(?:\\?%)?\s*(?:[A-Za-z]+\.?\s*){0,3}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*\**\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


class ArithTask:
    """The arith benchmark at one level; answers are compared as integers."""

    name = "arith"
    answer_prompt = ANSWER_PROMPT

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        if level not in LEVEL_SPECS:
            raise LattsError(f"arith level must be one of {', '.join(map(str, LEVELS))}, got {level}")
        self.level = level

    def load(self, limit: int | None = None, data: Path | None = None, seed: int = 0) -> list[Problem]:
        """``limit`` (default 200) generated problems of this level for ``seed``; arith reads no data file."""
        check_limit(limit)
        if data is not None:
            raise LattsError("arith problems are generated, not read: drop --data (use --seed to vary them)")
        count = DEFAULT_COUNT if limit is None else limit
        return [make_problem(self.level, i, seed) for i in range(count)]

    def prompt(self, problem: Problem) -> str:
        """A bare expression (or a question typed by a user) as it is; a story after a worked example."""
        if problem.meta.get("level") in BARE_LEVELS or problem.meta.get("raw"):
            return problem.question
        return f"{EXAMPLE}\n\nSolve this problem the same way:\n{problem.question}"

    def extract(self, completion: str) -> str | None:
        """The number in the last ``\\boxed{}``, else after the last "answer is", else the last number, else None.

        A box holding an equation that ends in a single number (``\\boxed{9 + 2 = 11}``: the model often
        boxes the whole sum) gives that number; a box holding a number and a unit (``\\boxed{31 cards}``) the
        number. A box that answers with anything else (``\\boxed{A}``, ``\\boxed{Ava has 23 cards, so Ava}``,
        ``\\boxed{23 + 5}``) abstains: arith's answers are numbers, and such a text cannot be right, so it must
        not take a vote from the branches that did answer. The last-number fallback matters for the small default
        model, which mostly answers bare sums as "7 + 5 is 12." without any answer phrase. Only the text after
        a reasoning model's thinking counts (:func:`~latts.tasks.grading.after_thinking`).
        """
        completion = after_thinking(completion)
        boxed = extract_boxed(completion)
        if boxed is not None:
            value = equation_value(boxed)
            if value is not None:
                return value
            number = _BOXED_NUMBER.fullmatch(_TEXT.sub(r" \1 ", boxed).strip().strip("$").strip())
            return number.group(1).replace(",", "") if number else None
        hits = _ANSWER_IS.findall(completion) or _NUMBER.findall(completion)
        return hits[-1].replace(",", "").rstrip(".") if hits else None

    def grade(self, gold: str, pred: str | None) -> bool:
        """Integer equality (see :meth:`same`); None or a non-integer answer is wrong."""
        return pred is not None and self.same(gold, pred)

    def same(self, a: str, b: str) -> bool:
        """Integer equality, or identical text when either side is not an integer.

        An equation ending in a single number (``9 + 2 = 11``, as typed to ``latts grade``) counts as that
        number.
        """
        ia, ib = as_integer(equation_value(a) or a), as_integer(equation_value(b) or b)
        if ia is None or ib is None:
            return a.strip() == b.strip()
        return ia == ib


TASK = ArithTask()
