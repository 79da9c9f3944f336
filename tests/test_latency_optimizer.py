"""Latency model, accuracy surface and optimizer on synthetic inputs whose right answers are known."""

from __future__ import annotations

import random

import pytest

from latts.errors import LattsError
from latts.latency.model import (
    LatencyModel,
    PrefillSample,
    StepSample,
    expected_tokens_per_round,
    expected_verify_width,
)
from latts.latency.optimizer import Candidate, best_plan, candidates, pareto_frontier
from latts.eval.surface import estimate_surface, majority_class, vote_accuracy
from latts.tts.voting import answer_classes

TRUE = LatencyModel(overhead=0.020, w_token=0.0004, w_attn=0.00002, w_row=0.0003,
                    prefill_base=0.01, prefill_per_token=0.0002)


def _profile(model: LatencyModel, noise: float, seed: int = 0) -> list[StepSample]:
    rng = random.Random(seed)
    return [StepSample(b, k, c, model.step(b, k, c) * (1 + rng.uniform(-noise, noise)))
            for b in (1, 2, 4, 8, 16, 32) for k in (1, 2, 4) for c in (256, 1024, 2048)]


def test_fit_recovers_known_coefficients() -> None:
    fitted = LatencyModel.fit(_profile(TRUE, 0.0), [PrefillSample(p, TRUE.prefill(p)) for p in (64, 256, 1024)])
    for name in ("overhead", "w_token", "w_attn", "w_row", "prefill_base", "prefill_per_token"):
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name


def test_fit_with_noise_predicts_held_out_shapes() -> None:
    fitted = LatencyModel.fit(_profile(TRUE, 0.05))
    held_out = [StepSample(12, 4, 700, TRUE.step(12, 4, 700)), StepSample(3, 3, 1500, TRUE.step(3, 3, 1500)),
                StepSample(24, 1, 300, TRUE.step(24, 1, 300))]
    assert fitted.median_error(held_out) < 0.05
    assert all(getattr(fitted, f) >= 0 for f in ("overhead", "w_token", "w_attn", "w_row"))


def test_rows_own_tokens_get_their_own_rate() -> None:
    """Attention over each row's own tokens costs more per token than over the shared prompt: a profile with
    forwards over own tokens fits that rate, and a whole run's prediction charges its generated tokens at it
    (a profile without such forwards counts them as context, as before)."""
    true = LatencyModel(overhead=0.020, w_token=0.0004, w_attn=0.00002, w_row=0.0003, prefill_base=0.01,
                        prefill_per_token=0.0002, w_own=0.0001)
    steps = _profile(true, 0.0) + [StepSample(b, 1, 256, true.step(b, 1, 256, 256), own=256) for b in (1, 8, 32)]
    fitted = LatencyModel.fit(steps)
    assert fitted.w_own == pytest.approx(0.0001, rel=1e-6) and fitted.w_attn == pytest.approx(0.00002, rel=1e-6)
    assert true.step(16, 1, 256, own=512) - true.step(16, 1, 256) == pytest.approx(0.0001 * 16 * 512 / 1000)
    want = true.prefill(64) + 100 * true.step(4, 1, 64, own=50) + true.step(4, 8, 64, own=100) + \
        16 * true.step(4, 1, 64, own=100)
    assert true.predict(4, 0, 100, prompt_len=64) == pytest.approx(want)
    assert true.predict(4, 0, 100, prompt_len=64) > TRUE.predict(4, 0, 100, prompt_len=64)
    # without forwards over own tokens the fit leaves w_own at 0, and own tokens count as context
    assert LatencyModel.fit(_profile(TRUE, 0.0)).w_own == 0
    assert TRUE.step(4, 1, 64, own=50) == TRUE.step(4, 1, 114)


def test_fit_refuses_too_little_data() -> None:
    with pytest.raises(LattsError, match="at least 4"):
        LatencyModel.fit(_profile(TRUE, 0.0)[:3])


def test_expected_tokens_per_round() -> None:
    assert expected_tokens_per_round(0.0, 4) == 1.0
    assert expected_tokens_per_round(1.0, 4) == 5.0
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_round(0.3, 0) == 1.0


