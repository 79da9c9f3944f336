"""``latts.engine.speculation.sampler`` on synthetic logits (no model needed)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy.stats import chisquare

from latts.config import SamplingParams
from latts.engine.speculation.sampler import draw, probabilities, sample
from latts.errors import LattsError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_of(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (zeros become -inf)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# ---------------------------------------------------------------------------- greedy


def test_greedy_sample_is_argmax() -> None:
    logits = torch.tensor(
        [[0.1, 3.0, -2.0, 2.9], [5.0, -1.0, 4.0, 0.0], [-3.0, -2.0, -1.0, -1.5], [0.0, 0.0, 0.0, 7.0]]
    )
    params = SamplingParams(temperature=0.0)
    assert params.greedy
    got = sample(logits, params, gen(0))
    assert got.tolist() == [1, 0, 2, 3]
    # the generator plays no role: any seed gives the same tokens
    assert sample(logits, params, gen(123)).tolist() == [1, 0, 2, 3]


def test_greedy_sample_keeps_leading_dims() -> None:
    logits = torch.randn(2, 3, 11, generator=gen(5))
    got = sample(logits, SamplingParams(temperature=0), gen(0))
    assert got.shape == (2, 3)
    assert torch.equal(got, logits.argmax(-1))


def test_probabilities_greedy_is_one_hot() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = probabilities(logits, SamplingParams(temperature=0))
    assert probs.tolist() == [[1.0, 0.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------- warping


def test_temperature_scales_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    for t in (0.5, 1.0, 2.0):
        got = probabilities(logits, SamplingParams(temperature=t))
        assert got.dtype == torch.float32
        assert torch.allclose(got, torch.softmax(logits / t, -1), atol=1e-7)
        assert math.isclose(got.sum().item(), 1.0, abs_tol=1e-6)
    sharp = probabilities(logits, SamplingParams(temperature=0.5))[0, 1].item()
    flat = probabilities(logits, SamplingParams(temperature=2.0))[0, 1].item()
    assert sharp > flat  # lower temperature puts more mass on the top token


def test_probabilities_bf16_input_gives_fp32() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.bfloat16)
    got = probabilities(logits, SamplingParams(temperature=1.0))
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.softmax(logits.float(), -1))


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5, 0.9, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    probs = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    kept = probs > 0
    assert kept.sum(-1).tolist() == [2, 2]
    assert kept[0].nonzero().flatten().tolist() == [1, 3]
    assert kept[1].nonzero().flatten().tolist() == [0, 1]
    # renormalised softmax over the two survivors
    expected0 = torch.softmax(torch.tensor([2.0, 1.5]), -1)
    assert torch.allclose(probs[0, [1, 3]], expected0, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-6)


@pytest.mark.parametrize("k", [0, 6, 100])
def test_top_k_disabled_or_too_large_is_a_no_op(k: int) -> None:
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5, 0.9, 0.0]])
    probs = probabilities(logits, SamplingParams(temperature=1.0, top_k=k))
    assert torch.allclose(probs, torch.softmax(logits, -1), atol=1e-7)


@pytest.mark.parametrize(
    ("top_p", "n_kept"),
    [(0.3, 1), (0.45, 1), (0.7, 2), (0.85, 3), (0.9, 3), (0.99, 4), (1.0, 4)],
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p: float, n_kept: int) -> None:
    base = [0.5, 0.3, 0.15, 0.05]
    probs = probabilities(logits_of(base), SamplingParams(temperature=1.0, top_p=top_p))
    expected = torch.tensor(base[:n_kept] + [0.0] * (4 - n_kept))
    expected = expected / expected.sum()
    assert (probs > 0).sum().item() == n_kept
    assert torch.allclose(probs, expected, atol=1e-6), (probs, expected)


def test_top_p_on_unsorted_vocab_and_batch_rows() -> None:
    # same distributions as above but tokens shuffled, and a second, different row
    rows = [[0.15, 0.05, 0.5, 0.3], [0.1, 0.6, 0.1, 0.2]]
    probs = probabilities(logits_of(rows), SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.allclose(probs[0], torch.tensor([0.0, 0.0, 0.5, 0.3]) / 0.8, atol=1e-6)
    # row 2: 0.6 < 0.7, so 0.2 is added (0.8 >= 0.7), the two 0.1 go
    assert torch.allclose(probs[1], torch.tensor([0.0, 0.6, 0.0, 0.2]) / 0.8, atol=1e-6)


def test_top_k_and_top_p_combine() -> None:
    base = [0.4, 0.3, 0.2, 0.1]
    # top-k 3 renormalises to [4/9, 3/9, 2/9]; top-p 0.75 then keeps 4/9 + 3/9 = 0.78
    probs = probabilities(logits_of(base), SamplingParams(temperature=1.0, top_k=3, top_p=0.75))
    assert torch.allclose(probs, torch.tensor([4 / 7, 3 / 7, 0.0, 0.0]), atol=1e-6)


# ---------------------------------------------------------------------------- seeded draws


def test_draw_is_reproducible_with_a_seed() -> None:
    probs = torch.softmax(torch.randn(64, 50, generator=gen(1)), -1)
    a = draw(probs, gen(42))
    b = draw(probs, gen(42))
    c = draw(probs, gen(43))
    assert a.shape == (64,)
    assert a.dtype == torch.int64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a >= 0) & (a < 50)).all()


def test_sample_is_reproducible_with_a_seed() -> None:
    logits = torch.randn(32, 100, generator=gen(2))
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=40)
    assert torch.equal(sample(logits, params, gen(7)), sample(logits, params, gen(7)))
    assert not torch.equal(sample(logits, params, gen(7)), sample(logits, params, gen(8)))


def test_draw_frequencies_match_distribution() -> None:
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    n = 20_000
    tokens = draw(p.expand(n, -1).contiguous(), gen(2024))
    counts = torch.bincount(tokens, minlength=len(p)).double()
    assert counts.sum().item() == n
    expected = (p.double() * n).numpy()
    result = chisquare(counts.numpy(), expected)
    assert result.pvalue > 0.01, (counts.tolist(), expected.tolist(), result)


def test_draw_never_picks_zero_probability_tokens() -> None:
    logits = torch.tensor([1.0, 0.5, 3.0, -0.5, 2.0, 0.0])
    params = SamplingParams(temperature=1.5, top_k=3)  # keeps tokens 2, 4, 0
    tokens = sample(logits.expand(5_000, -1).contiguous(), params, gen(9))
    assert set(tokens.unique().tolist()) == {0, 2, 4}


# ---------------------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": -1e-6}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": -0.5}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"top_p": 1.0000001}, "top-p"),
        ({"top_p": float("nan")}, "top-p"),
        ({"top_k": -1}, "top-k"),
    ],
)
def test_sampling_params_rejects(kwargs: dict, word: str) -> None:
    with pytest.raises(LattsError, match=word):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_edges_and_is_frozen() -> None:
    p = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=3)
    assert p.greedy
    assert not SamplingParams(temperature=1e-3, top_p=1e-3, top_k=1).greedy
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 1.0  # type: ignore[misc]
