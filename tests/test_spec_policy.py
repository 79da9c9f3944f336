"""The γ policy (``GenerateRequest.gamma_policy="cost"``): each round a row verifies only the drafts that pay
for their positions on this machine's measured costs, and the output stays exactly what plain decoding gives."""

from __future__ import annotations

import pytest
import torch

from latts.config import SamplingParams
from latts.engine.speculation.drafters import GroupDrafter, NGramDrafter
from latts.engine.engine import Engine
from latts.engine.speculation.gamma_policy import AcceptanceStats, CostShape, choose_drafts, drafts_may_pay, match_bucket
from latts.errors import LattsError
from latts.request import GenerateRequest

MS = 1e-3
# memory-bound: a forward of up to 32 positions costs what one row's step costs
FLAT = CostShape({1: 5 * MS, 32: 5.5 * MS}, {1: 5 * MS, 16: 5.5 * MS})
# compute-bound from 8 positions: an extra position costs nearly what a plain row's token costs (this machine
# measured plain 8 rows 9.5 ms, a verify of 16 positions 17.7 ms)
LINEAR = CostShape({1: 5 * MS, 8: 9 * MS, 16: 17 * MS, 64: 72 * MS}, {1: 5 * MS, 8: 9 * MS, 16: 17 * MS})


def stats_with(rate: float) -> AcceptanceStats:
    """Acceptance statistics in which every draft is kept with chance ``rate`` given the ones before it."""
    return AcceptanceStats(prior=rate, weight=1e9)


def test_cost_shape_interpolates_and_never_decreases() -> None:
    shape = CostShape({1: 5.0, 8: 4.0, 16: 16.0})  # noise made 8 positions look cheaper than 1
    assert shape(1) == shape(8) == 5.0  # held at the running maximum
    assert shape(12) == pytest.approx(10.5)
    assert shape(32) == pytest.approx(16.0 + 32.0 * 11.0 / 8.0 - 16.0 * 11.0 / 8.0)  # linear beyond the last
    assert shape.plain(4) == shape(4)  # without plain measurements, the verify curve stands in


def test_acceptance_stats_count_only_the_drafts_looked_at() -> None:
    s = AcceptanceStats(prior=0.5, weight=2.0)
    s.record([4], [3], [1])  # draft 0 kept, draft 1 rejected, draft 2 never looked at
    assert s.rate(4, 0) == pytest.approx((1 + 1) / (1 + 2))
    assert s.rate(4, 1) == pytest.approx((0 + 1) / (1 + 2))
    assert s.rate(4, 2) == pytest.approx(0.5)  # the prior: nothing seen
    assert s.rate(1, 0) == pytest.approx(0.5)  # buckets are separate
    assert [match_bucket(n) for n in (0, 1, 2, 3, 5, 7, 9, 40)] == [0, 1, 2, 3, 4, 6, 8, 12]


def test_memory_bound_rows_verify_every_draft() -> None:
    assert choose_drafts([3, 2, 0, 1], [0] * 4, stats_with(0.5), FLAT) == [3, 2, 0, 1]
    assert drafts_may_pay(4, 3, stats_with(0.5), FLAT)


def test_compute_bound_rows_verify_none_unless_nearly_sure() -> None:
    proposed = [3] * 8
    assert choose_drafts(proposed, [0] * 8, stats_with(0.6), LINEAR) == [0] * 8
    assert not drafts_may_pay(8, 3, stats_with(0.6), LINEAR)
    # past the knee a draft only pays when accepted almost always; from 16 rows not even then
    assert sum(choose_drafts([3] * 4, [0] * 4, stats_with(0.97), LINEAR)) > 0
    assert choose_drafts([3] * 16, [0] * 16, stats_with(0.97), LINEAR) == [0] * 16


def test_what_a_round_adds_is_held_against_the_drafts() -> None:
    assert choose_drafts([3], [0], stats_with(0.5), FLAT, extra=0.0) == [3]
    assert choose_drafts([3], [0], stats_with(0.5), FLAT, extra=5 * MS) == [0]  # drafting costs a whole step
    # verifies that ran twice as slow as the shape predicted (a long context) make the same drafts a loss
    assert choose_drafts([3], [0], stats_with(0.5), FLAT, slower=2.0) == [0]


def test_long_matches_are_trusted_more() -> None:
    s = AcceptanceStats()
    for _ in range(100):
        s.record([12, 1], [3, 3], [3, 0])  # long matches kept, 1-token matches rejected
    keep = choose_drafts([3, 3, 3, 3, 3, 3, 3, 3], [12, 1, 12, 1, 12, 1, 12, 1], s, LINEAR)
    assert keep[1::2] == [0, 0, 0, 0] and sum(keep[0::2]) > 0


def test_unknown_policy_is_named() -> None:
    with pytest.raises(LattsError, match="unknown gamma policy 'auto'"):
        GenerateRequest("hi", gamma=2, drafter=NGramDrafter(), gamma_policy="auto")


