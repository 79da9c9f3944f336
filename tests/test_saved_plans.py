"""The plan ``latts optimize`` saved is the plan that runs: ``latts solve`` and ``latts serve`` choose the same
one for the same deadline (B, γ, L, drafter, γ policy and pruning), and a user's explicit ``--drafter`` wins."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from latts.config import Plan
from latts.engine.loading.loader import DEFAULT_MODEL
from latts.latency.optimizer import Candidate
from servers import free_port, latts_cmd, running
from test_cli import run_latts

pytestmark = pytest.mark.slow

QUESTION = "What is 7 + 5? Answer with just the number."
DEADLINE = 20.0
# the most accurate plan predicted to fit DEADLINE: four branches speculating with the group drafter
GROUP_PLAN = Plan(branches=4, gamma=2, max_think=24, drafter="group", gamma_policy="fixed", prune=0.0)


@pytest.fixture(scope="module")
def plans(fast_model, tmp_path_factory) -> Path:
    """A plans file as ``latts optimize`` writes it, measured with this machine's engine build."""
    frontier = [Candidate(Plan(branches=1, gamma=0, max_think=16), 0.30, 0.4),
                Candidate(GROUP_PLAN, 0.55, 3.0),
                Candidate(Plan(branches=16, gamma=0, max_think=256), 0.60, 60.0)]  # too slow for DEADLINE
    path = tmp_path_factory.mktemp("plans") / "plans.json"
    path.write_text(json.dumps({"model": DEFAULT_MODEL, "task": "arith",
                                "measured_with": fast_model.measured_with().to_dict(),
                                "frontier": [c.to_dict() for c in frontier]}))
    return path


def _shape(plan: dict) -> tuple:
    return tuple(plan[k] for k in ("branches", "gamma", "max_think", "drafter", "gamma_policy", "prune"))


WANT = (4, 2, 24, "group", "fixed", 0.0)


def _solve(plans: Path, *extra: str) -> dict:
    proc = run_latts("solve", QUESTION, "--task", "arith", "--deadline", f"{DEADLINE:g}", "--plans", str(plans),
                     "--json", *extra, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_solve_runs_the_saved_plan_with_its_drafter(plans: Path) -> None:
    doc = _solve(plans)
    assert _shape(doc["plan"]) == WANT
    assert doc["spec"] is not None and doc["spec"]["drafter"] == "group"  # the drafts came from the group drafter


def test_an_explicit_drafter_still_wins(plans: Path) -> None:
    doc = _solve(plans, "--drafter", "ngram")
    assert _shape(doc["plan"]) == (4, 2, 24, "ngram", "fixed", 0.0)
    assert doc["spec"]["drafter"] == "ngram"


def test_serve_returns_the_plan_solve_runs(plans: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = latts_cmd("serve", "--port", str(port), "--task", "arith", "--plans", str(plans))
    with running(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", timeout_s=600):
        body = json.dumps({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": QUESTION}],
                           "latency_budget": DEADLINE}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            served = json.loads(r.read())
    assert _shape(served["latts"]["plan"]) == WANT == _shape(_solve(plans)["plan"])
