"""``latts grade``, in a subprocess: one JSON object per pair, one-line errors, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def grade(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m latts.cli grade ARGS`` with uncoloured output."""
    drop = ("FORCE_COLOR", "TTY_COMPATIBLE", "CLICOLOR_FORCE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "latts.cli", "grade", *args],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line of a failed run (exit code 2, nothing on stdout, no traceback)."""
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "extracted", "correct"),
    [
        (["\\frac12", "0.5"], "0.5", True),
        (["\\frac12", "$\\dfrac{1}{2}$"], "$\\dfrac{1}{2}$", True),
        (["\\frac12", "We find \\boxed{\\frac{1}{3}}."], "\\frac{1}{3}", False),
        (["025", "so m+n = \\boxed{25}", "--task", "aime24"], "25", True),
        (["B", "The answer is (B).", "--task", "gpqa_diamond"], "B", True),
        (["B", "(C)", "--task", "gpqa_diamond"], "(C)", False),
        (["31", "She has 31 cards.\nThe answer is 31.", "--task", "arith"], "31", True),
        (["7", "I give up.\nNo idea."], None, False),
        # a boxed (or typed) equation is graded by the single number it ends in
        (["11", "9 + 2 = 11", "--task", "arith"], "9 + 2 = 11", True),
        (["11", "So \\boxed{9 + 2 = 11}.", "--task", "arith"], "11", True),
        (["12", "So \\boxed{9 + 2 = 11}.", "--task", "arith"], "11", False),
        (["1000", "\\boxed{999 + 1 = 1,000}", "--task", "aime25"], "999 + 1 = 1,000", True),
        (["1000", "There are $\\boxed{N = 1,000}$ ways."], "N = 1,000", True),
    ],
)
def test_grade_one_pair(args: list[str], extracted: str | None, correct: bool) -> None:
    proc = grade(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    assert json.loads(line) == {"gold": args[0], "pred": args[1], "extracted": extracted, "correct": correct}


def test_grade_file(tmp_path: Path) -> None:
    pairs = [
        {"gold": "\\frac{\\sqrt{3}}{2}", "pred": "\\boxed{\\frac{\\sqrt3}{2}}"},
        {"gold": "70", "pred": "070", "task": "aime25"},
        {"gold": "A", "pred": "Answer: C", "task": "gpqa_diamond"},
        {"gold": 12, "pred": "12"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    proc = grade("--file", str(path))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["correct"] for r in results] == [True, True, False, True]
    assert [r["extracted"] for r in results] == ["\\frac{\\sqrt3}{2}", "070", "C", "12"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"gold": "1", "pred": "1"}\n{"gold": "2", "pred": \n', "pairs.jsonl:2: bad JSON"),
        ('{"gold": "1", "pred": "1"}\n\n{"gold": "2"}\n', "pairs.jsonl:3: missing field 'pred'"),
        ('{"gold": "1", "pred": "1", "task": "gsm8k"}\n', "pairs.jsonl:1: unknown task 'gsm8k'"),
    ],
)
def test_grade_file_malformed_line(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(content, encoding="utf-8")
    assert words in one_line_error(grade("--file", str(path)))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["1", "1", "--task", "gsm8k"], "unknown task 'gsm8k'"),
        (["1"], "give GOLD and PRED"),
        (["1", "2", "--file", "x.jsonl"], "not both"),
        (["--file", "/nonexistent/pairs.jsonl"], "cannot read /nonexistent/pairs.jsonl"),
    ],
)
def test_grade_usage_errors(args: list[str], words: str) -> None:
    assert words in one_line_error(grade(*args))
