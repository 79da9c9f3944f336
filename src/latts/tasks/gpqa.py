"""GPQA-Diamond: 198 four-choice science questions, read from a file the user gives (never shipped).

GPQA's authors ask that its questions not be reposted in plain text, so latts carries no copy: pass
``--data PATH`` to a JSON Lines file (``id, question, choices, answer``) or to OpenAI simple-evals' CSV
(``Question, Correct Answer, Incorrect Answer 1..3, Record ID``). The choices are shuffled with a random
generator seeded by (seed, problem id), so the gold letter is the same on every run and machine.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from latts.config import ANSWER_PROMPT
from latts.errors import LattsError
from latts.tasks.grading import after_thinking, extract_letter
from latts.tasks.base import Problem, check_limit, read_jsonl, read_text, require

LETTERS = "ABCD"
INSTRUCTION = (
    "Please reason step by step, then give the letter of the correct choice within \\boxed{},"
    " e.g. \\boxed{A}."
)
CSV_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def shuffled_problem(pid: str, question: str, correct: str, incorrect: list[str], seed: int) -> Problem:
    """A Problem whose four choices are shuffled by ``random.Random(f"gpqa-{seed}-{pid}")``.

    The shuffle starts from (correct, *incorrect) and tracks the correct choice by position, so two equal
    wrong choices (two GPQA records have them) cannot confuse the gold letter.
    """
    order = list(range(4))
    random.Random(f"gpqa-{seed}-{pid}").shuffle(order)
    options = [correct, *incorrect]
    choices = [options[i] for i in order]
    gold = LETTERS[order.index(0)]
    lettered = "\n".join(f"({letter}) {choice}" for letter, choice in zip(LETTERS, choices))
    return Problem(pid, f"{question}\n\n{lettered}", gold, {"choices": choices, "answer": correct})


def _from_jsonl(source: Path, seed: int) -> list[Problem]:
    """Problems from JSON Lines rows ``{"id", "question", "choices": [4 strings], "answer"}``."""
    problems = []
    for lineno, record in read_jsonl(source):
        pid = str(require(record, "id", (str, int), source, lineno))
        question = require(record, "question", str, source, lineno)
        choices = require(record, "choices", list, source, lineno)
        answer = require(record, "answer", str, source, lineno)
        if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise LattsError(f"{source}:{lineno}: field 'choices' must be a list of 4 strings")
        if choices.count(answer) != 1:
            found = "is not" if answer not in choices else "appears more than once"
            raise LattsError(f"{source}:{lineno}: the answer {found} among the choices")
        incorrect = [c for c in choices if c != answer]
        wrong = [c.strip() for c in incorrect]
        problems.append(shuffled_problem(pid, question.strip(), answer.strip(), wrong, seed))
    return problems


def _from_csv(source: Path, seed: int) -> list[Problem]:
    """Problems from OpenAI simple-evals' ``gpqa_diamond.csv`` (one row per question, quoted fields)."""
    reader = csv.DictReader(io.StringIO(read_text(source), newline=""))
    missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise LattsError(f"{source}: not a GPQA CSV, missing column(s) {', '.join(missing)}")
    problems = []
    lineno = reader.line_num + 1  # where the next row starts (a quoted field may span several lines)
    try:
        for row in reader:
            values = [(row.get(column) or "").strip() for column in CSV_COLUMNS]
            if not all(values):
                empty = CSV_COLUMNS[values.index("")]
                raise LattsError(f"{source}:{lineno}: empty '{empty}'")
            pid = (row.get("Record ID") or "").strip() or f"gpqa-{len(problems) + 1}"
            problems.append(shuffled_problem(pid, values[0], values[1], values[2:], seed))
            lineno = reader.line_num + 1
    except csv.Error as exc:
        raise LattsError(f"{source}:{lineno}: bad CSV ({exc})") from None
    return problems


class GpqaDiamondTask:
    """GPQA-Diamond graded by letter: the model names one of (A)-(D), the gold is the shuffled correct one."""

    name = "gpqa_diamond"
    answer_prompt = ANSWER_PROMPT

    def load(self, limit: int | None = None, data: Path | None = None, seed: int = 0) -> list[Problem]:
        """The questions of ``data`` (required; ``.csv``: simple-evals CSV, else JSONL)."""
        check_limit(limit)
        if data is None:
            raise LattsError(
                "GPQA-Diamond is not shipped with latts (its authors ask not to repost it): pass --data PATH"
            )
        source = Path(data)
        problems = _from_csv(source, seed) if source.suffix.lower() == ".csv" else _from_jsonl(source, seed)
        return problems if limit is None else problems[:limit]

    def prompt(self, problem: Problem) -> str:
        """The question with its lettered choices, then the answer-with-a-boxed-letter instruction."""
        return f"{problem.question}\n\n{INSTRUCTION}"

    def extract(self, completion: str) -> str | None:
        """The letter the completion settles on after any thinking (see ``latts.tasks.grading.extract_letter``
        and ``after_thinking``), or None."""
        return extract_letter(after_thinking(completion))

    def grade(self, gold: str, pred: str | None) -> bool:
        """Letter equality (``"(B)"`` and ``"b"`` count as B); None is wrong."""
        return pred is not None and self.same(gold, pred)

    def same(self, a: str, b: str) -> bool:
        """Whether two answers name the same letter."""
        la, lb = _letter(a), _letter(b)
        return la is not None and la == lb


def _letter(answer: str) -> str | None:
    """The letter an extracted or user-typed answer names (case-insensitive for a lone letter)."""
    stripped = answer.strip()
    if len(stripped) == 1 and stripped.upper() in LETTERS:
        return stripped.upper()
    return extract_letter(stripped)


TASK = GpqaDiamondTask()