@pytest.mark.parametrize("branches", [1, 4])
@pytest.mark.parametrize("drafter", [NGramDrafter, GroupDrafter])
def test_the_cost_policy_stays_greedy_identical(fast_model, branches, drafter) -> None:
    engine = Engine(fast_model)
    engine.warmup()
    assert engine.speculator.cost_shape is not None and engine.speculator.cost_shape(64) > engine.speculator.cost_shape(1)
    plain = engine.generate(GenerateRequest("Explain step by step how to compute 17 * 23.", branches=branches,
                                            max_new_tokens=80, ignore_eos=True))
    spec = engine.generate(GenerateRequest("Explain step by step how to compute 17 * 23.", branches=branches,
                                           max_new_tokens=80, ignore_eos=True, gamma=3, drafter=drafter()))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]
    s = spec.spec
    assert s is not None and s.verifies <= spec.steps  # rounds the policy left without drafts are plain steps


def test_the_cost_policy_keeps_sampling_seeded_rows_diverse(fast_model) -> None:
    engine = Engine(fast_model)
    got = engine.generate(GenerateRequest("Write a short poem about the sea.", branches=8, max_new_tokens=40,
                                          ignore_eos=True, sampling=SamplingParams(temperature=1.0, seed=3),
                                          gamma=3, drafter=GroupDrafter()))
    assert len({tuple(b.token_ids) for b in got.branches}) == 8



def test_the_cost_policy_samples_like_plain_decoding(fast_model) -> None:
    """Sampled runs (T = 1, top-2, 12 tokens, 4 rows) with group drafts under the cost policy emit every token
    with the probability the model gives it after the row's own history, as plain decoding does: the policy's
    choices (which rows verify how many of their drafts, or none) depend only on earlier rounds, so rejection
    sampling stays exact.

    The check is a calibration test on what drafts would propose: at every position, the copy candidate (the
    token that followed the latest earlier occurrence of the last 3, 2 or 1 tokens, prompt included) has a
    chance p under the teacher-forced logits, and the sum of (1{candidate emitted} - p) over the positions is
    about N(0, sum p (1 - p)); |z| < 4 in both arms. Position-wise chi-square tables on such runs pool into
    a handful of cells. Its power is that of ~120 verify rounds: a sampler that drew a rejected draft's
    replacement from p instead of the residual read z = +3.0 to +4.4 (clean runs: -1.5 to -0.0), so
    it catches gross bias in the policy's path (the sampler itself is checked by the fixed-policy tests).
    The cost shape is cheap up to 12 positions and steep beyond, so that rounds verify some rows' drafts and
    cut others'; a drafter that counts what it offered shows the cuts happened."""
    from latts.engine.speculation.gamma_policy import CostShape

    class Counting(GroupDrafter):
        offered = 0

        def propose(self, *args, **kwargs):
            drafts, n, q = super().propose(*args, **kwargs)
            Counting.offered += int(n.sum())
            return drafts, n, q

    engine = Engine(fast_model)
    engine.speculator.cost_shape = CostShape({1: 5 * MS, 12: 5.5 * MS, 16: 12 * MS, 64: 72 * MS})
    ids = engine.encode("Repeat this sentence three times: The quick brown fox jumps over the lazy dog near the "
                        "river bank.")
    verifies = verified = 0

    def runs(gamma: int) -> list[list[int]]:
        nonlocal verifies, verified
        out = []
        for seed in range(100):
            got = engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=12, ignore_eos=True,
                                                  sampling=SamplingParams(temperature=1.0, top_k=2, seed=seed),
                                                  gamma=gamma, drafter=Counting() if gamma else None))
            out += [b.token_ids for b in got.branches]
            if got.spec is not None:
                verifies, verified = verifies + got.spec.verifies, verified + got.spec.proposed
        return out

    def copy_candidate(history: list[int]) -> int | None:
        """The token that followed the latest earlier occurrence of the history's last 3 (or 2, or 1) tokens."""
        for n in (3, 2, 1):
            tail = history[-n:]
            for i in range(len(history) - n - 1, -1, -1):
                if history[i : i + n] == tail:
                    return history[i + n]
        return None

    def calibration_z(rows: list[list[int]]) -> float:
        model, residual, variance = engine.model, 0.0, 0.0
        for i in range(0, len(rows), 16):
            tokens = torch.tensor(rows[i : i + 16])
            cache = model.new_cache(len(tokens), len(ids), tokens.shape[1])
            model.prefill(torch.tensor([ids]), cache)
            logits = model.decode(tokens, torch.full((len(tokens),), len(ids)), cache)[:, :-1].float()
            top = logits.topk(2, dim=-1)
            chances = torch.softmax(top.values, dim=-1)  # of the two tokens kept, [n, 11, 2]
            for r, row in enumerate(rows[i : i + 16]):
                for j in range(1, len(row)):
                    if (c := copy_candidate(ids + row[:j])) is None:
                        continue
                    kept = top.indices[r, j - 1].tolist()
                    p = float(chances[r, j - 1, kept.index(c)]) if c in kept else 0.0
                    residual += (row[j] == c) - p
                    variance += p * (1 - p)
        return residual / variance**0.5

    plain, spec = runs(0), runs(3)
    z_plain, z_spec = calibration_z(plain), calibration_z(spec)
    print(f"verify rounds {verifies}, drafts offered {Counting.offered}, verified {verified}; "
          f"calibration z: plain {z_plain:+.2f}, cost policy {z_spec:+.2f}")
    assert verifies >= 30 and 0 < verified < Counting.offered
    assert abs(z_plain) < 4 and abs(z_spec) < 4


