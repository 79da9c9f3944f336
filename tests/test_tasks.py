"""Benchmarks load the right problems, deterministically; bad files fail with the file and line named."""

from __future__ import annotations

import ast
import json
import operator
import re
from pathlib import Path

import pytest

from latts.errors import LattsError
from latts.tasks import TASK_NAMES, Task, get_task
from latts.tasks.arith import DEFAULT_LEVEL, LEVELS, ArithTask
from latts.tasks.gpqa import LETTERS

SRC = Path(__file__).resolve().parents[1] / "src" / "latts"
# GPQA-Diamond is never shipped: these checks run on the project's shared data beside the checkout, when present
GPQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpqa_diamond.jsonl"
needs_gpqa = pytest.mark.skipif(not GPQA.is_file(), reason=f"{GPQA} not present (GPQA-Diamond is never shipped)")


@pytest.mark.parametrize(("name", "count"), [("math500", 500), ("aime24", 30), ("aime25", 30)])
def test_shipped_benchmarks_load_in_full(name: str, count: int) -> None:
    task = get_task(name)
    problems = task.load()
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.question and p.gold for p in problems)
    assert [p.id for p in task.load(limit=3)] == [p.id for p in problems[:3]]
    assert "\\boxed{}" in task.prompt(problems[0]) and problems[0].question in task.prompt(problems[0])


def test_math500_keeps_level_and_subject_and_aime_golds_are_integers() -> None:
    first = get_task("math500").load(limit=1)[0]
    assert first.id == "test/precalculus/807.json"
    assert first.meta == {"subject": "Precalculus", "level": 2}
    for name in ("aime24", "aime25"):
        assert all(0 <= int(p.gold) <= 999 for p in get_task(name).load())


def test_every_task_follows_the_protocol() -> None:
    assert TASK_NAMES == ("math500", "aime24", "aime25", "gpqa_diamond", "arith")
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.answer_prompt.endswith("\\boxed{")


def test_unknown_task_names_the_known_ones() -> None:
    known = "math500, aime24, aime25, gpqa_diamond, arith"
    with pytest.raises(LattsError, match=rf"unknown task 'gsm8k'.*{known}$"):
        get_task("gsm8k")


@needs_gpqa
def test_gpqa_shuffle_is_deterministic_and_gold_points_at_the_answer() -> None:
    task = get_task("gpqa_diamond")
    rows = {r["id"]: r for r in map(json.loads, GPQA.read_text(encoding="utf-8").splitlines())}
    problems = task.load(data=GPQA)
    assert len(problems) == 198
    assert task.load(data=GPQA) == problems
    for p in problems:
        assert p.meta["choices"][LETTERS.index(p.gold)] == rows[p.id]["answer"].strip()
        assert sorted(p.meta["choices"]) == sorted(c.strip() for c in rows[p.id]["choices"])
        assert f"({p.gold}) {rows[p.id]['answer'].strip()}" in p.question
    reseeded = task.load(data=GPQA, seed=1)
    assert [p.gold for p in reseeded] != [p.gold for p in problems]
    assert {p.gold for p in problems} == set(LETTERS)
    assert len(task.load(limit=5, data=GPQA)) == 5


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_gpqa_reads_simple_evals_csv(tmp_path: Path) -> None:
    rows = [
        {"Question": f"Which number is {i}?", "Correct Answer": str(i), "Incorrect Answer 1": "x",
         "Incorrect Answer 2": "y", "Incorrect Answer 3": "y", "Record ID": f"rec{i}"}
        for i in range(12)
    ]
    rows[3]["Question"] = "A question\nover two lines, with \"quotes\", commas?"
    path = tmp_path / "gpqa.csv"
    _write_csv(path, rows)
    problems = get_task("gpqa_diamond").load(data=path)
    assert [p.id for p in problems] == [f"rec{i}" for i in range(12)]
    for i, p in enumerate(problems):
        assert p.meta["choices"][LETTERS.index(p.gold)] == str(i)  # despite the duplicate "y"
    assert problems[3].question.startswith("A question\nover two lines")
    assert get_task("gpqa_diamond").load(data=path) == problems
    rows[3]["Incorrect Answer 1"] = ""
    _write_csv(path, rows)
    with pytest.raises(LattsError, match=r"gpqa\.csv:5: empty 'Incorrect Answer 1'"):  # 2-line row at 5
        get_task("gpqa_diamond").load(data=path)
    rows[3]["Incorrect Answer 1"] = "z"
    rows[5]["Correct Answer"] = ""
    _write_csv(path, rows)
    # line 8: the header, rows 0-2, row 3 on two lines, row 4, then row 5
    with pytest.raises(LattsError, match=r"gpqa\.csv:8: empty 'Correct Answer'"):
        get_task("gpqa_diamond").load(data=path)


def test_gpqa_requires_a_data_path() -> None:
    with pytest.raises(LattsError, match=r"not shipped.*--data"):
        get_task("gpqa_diamond").load()


