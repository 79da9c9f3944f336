"""Plans from a latency model, an accuracy surface and acceptance rates: synthetic inputs, known answers."""

from __future__ import annotations

import pytest

from latts.errors import LattsError
from latts.latency.model import LatencyModel
from latts.config import Plan, default_plan
from latts.planning import Acceptance, DrafterAcceptance, Planner
from latts.latency.optimizer import best_plan
from latts.latency.plans import choose_plan, load_frontier, save_plans
from latts.eval.surface import Estimate
from latts.provenance import MeasuredWith

# 10 ms per step whatever B and k; prefill and answer free: a run costs rounds x 10 ms
FLAT = LatencyModel(overhead=0.010, w_token=0.0, w_attn=0.0, w_row=0.0, prefill_base=0.0, prefill_per_token=0.0)
# accuracy grows with B and with L
SURFACE = [Estimate(b, L, acc, acc - 0.05, acc + 0.05)
           for (b, L), acc in {(1, 100): 0.30, (4, 100): 0.45, (1, 400): 0.40, (4, 400): 0.60}.items()]
HERE = MeasuredWith("native-0123456789ab", "bfloat16 q4+q8", "Test CPU", 2, "2.13.0+cpu")  # what measured them


def _planner(alphas: dict[int, tuple[float, ...]]) -> Planner:
    """A planner whose only drafter is the n-gram one, with ``alphas`` at every batch size."""
    return Planner(FLAT, SURFACE, {"ngram": (alphas,)}, prompt_len=50, answer_tokens=0, answer_prompt_tokens=0)


def test_latency_uses_the_acceptance_of_each_gamma() -> None:
    p = _planner({3: (1.0, 4.0)})
    assert p.predict_latency(4, 0, 400) == pytest.approx(4.0)  # 400 rounds of 10 ms
    assert p.predict_latency(4, 3, 400) == pytest.approx(1.0)  # α = 1: 4 tokens a round
    # a drafter that often proposes fewer than γ tokens gains less per round: the measured rate rules
    assert _planner({3: (1.0, 2.0)}).predict_latency(4, 3, 400) == pytest.approx(2.0)


def test_wide_batches_use_their_own_acceptance() -> None:
    # past NGramDrafter.SMALL_BATCH branches the drafter proposes after confident matches only: other numbers
    p = Planner(FLAT, SURFACE, {"ngram": DrafterAcceptance({3: (1.0, 4.0)}, {3: (1.0, 2.0)})}, prompt_len=50,
                answer_tokens=0, answer_prompt_tokens=0)
    assert p.acceptance(3, 3).tokens_per_round == 4.0 and p.acceptance(4, 3).tokens_per_round == 2.0
    assert p.predict_latency(3, 3, 400) == pytest.approx(1.0)  # 100 rounds of 10 ms
    assert p.predict_latency(4, 3, 400) == pytest.approx(2.0)  # 200 rounds
    assert p.acceptance(4, 2) == (0.0, 1.0, 1.0)  # γ not measured: plain decoding's one token a round
    assert _planner({3: (1.0, 4.0)}).predict_latency(4, 3, 400) == pytest.approx(1.0)  # no wide table


def test_latency_counts_the_width_of_the_verifies() -> None:
    # 10 ms per step plus 1 ms per token in the forward: a row offered drafts half the time verifies
    # 1 + 3·0.5 tokens per row on average, whatever the batch (the verify computes proposed positions only)
    per_token = LatencyModel(overhead=0.010, w_token=0.001, w_attn=0.0, w_row=0.0, prefill_base=0.0,
                             prefill_per_token=0.0)
    p = Planner(per_token, SURFACE, {"ngram": ({3: Acceptance(1.0, 2.0, 0.5)},)}, prompt_len=50, answer_tokens=0,
                answer_prompt_tokens=0)
    assert p.predict_latency(1, 3, 400) == pytest.approx(200 * (0.010 + 0.001 * 2.5))
    assert p.predict_latency(2, 3, 400) == pytest.approx(200 * (0.010 + 0.001 * 2 * 2.5))
    full = Planner(per_token, SURFACE, {"ngram": ({3: (1.0, 2.0)},)}, prompt_len=50, answer_tokens=0,
                   answer_prompt_tokens=0)
    assert full.predict_latency(1, 3, 400) == pytest.approx(200 * (0.010 + 0.001 * 4))  # no rate: all γ offered


