"""The benchmarks latts can run, one module each, behind one interface and one lookup."""

from __future__ import annotations

from latts.errors import LattsError
from latts.tasks.base import MathTask, Problem, Task

TASK_NAMES: tuple[str, ...] = ("math500", "aime24", "aime25", "gpqa_diamond", "arith")


def get_task(name: str) -> Task:
    """The task called ``name``; a LattsError naming it and listing the known tasks if there is none."""
    if name == "math500":
        from latts.tasks.math500 import TASK
    elif name == "aime24":
        from latts.tasks.aime import AIME24 as TASK
    elif name == "aime25":
        from latts.tasks.aime import AIME25 as TASK
    elif name == "gpqa_diamond":
        from latts.tasks.gpqa import TASK
    elif name == "arith":
        from latts.tasks.arith import TASK
    else:
        raise LattsError(f"unknown task '{name}': choose one of {', '.join(TASK_NAMES)}")
    return TASK


__all__ = ["MathTask", "Problem", "Task", "TASK_NAMES", "get_task"]