def test_run_prediction_adds_up() -> None:
    m = TRUE
    # γ = 0: prefill + L steps at mid context + answer (catch-up of 8 tokens + 16 steps)
    want = m.prefill(64) + 100 * m.step(4, 1, 64 + 50) + m.step(4, 8, 164) + 16 * m.step(4, 1, 164)
    assert m.predict(4, 0, 100, prompt_len=64) == pytest.approx(want)
    # perfect acceptance at γ = 3: a quarter of the rounds, each a 4-token forward
    want = m.prefill(64) + 25 * m.step(4, 4, 114) + m.step(4, 8, 164) + 16 * m.step(4, 1, 164)
    assert m.predict(4, 3, 100, alpha=1.0, prompt_len=64) == pytest.approx(want)


def test_expected_verify_width() -> None:
    assert expected_verify_width(0, 0.3) == 1.0
    assert expected_verify_width(4, 1.0) == 5.0
    assert expected_verify_width(4, 0.0) == 1.0
    assert expected_verify_width(3, 0.25) == pytest.approx(1.75)  # 1 + γ·rate, whatever the batch
    with pytest.raises(LattsError, match="proposal rate"):
        expected_verify_width(3, 1.5)


def test_narrower_verifies_cost_less() -> None:
    # perfect acceptance per proposal, but the forwards are 2.5 tokens wide on average, not 4
    want = TRUE.prefill(64) + 25 * TRUE.step(4, 2.5, 114)
    got = TRUE.predict(4, 3, 100, alpha=1.0, prompt_len=64, answer_tokens=0, answer_prompt_tokens=0, verify_width=2.5)
    assert got == pytest.approx(want)
    assert got < TRUE.predict(4, 3, 100, alpha=1.0, prompt_len=64, answer_tokens=0, answer_prompt_tokens=0)


def test_majority_and_classes() -> None:
    same = lambda a, b: float(a) == float(b)  # noqa: E731
    assert answer_classes(["1", "1.0", None, "2", "2.00"], same) == ([0, 0, -1, 1, 1], ["1", "2"])
    assert majority_class([1, 0, 0, 1]) == 1  # tie: class seen first
    assert majority_class([-1, -1]) == -1
    assert majority_class([2, 0, 0]) == 0


def test_vote_accuracy_exact_small_case() -> None:
    # 4 branches: answers A, A, B, C (A correct). Subsets of 3: AAB ✓, AAC ✓, ABC (tie → first: A ✓), ABC ✓
    labels = [0, 0, 1, 2]
    assert vote_accuracy(labels, {0}, 3, random.Random(0)) == 1.0
    # B = 1: the share of correct answers
    assert vote_accuracy(labels, {0}, 1, random.Random(0)) == 0.5
    # only C correct: 1 subset in 4 has C without a majority against it (ABC, C seen last → A wins): 0
    assert vote_accuracy(labels, {2}, 3, random.Random(0)) == 0.0


