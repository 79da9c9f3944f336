"""``latts solve`` and ``latts eval`` from the command line (real subprocesses)."""

from __future__ import annotations

import json

import pytest

from test_cli import assert_one_line_error, run_latts


def test_solve_json_carries_the_solution() -> None:
    proc = run_latts("solve", "Tom has 3 apples and buys 5 more. How many apples does he have?", "-B", "4",
                     "--max-think", "64", "--task", "arith", "--deadline", "20", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"answer", "votes", "latency_s", "plan", "branches", "load_s"} <= set(doc)
    assert doc["plan"]["branches"] == 4 and doc["plan"]["max_think"] == 64
    assert len(doc["branches"]) == 4
    assert doc["deadline_s"] == 20
    tally = sum(c for _, c in doc["votes"]) + doc["abstained"]
    assert tally == 4
    if doc["votes"]:
        assert doc["answer"] == doc["votes"][0][0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["solve", "", "-B", "2"], ["empty question"]),
        (["solve", "What is 2+2?", "--deadline", "0"], ["deadline", "> 0"]),
        (["solve", "What is 2+2?", "--deadline", "-1"], ["deadline", "> 0"]),
        (["solve", "What is 2+2?", "--min-think", "50", "--max-think", "10"], ["min_think (50)", "max_think (10)"]),
        (["solve", "What is 2+2?", "--task", "nosuch"], ["nosuch"]),
        (["eval", "--task", "nosuch"], ["nosuch"]),
        (["eval", "--task", "arith", "--deadline", "0"], ["deadline", "> 0"]),
        (["eval", "--task", "arith", "--branches", "1,x"], ["--branches", "1,x"]),
        (["eval", "--task", "gpqa_diamond"], ["gpqa", "--data"]),
        (["eval", "--task", "arith", "--max-think", "8", "--min-think", "9"], ["min_think (9)"]),
    ],
)
def test_bad_input_is_one_line(args, words) -> None:
    assert_one_line_error(run_latts(*args), *words)


def test_eval_names_an_unreadable_or_malformed_dataset(tmp_path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert_one_line_error(run_latts("eval", "--task", "math500", "--data", str(missing)), "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"\n')
    stderr = assert_one_line_error(run_latts("eval", "--task", "math500", "--data", str(bad)), "bad.jsonl:2")
    assert "bad.jsonl:2" in stderr
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"problem": "1+1?"}\n')
    assert_one_line_error(run_latts("eval", "--task", "aime24", "--data", str(no_field)), "nofield.jsonl:1", "answer")


def test_eval_speculates_with_a_draft_model_losslessly(tmp_path, draft_folder) -> None:
    """``latts eval --drafter model:PATH`` drafts with that model; greedy, speculation changes no token."""
    out = tmp_path / "runs.jsonl"
    proc = run_latts("eval", "--task", "arith", "--limit", "2", "--branches", "1", "--gamma", "0,3",
                     "--max-think", "32", "--temperature", "0", "--dtype", "float32",
                     "--drafter", f"model:{draft_folder}", "--gamma-policy", "fixed", "--out", str(out),
                     timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = {(r["problem_id"], r["config"]["gamma"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert len(records) == 4 and {g for _, g in records} == {0, 3}
    for pid in {p for p, _ in records}:
        plain, spec = records[(pid, 0)], records[(pid, 3)]
        assert plain["spec"] is None
        assert spec["config"]["drafter"] == f"model:{draft_folder}"
        assert spec["spec"]["drafter"].startswith("model:") and spec["spec"]["gamma"] == 3
        assert spec["spec"]["proposed"] > 0  # a draft model proposes every round, unlike an n-gram without a match
        assert (spec["tokens"], spec["branch_answers"]) == (plain["tokens"], plain["branch_answers"])


def test_eval_refuses_a_draft_model_on_a_server() -> None:
    assert_one_line_error(run_latts("eval", "--drafter", "model:/x", "--backend", "openai",
                                    "--base-url", "http://127.0.0.1:1/v1"), "embedded engine")