class ValueDependentDrafter:
    """A drafter whose number of drafts depends on the value it drew: a first draft drawn 50/50 from two
    tokens, then two more drafts only after the second one (as the group drafter goes on only while its
    drawn drafts keep matching). It says up front that a row may offer three."""

    name = "value-dependent"

    def __init__(self, a: int, b: int, filler: int) -> None:
        self.a, self.b, self.filler = a, b, filler
        self.match_lengths: list[int] = []
        self.draft_limits: list[int] = []

    def begin(self, prompt: list[int], rows: int, max_new_tokens: int) -> None:
        pass

    def propose(self, histories, gamma, sampling, generator):
        from latts.engine.speculation.sampler import SparseDraftProbs

        n = len(histories)
        first = torch.where(torch.rand(n, generator=generator) < 0.5, self.a, self.b)
        drafts = torch.zeros((n, gamma), dtype=torch.long)
        drafts[:, 0], drafts[:, 1:3] = first, self.filler
        more = first == self.b
        dists = [[{self.a: 0.5, self.b: 0.5}] + [{self.filler: 1.0}] * (2 if bool(m) else 0) for m in more]
        self.match_lengths, self.draft_limits = [4] * n, [3] * n
        return drafts, torch.where(more, 3, 1), SparseDraftProbs(dists)

    def observe(self, lengths_before, accepted) -> None:
        pass

    def move_row(self, src: int, dst: int) -> None:
        pass


def test_the_cost_policy_decides_before_the_drafts_are_drawn(fast_model) -> None:
    """With a cost where one verified draft loses and three win, a policy that counted the drafts actually
    drawn would verify the first draft only when it was the value that brings two more: the token after
    it would come out biased towards that value (here about 0.5 p + 0.5 min(1, 2p) instead of p). The policy
    decides on the drafter's ``draft_limits`` instead, and the second token has plain decoding's
    distribution (chi-square over 300 seeded one-row runs a side)."""
    from collections import Counter

    from scipy.stats import chi2_contingency

    from distributions import homogeneity_table
    from latts.engine.speculation.gamma_policy import CostShape

    engine = Engine(fast_model)
    engine.warmup()
    step = engine.speculator.cost_shape.plain(1)
    shape = CostShape({1: step, 2: 1.6 * step, 4: 1.7 * step}, {1: step})  # 1 draft: 1.5 / 1.6 < 1; 3: 1.875 / 1.7
    ids = engine.encode("Name a colour.")
    sampling = lambda seed: SamplingParams(temperature=1.0, top_k=3, seed=seed)  # noqa: E731
    firsts = Counter(engine.generate(GenerateRequest(ids, max_new_tokens=2, ignore_eos=True,
                                                     sampling=sampling(s))).branches[0].token_ids[1]
                     for s in range(40))
    (a, _), (b, _) = firsts.most_common(2)  # the two likeliest second tokens
    filler = engine.encode(" the")[0]

    def second_tokens(gamma: int) -> Counter:
        c: Counter = Counter()
        for seed in range(300):
            # the policy's inputs held where this test puts them (each run has one verify round at most)
            engine.speculator.cost_shape, engine.speculator.verify_slower = shape, 1.0
            engine.speculator.spec_extra_s = {True: 0.0, False: 0.0}
            engine.speculator.acceptance[False] = AcceptanceStats(prior=0.5, weight=1e9)
            got = engine.generate(GenerateRequest(ids, max_new_tokens=2, ignore_eos=True, sampling=sampling(seed),
                                                  gamma=gamma, drafter=ValueDependentDrafter(a, b, filler)
                                                  if gamma else None))
            c[got.branches[0].token_ids[1]] += 1
        return c

    plain, spec = second_tokens(0), second_tokens(3)
    keys, table = homogeneity_table(plain, spec, 10)
    p = chi2_contingency(table).pvalue
    print(f"second token, plain vs cost policy: {dict(plain)} | {dict(spec)}; chi-square p = {p:.3g}")
    assert len(keys) >= 2 and p > 0.001
