"""Answer extraction and grading on realistic model outputs: maths, AIME integers, GPQA letters."""

from __future__ import annotations

import threading

import pytest

from latts.tasks.grading import (
    as_integer,
    equation_value,
    extract_boxed,
    extract_letter,
    math_equal,
    normalize_answer,
)
from latts.tasks import get_task

# (task, gold, model output, expected): the output goes through the task's extractor, then its grader
CASES = [
    # fractions and decimals
    ("math500", "\\frac{1}{2}", "So the probability is $\\boxed{\\frac{1}{2}}$.", True),
    ("math500", "\\frac12", "Thus the answer is \\boxed{0.5}.", True),
    ("math500", "\\frac{1}{2}", "We get \\boxed{\\dfrac{1}{2}}", True),
    ("math500", "\\frac{1}{2}", "Therefore, \\boxed{1/2}.", True),
    ("math500", "\\frac{1}{2}", "The answer is \\boxed{\\frac{1}{3}}.", False),
    ("math500", "\\frac9{19}", "Simplifying gives $\\boxed{\\frac{9}{19}}$", True),
    ("math500", "\\frac{3}{4}", "So $x = \\boxed{0.75}$.", True),
    ("math500", "\\frac{3}{4}", "So $x = \\boxed{0.7}$.", False),
    ("math500", "\\frac{\\sqrt{3}}{2}", "Hence $\\sin 60^\\circ = \\boxed{\\frac{\\sqrt3}{2}}$.", True),
    ("math500", "2\\sqrt{5}", "The distance is $\\boxed{\\sqrt{20}}$.", True),
    ("math500", "2\\sqrt{5}", "The distance is $\\boxed{\\sqrt{5}}$.", False),
    # intervals, tuples, sets
    ("math500", "(-\\infty, 0]", "The range is $\\boxed{(-\\infty,0]}$.", True),
    ("math500", "[0,1)", "The solution set is $\\boxed{[0, 1)}$.", True),
    ("math500", "[0,1)", "The solution set is $\\boxed{(0, 1)}$.", False),
    ("math500", "\\left( 3, \\frac{\\pi}{2} \\right)", "In polar form: $\\boxed{(3,\\frac{\\pi}{2})}$", True),
    ("math500", "\\left( 3, \\frac{\\pi}{2} \\right)", "In polar form: $\\boxed{(3, \\pi)}$", False),
    ("math500", "(2,-1)", "The point is $\\boxed{\\left(2, -1\\right)}$.", True),
    ("math500", "(2,-1)", "The point is $\\boxed{(-1, 2)}$.", False),
    ("math500", "\\{1,2\\}", "The roots form the set $\\boxed{\\{2,1\\}}$.", True),
    # degrees, units, percentages, money
    ("math500", "30^\\circ", "The angle measures $\\boxed{30}$ degrees.", True),
    ("math500", "30", "The angle is $\\boxed{30^\\circ}$.", True),
    ("math500", "5", "The side has length $\\boxed{5 \\text{ cm}}$.", True),
    ("math500", "5", "The side has length $\\boxed{6\\text{ cm}}$.", False),
    ("math500", "1000", "There are $\\boxed{1,000}$ ways.", True),
    ("math500", "\\$32.00", "She pays \\boxed{\\$32}.", True),
    # expressions and equations
    ("math500", "x^2+2x+1", "Expanding, $\\boxed{(x+1)^2}$.", True),
    ("math500", "x^2+2x+1", "Expanding, $\\boxed{(x-1)^2}$.", False),
    ("math500", "y=2x+3", "The line is $\\boxed{y = 2x + 3}$.", True),
    # text answers
    ("math500", "\\text{Evelyn}", "So the winner is \\boxed{\\text{Evelyn}}.", True),
    ("math500", "\\text{(C)}", "The graph is \\boxed{C}.", True),
    ("math500", "\\text{east}", "He walks \\boxed{\\text{west}}.", False),
    # nested braces, several boxes, no box
    ("math500", "\\frac{\\sqrt{2}}{2}", "First \\boxed{1}, corrected: \\boxed{\\frac{\\sqrt{2}}{2}}", True),
    ("math500", "\\frac{1}{2}", "I am not sure what the answer is", False),
    ("math500", "7", "After simplifying, the final answer is $7$.", True),
    ("math500", "12", "Final answer: \\boxed{1", False),
    # AIME integers
    ("aime24", "25", "Thus $m+n = \\boxed{025}$.", True),
    ("aime24", "204", "The walk takes \\boxed{204} minutes.", True),
    ("aime24", "204", "The walk takes \\boxed{240} minutes.", False),
    ("aime25", "70", "The sum of the bases is \\boxed{70}", True),
    ("aime25", "70", "Final answer: \\boxed{70", True),  # forced answer cut just before the brace
    # GPQA letters in several phrasings
    ("gpqa_diamond", "B", "The answer is (B).", True),
    ("gpqa_diamond", "C", "Answer: C", True),
    ("gpqa_diamond", "D", "Putting it together, \\boxed{D}", True),
    ("gpqa_diamond", "B", "**Final Answer:** B", True),
    ("gpqa_diamond", "A", "Comparing the options, (A) is correct.", True),
    ("gpqa_diamond", "A", "The correct answer is option C.", False),
    ("gpqa_diamond", "A", "Answer: A simple estimate gives nothing useful.", False),
    ("gpqa_diamond", "B", "I cannot decide between these.", False),
    ("gpqa_diamond", "C", "The answer is $\\boxed{\\text{(C)}}$", True),
    # arith
    ("arith", "31", "23 - 10 = 13, 13 + 18 = 31. So the answer is \\boxed{31}.", True),
    ("arith", "31", "She has \\boxed{31 cards} now.", True),
    ("arith", "31", "The answer is 31.", True),
    ("arith", "31", "So she has \\boxed{13} cards.", False),
]


