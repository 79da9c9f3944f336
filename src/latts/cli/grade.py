"""``latts grade``: grade one (gold, prediction) pair, or every pair of a JSON Lines file, by a task's rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from latts.cli.console import print_json
from latts.cli.options import TaskOpt, one_line_errors
from latts.errors import LattsError

_COMPLETION_HINT = re.compile(r"\\boxed|\\fbox|answer|\n", re.IGNORECASE)
_MAX_BARE_ANSWER_CHARS = 60


@one_line_errors
def grade(
    gold: Annotated[Optional[str], typer.Argument(help="the gold answer (for gpqa_diamond: its letter)")] = None,
    pred: Annotated[Optional[str], typer.Argument(help="a predicted answer, or a whole completion")] = None,
    task: TaskOpt = "math500",
    file: Annotated[
        Optional[str], typer.Option("--file", help='JSON Lines of {"gold", "pred"[, "task"]}: one result a line')
    ] = None,
) -> None:
    """Grade a prediction against a gold answer with a task's grader; print one JSON object per pair."""
    from latts.tasks import get_task

    get_task(task)  # an unknown --task fails before anything else
    if file is not None:
        if gold is not None or pred is not None:
            raise LattsError("give either GOLD PRED or --file, not both")
        results = grade_file(file, task)
    elif gold is None or pred is None:
        raise LattsError("give GOLD and PRED, or --file PATH")
    else:
        results = [grade_pair(gold, pred, task)]
    for result in results:
        print_json(result)


def looks_like_completion(pred: str) -> bool:
    """True when ``pred`` reads like model output (a box, an "answer" phrase, several lines, or long text).

    Such a prediction goes through the task's extractor; anything else is taken as the bare answer.
    """
    return bool(_COMPLETION_HINT.search(pred)) or len(pred) > _MAX_BARE_ANSWER_CHARS


def grade_pair(gold: str, pred: str, task_name: str = "math500") -> dict[str, Any]:
    """``{"gold", "pred", "extracted", "correct"}`` for one pair, by ``task_name``'s rules."""
    from latts.tasks import get_task

    task = get_task(task_name)
    extracted = task.extract(pred) if looks_like_completion(pred) else pred.strip()
    return {"gold": gold, "pred": pred, "extracted": extracted, "correct": task.grade(gold, extracted)}


def grade_file(path: str | Path, default_task: str = "math500") -> list[dict[str, Any]]:
    """The grade of every ``{"gold", "pred"[, "task"]}`` line of a JSON Lines file, in order.

    Every line is checked before any is graded, so a bad line (named as file:line) yields no partial output.
    """
    from latts.tasks import get_task
    from latts.tasks.base import read_jsonl

    source = Path(path)
    pairs = []
    for lineno, record in read_jsonl(source):
        for key in ("gold", "pred"):
            value = record.get(key)
            if key not in record:
                raise LattsError(f"{source}:{lineno}: missing field '{key}'")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise LattsError(f"{source}:{lineno}: field '{key}' must be a string or a number")
            record[key] = str(value)
        task_name = record.get("task", default_task)
        try:
            get_task(task_name if isinstance(task_name, str) else repr(task_name))
        except LattsError as exc:
            raise LattsError(f"{source}:{lineno}: {exc}") from None
        pairs.append((record["gold"], record["pred"], task_name))
    return [grade_pair(gold, pred, task_name) for gold, pred, task_name in pairs]
