"""Comparing two samples of outcomes (e.g. sampled tokens with and without speculation) for the chi-square tests."""

from __future__ import annotations

from collections import Counter


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