def test_recommend_is_eq1_with_speculation_buying_time() -> None:
    without = _planner({}).recommend([1.5, 5.0, 0.5])
    assert [(r.best.plan.branches, r.best.plan.gamma, r.best.plan.max_think) for r in without[:2]] == [(4, 0, 100), (4, 0, 400)]
    assert without[2].best is None  # nothing fits in 0.5 s
    assert (without[0].low, without[0].high) == pytest.approx((0.40, 0.50))
    fast = _planner({3: (1.0, 4.0)}).recommend([1.5])[0].best
    assert (fast.plan.branches, fast.plan.gamma, fast.plan.max_think, fast.latency_s) == (4, 3, 400, pytest.approx(1.0))


def test_speculation_must_be_predicted_faster_than_the_models_error() -> None:
    # γ=1 at α 0.1 gains 1.1 tokens a round: 9% faster, inside the 10% margin -> plain decoding is kept
    small = _planner({1: (0.1, 1.1)})
    assert {c.plan.gamma for c in small.candidates()} == {0}
    assert small.recommend([5.0])[0].best.plan.gamma == 0
    # the same with no margin, or a gain well past it, picks speculation
    assert {c.plan.gamma for c in Planner(FLAT, SURFACE, {"ngram": ({1: (0.1, 1.1)},)}, prompt_len=50, answer_tokens=0,
                                     answer_prompt_tokens=0, spec_margin=0.0).candidates()} == {0, 1}
    assert _planner({1: (0.5, 1.5)}).recommend([5.0])[0].best.plan.gamma == 1


def test_each_plan_speculates_with_the_drafter_that_pays_most_at_its_batch() -> None:
    # the group drafter gains 4 tokens a round only in wide batches (other branches to draft from), the
    # n-gram drafter 2 at any batch: B=4 plans draft from the group, a B=1 plan from the n-grams
    p = Planner(FLAT, SURFACE, {"ngram": ({3: (0.5, 2.0)},),
                                "group": DrafterAcceptance({3: (0.1, 1.2)}, {3: (1.0, 4.0)})},
                prompt_len=50, answer_tokens=0, answer_prompt_tokens=0)
    assert p.predict_latency(4, 3, 400, "group") == pytest.approx(1.0)
    assert p.predict_latency(1, 3, 400, "group") == pytest.approx(400 / 1.2 * 0.010)
    wide = p.recommend([1.5])[0].best.plan
    assert (wide.branches, wide.gamma, wide.drafter, wide.max_think) == (4, 3, "group", 400)
    narrow = min((c for c in p.candidates() if c.plan.branches == 1 and c.plan.max_think == 400),
                 key=lambda c: c.latency_s).plan
    assert (narrow.gamma, narrow.drafter) == (3, "ngram")
    assert p.acceptance(4, 3, "model:x") == (0.0, 1.0, 1.0)  # a drafter never measured gains nothing