def test_surface_matches_binomial_majority() -> None:
    """Per-sample accuracy p with two answers (right/wrong): maj@B = P(Binomial(B, p) > B/2) (+ tie share)."""
    rng = random.Random(1)
    n_problems, b_max, p = 300, 16, 0.6
    runs, golds = [], []
    for _ in range(n_problems):
        answers = ["1" if rng.random() < p else "2" for _ in range(b_max)]
        runs.append({64: answers})
        golds.append("1")
    est = {e.branches: e for e in estimate_surface(runs, golds, lambda g, a: a == g, lambda a, b: a == b,
                                                    [1, 3, 5], samples=200, bootstrap=300)}
    from math import comb
    def maj(b: int) -> float:
        return sum(comb(b, k) * p**k * (1 - p) ** (b - k) for k in range(b // 2 + 1, b + 1))
    for b in (1, 3, 5):
        assert est[b].low <= maj(b) <= est[b].high or abs(est[b].accuracy - maj(b)) < 0.03, (b, est[b])
        assert est[b].low <= est[b].accuracy <= est[b].high
    assert est[5].accuracy > est[3].accuracy > est[1].accuracy


def test_optimizer_picks_the_known_best_plan() -> None:
    accuracy = {(1, 100): 0.30, (4, 100): 0.45, (16, 100): 0.55, (1, 400): 0.40, (4, 400): 0.60, (16, 400): 0.70}
    latency = lambda b, g, L: L * (0.01 + 0.001 * b) / (1.5 if g else 1.0)  # noqa: E731  (speculation: 1.5x)
    cands = candidates(accuracy, latency, [0, 4])
    assert best_plan(cands, 0.5) is None
    # T = 2 s: (4, 400) takes 5.6 s (3.73 with γ); (16, 100) takes 2.6 s, with γ 1.73 s -> 0.55
    plan = best_plan(cands, 2.0)
    assert (plan.plan.branches, plan.plan.gamma, plan.plan.max_think, plan.accuracy) == (16, 4, 100, 0.55)
    plan = best_plan(cands, 10.0)
    assert (plan.plan.branches, plan.plan.max_think, plan.accuracy) == (16, 400, 0.70) and plan.plan.gamma == 4
    front = pareto_frontier(cands)
    assert [c.accuracy for c in front] == sorted(c.accuracy for c in front)
    assert all(a.latency_s <= b.latency_s for a, b in zip(front, front[1:]))
    for c in cands:  # nothing off the frontier beats a frontier point on both axes
        assert not any(c.accuracy > f.accuracy and c.latency_s < f.latency_s for f in front)


def test_ties_go_to_the_faster_plan() -> None:
    cands = [Candidate.of(4, 0, 100, 0.5, 3.0), Candidate.of(4, 2, 100, 0.5, 2.0), Candidate.of(1, 0, 100, 0.3, 1.0)]
    assert best_plan(cands, 5.0) == cands[1]


def test_fit_recovers_two_weight_formats() -> None:
    """Forwards of <= switch_rows tokens run another weight format: their own memory term and slope."""
    true = LatencyModel(overhead=0.016, w_token=0.0013, w_attn=0.00002, w_row=0.0002, prefill_base=0.0,
                        prefill_per_token=0.0, small_overhead=0.008, small_w_token=0.004, switch_rows=6)
    assert true.step(1, 1, 512) < true.step(2, 4, 512)  # int4 cheap at 1 row, dense at 8
    assert true.step(6, 1, 0) == pytest.approx(0.008 + 6 * 0.004 + 6 * 0.0002)
    assert true.step(7, 1, 0) == pytest.approx(0.016 + 7 * 0.0013 + 7 * 0.0002)
    fitted = LatencyModel.fit(_profile(true, 0.0), switch_rows=6)
    for name in ("overhead", "w_token", "w_attn", "w_row", "small_overhead", "small_w_token"):
        assert getattr(fitted, name) == pytest.approx(getattr(true, name), rel=1e-6), name
    # one format only: the same data fitted without the switch predicts worse
    blind = LatencyModel.fit(_profile(true, 0.0))
    held = [StepSample(b, k, 700, true.step(b, k, 700)) for b, k in ((3, 1), (1, 3), (12, 3), (24, 1))]
    assert fitted.median_error(held) < 1e-6 < blind.median_error(held)



def test_run_prediction_includes_the_engine_loop() -> None:
    from dataclasses import replace

    from latts.latency.model import LoopSample

    loops = [LoopSample(b, 0, 0.002 + 0.001 * b) for b in (1, 4, 16)] + [LoopSample(b, 3, 0.005 + 0.002 * b)
                                                                      for b in (1, 4, 16)]
    m = LatencyModel.fit(_profile(TRUE, 0.0), loops=loops)
    assert (m.loop_base, m.loop_per_row, m.spec_base, m.spec_per_row) == pytest.approx((0.002, 0.001, 0.005, 0.002))
    assert m.loop(4) == pytest.approx(0.006) and m.loop(4, 3) == pytest.approx(0.013)
    bare = replace(m, loop_base=0.0, loop_per_row=0.0, spec_base=0.0, spec_per_row=0.0)
    # γ = 0: 100 thinking steps, the answer prompt's forward and 16 answer steps each pay the loop
    assert m.predict(4, 0, 100, prompt_len=64) == pytest.approx(bare.predict(4, 0, 100, prompt_len=64) + 117 * 0.006)
    # γ = 3, α = 1: 25 rounds pay the speculative loop, the answer the plain one
    assert m.predict(4, 3, 100, alpha=1.0, prompt_len=64) == pytest.approx(
        bare.predict(4, 3, 100, alpha=1.0, prompt_len=64) + 25 * 0.013 + 17 * 0.006)
