"""The fast engine path (``dtype='auto'``) against HF fp32, teacher-forced on 512 tokens of MATH-500.

The measurement and its bounds live in ``benchmarks/numerics.py`` (whose docstring says why the bounds
are what they are); this test runs it on the shortest text it accepts and asserts the same bounds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _numerics():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "numerics.py"
    spec = importlib.util.spec_from_file_location("bench_numerics", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_fast_path_is_within_the_bounds_of_activation_rounding(fast_model, hf_model) -> None:
    numerics = _numerics()
    result = numerics.measure(fast_model, hf_model, n_tokens=512, rows=(1, 4), k4_chunks=2)
    paths = result["paths"]
    assert len(paths) == 2
    for summary in paths.values():
        # every teacher-forced position was compared: the prefill's last one, then 512 - 1 - 64 decoded
        assert summary["positions"] in (1 + 447, 1 + 4 * 447)
        assert summary["k4_positions"] > 0
    missed = numerics.failures(result)
    assert not missed, "\n".join(missed)
