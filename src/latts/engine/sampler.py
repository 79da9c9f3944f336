"""Turning logits into tokens: temperature, top-k, top-p, seeded draws.

Kept as two steps, ``probabilities`` (the warped distribution) and ``draw`` (a seeded sample from
it), because speculative decoding needs the distributions themselves for rejection sampling.
"""

from __future__ import annotations

import torch

from latts.config import SamplingParams


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``[..., V]`` (fp32) that sampling with ``params`` draws from (one-hot when greedy)."""
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One seeded sample per row of ``probs`` ``[..., V]`` (exponential-race, as gpt-fast)."""
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return torch.argmax(probs / noise, dim=-1)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Next tokens ``[...]`` for logits ``[..., V]``: argmax when greedy, else a seeded draw."""
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    return draw(probabilities(logits, params), generator)
