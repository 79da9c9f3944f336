"""The profiler's forward timings on the real default model: every requested shape, bad shapes refused."""

from __future__ import annotations

import pytest

from latts.errors import LattsError
from latts.latency.profiler import grid, measure_steps


def test_measure_steps_times_every_shape_once(engine) -> None:
    shapes = [(1, 1, 32), (3, 2, 32), (2, 1, 48), (1, 3, 48), (3, 1, 32, 40), (1, 2, 32, 40)]
    got = measure_steps(engine, shapes, repeats=1, passes=2)
    # the caller's order, whatever the passes'; rows holding 40 tokens of their own where asked
    assert [(s.branches, s.k, s.context, s.own) for s in got] == [(*x[:3], x[3] if len(x) > 3 else 0) for x in shapes]
    assert all(0 < s.seconds < 10 for s in got)


def test_grid_and_bad_shapes() -> None:
    assert grid((1, 2), (1, 4), (64,)) == [(1, 1, 64), (1, 4, 64), (2, 1, 64), (2, 4, 64)]
    assert measure_steps(None, []) == []  # nothing asked, nothing measured (no model touched)
    with pytest.raises(LattsError, match=">= 1"):
        measure_steps(None, [(0, 1, 64)])
    with pytest.raises(LattsError, match="own >= 0"):
        measure_steps(None, [(1, 1, 64, -1)])