def test_no_gpqa_data_inside_the_package() -> None:
    files = [p for p in SRC.rglob("*") if p.is_file()]
    data_suffixes = {".jsonl", ".csv", ".json", ".parquet"}
    assert not [p for p in files if "gpqa" in p.name.lower() and p.suffix.lower() in data_suffixes]
    if GPQA is not None and GPQA.is_file():
        lines = GPQA.read_text(encoding="utf-8").splitlines()[:25]
        questions = [json.loads(line)["question"][:80] for line in lines]
        for path in files:
            text = path.read_bytes().decode("utf-8", errors="ignore")
            assert not any(q in text for q in questions), path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"problem": "1+1", "answer": "2"}', '{"problem": "2+2", "answer": '], r"bad\.jsonl:2: bad JSON"),
        (['{"problem": "1", "answer": 1}', "", '{"problem": "2"}'], r"bad\.jsonl:3: missing field 'answer'"),
        (['["not", "an", "object"]'], r"bad\.jsonl:1: expected a JSON object"),
        (['{"problem": 5, "answer": "2"}'], r"bad\.jsonl:1: field 'problem' has the wrong type"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LattsError, match=message):
        get_task("math500").load(data=path)


def test_malformed_gpqa_line_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    good = {"id": "r1", "question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "c"}
    bad = dict(good, answer="e")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(LattsError, match=r"g\.jsonl:2: the answer is not among the choices"):
        get_task("gpqa_diamond").load(data=path)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(LattsError, match=re.escape(f"cannot read {missing}")):
        get_task("aime24").load(data=missing)


def test_user_data_replaces_the_shipped_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "x1", "problem": "What is 6*7?", "answer": 42}\n', encoding="utf-8")
    (problem,) = get_task("aime25").load(data=path)
    assert (problem.id, problem.question, problem.gold) == ("x1", "What is 6*7?", "42")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST) -> float:
    """An arithmetic expression's value, by hand (no eval)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    assert isinstance(node, ast.BinOp)
    return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))


@pytest.mark.parametrize("level", LEVELS)
def test_arith_answers_recompute(level: int) -> None:
    problems = ArithTask(level).load(limit=50, seed=3)
    assert [p.id for p in problems[:2]] == [f"arith-L{level}-0000", f"arith-L{level}-0001"]
    for p in problems:
        expression = p.meta["expression"]
        value = _evaluate(ast.parse(expression, mode="eval"))
        assert value == int(p.gold) and int(p.gold) >= 0
        # the expression is the story: the same numbers, in the same order
        assert re.findall(r"\d+", expression) == re.findall(r"\d+", p.question)
        assert p.meta["level"] == level


def test_arith_is_deterministic_per_seed() -> None:
    task = get_task("arith")
    assert task.level == DEFAULT_LEVEL
    assert task.load(limit=20, seed=7) == task.load(limit=20, seed=7)
    assert task.load(limit=5, seed=7) == task.load(limit=20, seed=7)[:5]
    assert task.load(limit=20, seed=7) != task.load(limit=20, seed=8)
    assert len(task.load()) == 200
    steps = [len(ArithTask(level).load(limit=1)[0].question.split(". ")) for level in LEVELS]
    assert steps == sorted(steps)  # more steps at higher levels


def test_arith_rejects_bad_level_data_and_limit() -> None:
    with pytest.raises(LattsError, match="arith level"):
        ArithTask(9)
    with pytest.raises(LattsError, match="generated"):
        get_task("arith").load(data=Path("x.jsonl"))
    with pytest.raises(LattsError, match="limit"):
        get_task("arith").load(limit=-1)


def test_sampling_seeds_differ_per_problem_and_are_stable_across_processes() -> None:
    """Runs of different problems under one evaluation seed must not share their random numbers."""
    import subprocess
    import sys

    problems = get_task("arith").load(limit=50)
    seeds = [p.sampling_seed(0) for p in problems]
    assert len(set(seeds)) == len(problems)
    assert problems[0].sampling_seed(0) != problems[0].sampling_seed(1)
    assert all(0 <= s < 2**31 for s in seeds)
    code = "from latts.tasks import get_task; print(get_task('arith').load(limit=1)[0].sampling_seed(3))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": h}).stdout.strip() for h in ("1", "2")}
    assert outs == {str(problems[0].sampling_seed(3))}


@pytest.mark.parametrize("name", ["arith", "aime24"])
def test_boxed_sums_vote_with_the_number_they_end_in(name: str) -> None:
    """Branches that box the whole sum back the same answer as branches that box the number alone."""
    from latts.tts.voting import vote

    task = get_task(name)
    outputs = ["\\boxed{9 + 2 = 11}", "\\boxed{11}", "So \\boxed{4 + 7 = 11}.", "\\boxed{12}",
               "\\boxed{9 + 3 = 12}"]
    result = vote([task.extract(o) for o in outputs], task.same)
    assert [(task.grade("11", rep), weight) for rep, weight in result.counts] == [(True, 3.0), (False, 2.0)]
    assert task.same("9 + 2 = 11", "11") and task.same("11", "4 + 7 = 11")
    assert not task.same("9 + 2 = 11", "12")


@pytest.mark.parametrize(("name", "outputs", "winner"), [
    # four of eight arith branches boxed a letter or a sentence: they abstain, and 12 wins 3 to 1
    ("arith", ["\\boxed{12}", "\\boxed{A}", "So \\boxed{12 apples}.", "\\boxed{Ava has 23 cards, so Ava}",
               "\\boxed{\\text{12}}", "\\boxed{7}", "\\boxed{23 + 5}", "\\boxed{B}"], "12"),
    ("aime24", ["\\boxed{25}", "\\boxed{A}", "\\boxed{025}", "\\boxed{n}", "\\boxed{\\text{none}}"], "25"),
])
def test_answers_that_cannot_be_right_abstain(name: str, outputs: list[str], winner: str) -> None:
    """A number task counts a box without a number as an abstention, not as a vote for its text."""
    from latts.tasks.grading import as_integer
    from latts.tts.voting import vote

    task = get_task(name)
    answers = [task.extract(o) for o in outputs]
    result = vote(answers, task.same)
    assert result.abstained == sum(a is None for a in answers) == (4 if name == "arith" else 3)
    assert all(as_integer(rep) is not None for rep, _ in result.counts)  # only numbers vote
    assert task.same(result.answer, winner) and result.counts[0][1] == (3.0 if name == "arith" else 2.0)