def test_saved_plans_name_their_drafter_policy_and_pruning(tmp_path) -> None:
    """The plans file records how a plan speculates and prunes, and solve/serve run it that way."""
    import json

    p = Planner(FLAT, SURFACE, {"group": ({3: (1.0, 4.0)},)}, prompt_len=50, answer_tokens=0, answer_prompt_tokens=0)
    path = tmp_path / "plans.json"
    save_plans(p, path, "m", "arith", HERE)
    doc = json.loads(path.read_text())
    assert doc["acceptance"]["group"]["small"]["3"]["tokens_per_round"] == 4.0 and doc["acceptance"]["group"]["wide"] is None
    saved = {(c["branches"], c["gamma"], c["think"]): c for c in doc["frontier"]}
    assert saved[(4, 3, 400)] | {"accuracy": 0, "latency_s": 0} == {
        "branches": 4, "gamma": 3, "think": 400, "drafter": "group", "gamma_policy": "cost", "prune": 0.0,
        "accuracy": 0, "latency_s": 0}
    plan, chosen = choose_plan(2.0, load_frontier(path, HERE), base=Plan(drafter="ngram", gamma_policy="fixed"))
    assert (plan.gamma, plan.drafter, plan.gamma_policy, plan.prune) == (3, "group", "cost", 0.0)
    # the caller's own choice of drafter still wins
    assert choose_plan(2.0, load_frontier(path, HERE), {"drafter": "ngram"})[0].drafter == "ngram"
    # a file written before plans named these runs as those plans did: n-gram drafts, cost policy, no pruning
    for c in doc["frontier"]:
        for key in ("drafter", "gamma_policy", "prune"):
            del c[key]
    path.write_text(json.dumps(doc))
    old = {(c.plan.branches, c.plan.gamma): c.plan for c in load_frontier(path, HERE)}[(4, 3)]
    assert (old.drafter, old.gamma_policy, old.prune) == ("ngram", "cost", 0.0)
    doc["frontier"][0]["gamma_policy"] = "sometimes"
    path.write_text(json.dumps(doc))
    with pytest.raises(LattsError, match="not a latts plans file.*sometimes"):
        load_frontier(path, HERE)


def test_frontier_and_saved_plans_round_trip(tmp_path) -> None:
    p = _planner({3: (1.0, 4.0)})
    front = p.frontier()
    assert [(c.accuracy, c.latency_s) for c in front] == [(0.45, pytest.approx(0.25)), (0.60, pytest.approx(1.0))]
    path = tmp_path / "plans" / "m--arith.json"
    save_plans(p, path, "m", "arith", HERE)
    saved = load_frontier(path, HERE)
    got = best_plan(saved, 2.0)
    assert (got.plan.branches, got.plan.gamma, got.plan.max_think) == (4, 3, 400)
    assert best_plan(saved, 0.5).plan.max_think == 100
    assert best_plan(saved, 0.1) is None
    assert load_frontier(tmp_path / "none.json", HERE) is None
    path.write_text("{not json")
    with pytest.raises(LattsError, match="not a latts plans file"):
        load_frontier(path, HERE)


def test_choose_plan_follows_the_frontier_unless_told_otherwise(tmp_path) -> None:
    """One rule for solve and serve: the saved plan sets B, γ, L for a deadline unless the caller set one of them."""
    p = _planner({3: (1.0, 4.0)})
    path = tmp_path / "plans.json"
    save_plans(p, path, "m", "arith", HERE)
    reads = []

    def saved() -> list:  # what solve passes: the plans file, read only when a saved plan is wanted
        reads.append(path)
        return load_frontier(path, HERE)

    plan, chosen = choose_plan(2.0, saved, {"temperature": 0.2, "seed": 5})
    assert (plan.branches, plan.gamma, plan.max_think) == (4, 3, 400) and chosen.latency_s == pytest.approx(1.0)
    assert (plan.temperature, plan.seed) == (0.2, 5)  # overrides that leave the shape alone still apply
    from_list, _ = choose_plan(2.0, p.frontier(), {"temperature": 0.2, "seed": 5})
    assert from_list == plan  # a server passes the frontier it read once
    # the caller set B (γ, L unset): no saved plan, the default's L and γ
    assert len(reads) == 1
    plan, chosen = choose_plan(2.0, saved, {"branches": 2, "gamma": None})
    assert chosen is None and plan == Plan(branches=2, max_think=default_plan(2.0).max_think)
    # nothing fits, no deadline, or no plans file: the base plan with the overrides
    assert len(reads) == 1  # B was set: the plans were not read
    assert choose_plan(0.1, saved)[1] is None and choose_plan(0.1, saved)[0] == default_plan(0.1)
    assert choose_plan(None, saved)[0] == default_plan(None)
    base = Plan(branches=3, gamma=2)
    assert choose_plan(2.0, lambda: None, {"seed": 1}, base) == (Plan(branches=3, gamma=2, seed=1), None)
    with pytest.raises(LattsError, match="branches must be >= 1"):
        choose_plan(2.0, None, {"branches": 0})