# The model often boxes the whole computation: a person grades the single number it ends in.
EQUATION_CASES = [
    ("arith", "11", "9 + 2 is eleven, so \\boxed{9 + 2 = 11}."),
    ("arith", "11", "The total is $\\boxed{9+2=11}$"),
    ("arith", "-2", "\\boxed{5 - 7 = -2}"),
    ("arith", "35", "So \\boxed{5 \\times 7 = 35}."),
    ("arith", "1000", "\\boxed{999 + 1 = 1,000}"),
    ("aime24", "1000", "Hence $\\boxed{999 + 1 = 1,000}$."),
    ("math500", "1000", "There are $\\boxed{N = 1,000}$ ways."),
    ("math500", "12345", "So $\\boxed{x = 12,345}$."),
]


@pytest.mark.parametrize(("task", "gold", "output"), EQUATION_CASES)
def test_boxed_equation_is_graded_by_its_right_hand_side(task: str, gold: str, output: str) -> None:
    t = get_task(task)
    assert t.grade(gold, t.extract(output)) is True


@pytest.mark.parametrize(
    ("task", "gold", "output"),
    [
        ("arith", "11", "\\boxed{9 + 2 = 12}"),  # the right-hand side is what counts, and it is wrong
        ("arith", "11", "\\boxed{11 = 9 + 2}"),  # the right-hand side is not a single number
        ("arith", "4", "\\boxed{x^2 = 4 + 0}"),
        ("aime24", "12", "\\boxed{9 + 2 = 11}"),
        ("math500", "12", "\\boxed{9 + 2 = 11}"),
        ("math500", "5x - 7y + 11z + 4 = 0", "\\boxed{0}"),  # a gold equation is not reduced to its 0
        ("math500", "1000", "\\boxed{x \\leq 1,000}"),
    ],
)
def test_equation_rule_grades_only_the_single_number(task: str, gold: str, output: str) -> None:
    t = get_task(task)
    assert t.grade(gold, t.extract(output)) is False


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("9 + 2 = 11", "11"),
        ("$9+2=11$", "11"),
        ("5 - 7 = -2", "-2"),
        ("1/2 = 0.5", "0.5"),
        ("999 + 1 = 1,000", "1000"),
        ("x = 1{,}000", "1000"),
        ("9 + 2 &= 11.", "11"),
        ("a = b = 7", "7"),
        ("11 = 9 + 2", None),
        ("x <= 5", None),
        ("x >= 5", None),
        ("x == 5", None),
        ("= 11", None),
        ("x = 1,2", None),
        ("11", None),
    ],
)
def test_equation_value(answer: str, value: str | None) -> None:
    assert equation_value(answer) == value


@pytest.mark.parametrize(("task", "gold", "output", "expected"), CASES)
def test_grade_realistic_output(task: str, gold: str, output: str, expected: bool) -> None:
    t = get_task(task)
    assert t.grade(gold, t.extract(output)) is expected


def test_enough_cases_with_negatives() -> None:
    assert len(CASES) >= 40
    assert sum(1 for *_, expected in CASES if not expected) >= 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\fbox{x{y}z}", "x{y}z"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not nest
        ("\\boxed 5$ done", "5"),
        ("reasoning... Final answer: \\boxed{42", "42"),  # unclosed final box (forced answer cut off)
        ("\\boxed{7} Final answer: \\boxed{", "7"),  # empty unclosed final box: the earlier one stands
        ("\\boxed{7} and \\boxed{}", "7"),
        ("no box here", None),
        ("\\boxed{", None),
        ("\\boxedtext{3}", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B)", "B"),
        ("Answer: C", "C"),
        ("\\boxed{D}", "D"),
        ("**Final Answer:** B", "B"),
        ("(A) is correct", "A"),
        ("Option D is the correct answer.", "D"),
        ("the correct answer is: **C**.", "C"),
        ("First I thought the answer is A, but the answer is B", "B"),
        ("(C).", "C"),
        ("Answer: A simple argument shows", None),
        ("The answer is B because the lifetime is shorter.", "B"),
        ("Answer: C Because of symmetry.", "C"),
        ("The answer is (A) since it is larger.", "A"),
        ("a b c d", None),
        ("", None),
    ],
)
def test_extract_letter(text: str, expected: str | None) -> None:
    assert extract_letter(text) == expected


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        ("\\frac12", "0.5", True),
        ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
        ("\\frac{1}{2}", "$\\frac{1}{2}$", True),
        ("\\frac{1}{2}", "\\boxed{\\tfrac12}", True),
        ("3", "4", False),
        ("", "4", False),
        ("2^{2^{2^{100}}}", "5", False),  # sympy would never finish: the size guard answers
    ],
)
def test_math_equal_bare_answers(gold: str, pred: str, expected: bool) -> None:
    assert math_equal(gold, pred) is expected


def test_math_equal_works_outside_the_main_thread() -> None:
    results: list[bool] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.extend([math_equal("\\frac{3}{8}", "0.375"), math_equal("3^{2^{200}}", "7")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors
    assert results == [True, False]


def test_as_integer_and_normalize() -> None:
    assert [as_integer(s) for s in ["025", "$25$", "25.0", "1,000", "1,2", "2.5", "-3", "x"]] == [
        25, 25, 25, 1000, None, None, -3, None
    ]
    assert normalize_answer("$\\left( 3, \\dfrac{\\pi}{2} \\right)$") == "(3,\\frac{\\pi}{2})"
