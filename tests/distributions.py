"""Comparing two samples of outcomes (e.g. sampled tokens with and without speculation) for the chi-square tests."""

from __future__ import annotations

from collections import Counter

from scipy.stats import chi2_contingency

from latts.config import SamplingParams
from latts.request import GenerateRequest


def homogeneity_table(plain: Counter, spec: Counter, min_count: int) -> tuple[list, list[list[int]]]:
    """(outcomes, 2-row contingency table) for a chi-square homogeneity test of two samples.

    Outcomes seen at least ``min_count`` times in both samples together get a column each; the rest are
    pooled into a last column ("other"), dropped when it is empty in both.
    """
    keys = [k for k in plain if plain[k] + spec[k] >= min_count]
    table = [[plain[k] for k in keys] + [sum(v for k, v in plain.items() if k not in keys)],
             [spec[k] for k in keys] + [sum(v for k, v in spec.items() if k not in keys)]]
    if table[0][-1] + table[1][-1] == 0:
        table = [row[:-1] for row in table]
    return keys, table


def assert_speculation_samples_like_plain(engine, ids: list[int], drafter, branches: int, seeds: int) -> None:
    """The first two sampled tokens (T = 1, top-k 4) with ``drafter`` at γ = 3, every draft verified, have the
    joint distribution they have without speculation: ``seeds`` runs of ``branches`` rows a side, a chi-square
    homogeneity test (p > 0.001) and a total variation under 0.08."""

    def pairs(gamma: int) -> Counter:
        c: Counter = Counter()
        for seed in range(seeds):
            got = engine.generate(GenerateRequest(ids, branches=branches, max_new_tokens=2, ignore_eos=True,
                                                  sampling=SamplingParams(temperature=1.0, top_k=4, seed=seed),
                                                  gamma=gamma, gamma_policy="fixed", drafter=drafter if gamma else None))
            c.update(tuple(b.token_ids[:2]) for b in got.branches)
        return c

    plain, spec = pairs(0), pairs(3)
    keys, table = homogeneity_table(plain, spec, 20)
    assert len(keys) >= 3
    assert chi2_contingency(table).pvalue > 0.001
    tv = 0.5 * sum(abs(plain[k] - spec[k]) for k in set(plain) | set(spec)) / sum(plain.values())
    assert tv < 0.08
