"""Wide runs for the accuracy surface (answers forced at checkpoints) on the real default model."""

from __future__ import annotations

import json

import pytest

from latts.errors import LattsError
from latts.config import Plan
from latts.eval.surface_run import run_wide, surface_from_records, wide_run
from latts.tts.solver import Solver
from latts.tasks import get_task
from test_cli import assert_one_line_error, run_latts


@pytest.fixture(scope="module")
def solver(engine) -> Solver:
    return Solver(engine, "arith")


def test_greedy_wide_run_answers_like_direct_runs(solver) -> None:
    """Greedy: every branch is the same, and its answer at budget L is the answer of a direct run with L."""
    task = solver.task
    problems = task.load(limit=2)
    run = wide_run(branches=3, thinks=(6, 24), temperature=0.0, answer_tokens=8)
    records = [run_wide(solver, p, run, seed=0) for p in problems]
    for problem, record in zip(problems, records):
        assert set(record["answers"]) == {"6", "24"}
        lengths = record["think_tokens"]  # None: the largest budget cut the branch
        assert len(lengths) == 3 and all(t is None or 0 < t < 24 for t in lengths)
        for L in (6, 24):
            col = record["answers"][str(L)]
            assert len(col) == 3 and len(set(col)) == 1  # greedy: identical branches
            direct = solver.solve(problem, Plan(branches=1, max_think=L, temperature=0.0, answer_tokens=8,
                                                early_stop=False))
            assert col[0] == direct.answer, (L, col, direct.answer)
            assert record["correct"][str(L)] == [task.grade(problem.gold, a) if a else False for a in col]
    estimates = surface_from_records(records, task, [1, 2, 3])
    assert [(e.branches, e.think) for e in estimates] == [(b, L) for L in (6, 24) for b in (1, 2, 3)]
    for e in estimates:  # identical branches: voting changes nothing, accuracy = share of problems right
        share = sum(r["correct"][str(e.think)][0] for r in records) / len(records)
        assert e.accuracy == pytest.approx(share) and e.low <= e.accuracy <= e.high


def test_surface_needs_surface_records() -> None:
    with pytest.raises(LattsError, match="no surface records"):
        surface_from_records([{"kind": "eval"}], get_task("arith"), [1])
    with pytest.raises(LattsError, match="distinct"):
        wide_run(4, (8, 8))


def test_cli_surface_writes_records_and_prints_the_surface(tmp_path) -> None:
    out = tmp_path / "surface.jsonl"
    proc = run_latts("eval", "--surface", "--task", "arith", "--limit", "2", "-B", "1,2,4", "--max-think", "8,16",
                     "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["kind"] == "surface" for r in records)
    assert all(len(r["answers"]["8"]) == 4 and len(r["answers"]["16"]) == 4 for r in records)
    assert "accuracy surface" in proc.stdout and proc.stdout.count("%") >= 6 * 3
    again = run_latts("eval", "--surface", "--task", "arith", "--limit", "2", "-B", "1,2,4", "--max-think", "8,16",
                      "--out", str(out), timeout=600)
    assert again.returncode == 0 and len(out.read_text().splitlines()) == 2  # resumed: nothing re-run


def test_cli_surface_refuses_speculation() -> None:
    proc = run_latts("eval", "--surface", "--task", "arith", "--gamma", "2")
    assert_one_line_error(proc, "--surface", "--gamma")
