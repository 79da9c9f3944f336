"""The evaluation harness: records as they arrive, resume after SIGKILL, torn lines, summaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latts.config import Plan
from latts.errors import LattsError
from latts.eval.harness import Config, accuracy_difference, accuracy_interval, grid, read_records, summarize

EVAL = [sys.executable, "-m", "latts.cli", "eval", "--task", "arith", "--limit", "5", "--branches", "1,2",
        "--max-think", "24", "--seeds", "0,1", "--dtype", "float32"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path) -> None:
    out = tmp_path / "run.jsonl"
    cmd = EVAL + ["--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("eval wrote no records in 300 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = read_records(out)
    assert 3 <= len(partial) < 20, "killed mid-run"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    records = _lines(out)  # every line parses: no corrupt line
    keys = [(r["problem_id"], r["config_key"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) == 5 * 2 * 2
    assert {r["config"]["B"] for r in records} == {1, 2}
    # the records from before the kill were kept as they were, not redone
    assert records[: len(partial)] == partial
    for r in records:
        assert {"task", "problem_id", "config", "seed", "answer", "gold", "correct", "latency_s", "tokens",
                "votes", "early_stopped"} <= set(r)
        assert isinstance(r["correct"], bool)
    assert "accuracy" in done.stdout


def test_torn_last_line_is_cut_off(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    good = {"task": "arith", "problem_id": "p", "config_key": "k", "seed": 0}
    path.write_text(json.dumps(good) + "\n" + '{"task": "ari')
    assert read_records(path) == [good]
    assert path.read_text() == json.dumps(good) + "\n"


def test_corrupt_complete_line_is_an_error_naming_file_and_line(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(LattsError, match=r"r\.jsonl:2"):
        read_records(path)


def test_grid_and_summary() -> None:
    configs = grid([1, 4], [0, 2], [64], deadlines=[None, 5.0])
    assert len(configs) == 8
    assert len({c.key() for c in configs}) == 8
    c = Config(Plan(branches=4, gamma=0, drafter="ngram", min_think=0, max_think=64, temperature=0.7))
    recs = [
        {"config_key": c.key(), "config": c.to_dict(), "seed": s, "correct": ok, "latency_s": lat,
         "branch_correct": [ok, False]}
        for s, ok, lat in [(0, True, 1.0), (0, False, 3.0), (1, True, 2.0), (1, True, 2.0)]
    ]
    (row,) = summarize(recs)
    assert row.runs == 4
    assert row.accuracy == pytest.approx(0.75)  # seed 0: 1/2, seed 1: 2/2
    assert row.accuracy_std == pytest.approx(0.25)
    assert row.latency_s == pytest.approx(2.0)
    assert row.per_sample_accuracy == pytest.approx(3 / 8)


def _paired(outcomes_a: list[list[bool]], outcomes_b: list[list[bool]]) -> list[dict]:
    """Records of configurations a and b: outcomes_x[problem][seed]."""
    return [{"config_key": key, "problem_id": f"p{i}", "seed": s, "correct": c}
            for key, outcomes in (("a", outcomes_a), ("b", outcomes_b))
            for i, row in enumerate(outcomes) for s, c in enumerate(row)]


def test_accuracy_difference_separates_noise_from_a_real_shortfall() -> None:
    same = [[True, False, True]] * 12 + [[False, False, False]] * 12
    d = accuracy_difference(_paired(same, same), "a", "b")
    assert d.mean == 0 and d.p_worse == 1.0 and not d.worse() and d.problems == 24
    # four problems a third lower, the rest equal: an exact sign-flip test gives p = 1/16, not significant
    a = [[False, False, True]] * 4 + same[4:]
    d = accuracy_difference(_paired(a, same), "a", "b")
    assert d.mean == pytest.approx(-4 / 3 / 24)
    assert d.p_worse == pytest.approx(1 / 16, abs=0.01) and not d.worse()
    # twenty problems a whole point lower: p = 2^-20, worse
    a = [[False, False, False]] * 20 + same[20:]
    b = [[True, True, True]] * 20 + same[20:]
    d = accuracy_difference(_paired(a, b), "a", "b")
    assert d.worse() and d.p_worse < 0.001 and d.mean == pytest.approx(-20 / 24)
    # better is never worse
    assert not accuracy_difference(_paired(b, a), "a", "b").worse()


def test_accuracy_difference_needs_common_problems() -> None:
    recs = [{"config_key": "a", "problem_id": "p0", "seed": 0, "correct": True},
            {"config_key": "b", "problem_id": "p1", "seed": 0, "correct": True}]
    with pytest.raises(LattsError, match="no problem was run by both a and b"):
        accuracy_difference(recs, "a", "b")


def test_difference_intervals_cover_what_the_test_allows() -> None:
    """The interval is the sign-flip test inverted: zero inside exactly when the test does not reject."""
    same = [[True, False, True]] * 12 + [[False, False, False]] * 12
    # four problems a third lower: p = 1/8 two-sided, so zero is inside (here its edge: were the true
    # difference above zero, the twenty problems without one would all look lower), and so is the mean
    a = [[False, False, True]] * 4 + same[4:]
    d = accuracy_difference(_paired(a, same), "a", "b")
    assert d.low < d.mean < 0 == d.high and not d.gain()
    rev = accuracy_difference(_paired(same, a), "a", "b")  # the other way round: a gain within noise
    assert rev.low == 0 < rev.mean and not rev.gain()
    # twenty problems a whole point higher: far from zero, and not wider than the differences allow
    b = [[False, False, False]] * 20 + same[20:]
    up = accuracy_difference(_paired([[True, True, True]] * 20 + same[20:], b), "a", "b")
    assert up.gain() and 0.5 < up.low <= up.mean <= up.high <= 1.0
    # identical runs: nothing to shift
    zero = accuracy_difference(_paired(same, same), "a", "b")
    assert zero.low == pytest.approx(0, abs=1e-6) and zero.high == pytest.approx(0, abs=1e-6)
    # three problems cannot reject anything at 5%: the whole range
    tiny = accuracy_difference(_paired([[True]] * 3, [[False]] * 3), "a", "b")
    assert (tiny.low, tiny.high) == (-1.0, 1.0)


def test_accuracy_interval_resamples_problems() -> None:
    recs = _paired([[True, True, True]] * 10 + [[False, False, False]] * 10, [[True]] * 20)
    low, high = accuracy_interval(recs, "a")
    assert 0.25 < low < 0.5 < high < 0.75  # half the problems right: n = 20 problems, not 60 runs
    assert accuracy_interval(recs, "b") == (1.0, 1.0)
    with pytest.raises(LattsError, match="no records of c"):
        accuracy_interval(recs, "c")
