"""MATH-500: 500 competition problems (the PRM800K test split), shipped in ``latts/data/math500.jsonl``."""

from __future__ import annotations

from typing import Any

from latts.tasks.base import MathTask, Problem


class Math500Task(MathTask):
    """MATH-500 with its subject and difficulty level (1-5) kept in ``Problem.meta``."""

    name = "math500"
    filename = "math500.jsonl"

    def _problem(self, record: dict[str, Any], source: Any, lineno: int) -> Problem:
        """A MATH record (``id, problem, answer, subject, level``) as a Problem."""
        base = super()._problem(record, source, lineno)
        meta = {key: record[key] for key in ("subject", "level") if key in record}
        return Problem(base.id, base.question, base.gold, meta)


TASK = Math500Task()