def test_cli_optimize_validates_and_solve_uses_the_saved_plan(tmp_path) -> None:
    """Real model, small sizes: profile -> wide run -> α -> plans -> validation; then solve picks the plan."""
    import json

    from test_cli import run_latts

    prof = tmp_path / "profile.json"
    proc = run_latts("profile", "-B", "1,2", "--k", "1,3", "--contexts", "64,128", "--out", str(prof), timeout=600)
    assert proc.returncode == 0, proc.stderr
    plans, runs = tmp_path / "plans.json", tmp_path / "validate.jsonl"
    proc = run_latts("optimize", "--task", "arith", "--deadline", "0.001,60", "--profile", str(prof),
                     "--surface", str(tmp_path / "surface.jsonl"), "--surface-problems", "3", "--max-think", "4,8",
                     "-B", "1,2", "--gamma", "0,2", "--validate", "2", "--validate-out", str(runs),
                     "--plans", str(plans), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "no plan is predicted to fit 0.001 s" in proc.stdout  # nothing runs in a millisecond
    doc = json.loads(plans.read_text())
    assert doc["task"] == "arith" and set(doc["acceptance"]) == {"ngram", "group"}  # both drafters by default
    for tables in doc["acceptance"].values():  # one branch and a wide batch, γ = 2
        for acc in (tables["small"]["2"], tables["wide"]["2"]):
            assert 0 <= acc["alpha"] <= 1 and 0 <= acc["proposal_rate"] <= 1 and 1 <= acc["tokens_per_round"] <= 3
    frontier = doc["frontier"]
    assert frontier and all(c["branches"] in (1, 2) and c["gamma"] in (0, 2) and c["think"] in (4, 8)
                            and c["drafter"] in ("ngram", "group") and c["gamma_policy"] == "cost"
                            and c["prune"] == 0.0 for c in frontier)
    assert [c["latency_s"] for c in frontier] == sorted(c["latency_s"] for c in frontier)
    assert doc["measured_with"]["engine"].startswith("native-") or doc["measured_with"]["engine"] == "torch-ops"
    best = best_plan(load_frontier(plans, MeasuredWith.from_dict(doc["measured_with"])), 60)
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(records) == 2 and all(r["source"] == "optimizer" for r in records)  # one plan x 2 problems
    assert {(r["config"]["B"], r["config"]["gamma"], r["config"]["drafter"], r["config"]["max_think"])
            for r in records} == {(best.plan.branches, best.plan.gamma, best.plan.drafter, best.plan.max_think)}
    proc = run_latts("solve", "What is 2 + 3? Answer with just the number.", "--task", "arith", "--deadline", "60",
                     "--plans", str(plans), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["plan"]
    assert (plan["branches"], plan["gamma"], plan["drafter"], plan["max_think"]) == (
        best.plan.branches, best.plan.gamma, best.plan.drafter, best.plan.max_think)


def test_expected_thinking_from_wide_runs() -> None:
    """Branches that stop by themselves shorten the run: order statistics over B-subsets, checked by hand."""
    from itertools import combinations

    from latts.eval.surface_run import expected_thinking

    records = [{"think_tokens": [2, 4, None, 8]}, {"think_tokens": [1, 1, 1, 1]}]
    steps, forced = expected_thinking(records[:1], 2, 6)  # lengths capped at L: [2, 4, 6, 6]
    assert steps == pytest.approx(sum(max(p) for p in combinations([2, 4, 6, 6], 2)) / 6)  # 34/6
    assert forced == pytest.approx(5 / 6)  # only the pair (2, 4) finishes before L
    assert expected_thinking(records[:1], 4, 6) == (pytest.approx(6.0), pytest.approx(1.0))
    assert expected_thinking(records, 1, 6) == (pytest.approx((4.5 + 1.0) / 2), pytest.approx((0.5 + 0.0) / 2))
    assert expected_thinking([], 2, 6) == (6.0, 1.0)  # no wide runs: the whole budget, always forced
    p = Planner(FLAT, SURFACE, {}, prompt_len=50, answer_tokens=0, answer_prompt_tokens=0,
                thinking=lambda b, L: expected_thinking(records[:1], b, L))
    assert p.predict_latency(2, 0, 6) == pytest.approx(34 / 6 * 0.010)
