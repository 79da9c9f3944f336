"""Turning logits into tokens: temperature, top-k, top-p, seeded draws.

Kept as two steps, ``probabilities`` (the warped distribution) and ``draw`` (a seeded sample from
it), because speculative decoding needs the distributions themselves for rejection sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latts.config import SamplingParams


def biased(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``logits`` ``[..., V]`` with ``params.logit_bias`` added (a copy; the same tensor when there is none).

    Every choice of a token goes through here first (:func:`probabilities`, :func:`sample`,
    :func:`greedy_accept`), so a bias steers greedy and sampled decoding, drafts and their verification
    alike. Ids past this vocabulary are left out (a draft model's may be smaller).
    """
    V = logits.shape[-1]
    pairs = [(t, v) for t, v in params.logit_bias if t < V]
    if not pairs:
        return logits
    ids = torch.tensor([t for t, _ in pairs])
    out = logits.float().clone()
    out[..., ids] += torch.tensor([v for _, v in pairs], dtype=out.dtype)
    return out


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution ``[..., V]`` (fp32) that sampling with ``params`` draws from (one-hot when greedy)."""
    logits = biased(logits, params)
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


_CHUNK = 128


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One seeded sample per row of ``probs`` ``[..., V]`` (need not be normalised).

    Exact inverse-CDF sampling in two levels: pick a chunk of 128 tokens by its mass, then a token
    inside it, with one uniform number per row per level. gpt-fast's exponential race needs V random
    numbers per row (100 ms per step at B=64 here) and a full-vocabulary cumsum costs 5 ms; this
    needs one vectorised sum. Zero-probability tokens are never drawn (``right=True`` skips
    zero-width bins).
    """
    shape, V = probs.shape[:-1], probs.shape[-1]
    flat = probs.float().reshape(-1, V)
    n = flat.shape[0]
    pad = (-V) % _CHUNK
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    chunks = flat.view(n, -1, _CHUNK)  # [n, C, 128]
    chunk_cdf = chunks.sum(-1).cumsum(-1)  # [n, C]
    u = torch.rand((n, 2), generator=generator, dtype=torch.float32)
    c = torch.searchsorted(chunk_cdf, u[:, :1] * chunk_cdf[:, -1:], right=True).clamp_(max=chunk_cdf.shape[1] - 1)
    inner_cdf = chunks[torch.arange(n), c.squeeze(-1)].cumsum(-1)  # [n, 128]
    j = torch.searchsorted(inner_cdf, u[:, 1:] * inner_cdf[:, -1:], right=True).clamp_(max=_CHUNK - 1)
    return (c * _CHUNK + j).clamp_(max=V - 1).view(shape)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Next tokens ``[...]`` for logits ``[..., V]``: argmax when greedy, else a seeded draw."""
    if params.greedy:
        return torch.argmax(biased(logits, params), dim=-1)
    return draw(probabilities(logits, params), generator)


TargetProbs = Callable[[torch.Tensor, int], torch.Tensor]


class SparseDraftProbs:
    """A drafter's distributions ``[n, gamma, V]`` held as a few (token, probability) pairs per position.

    A count-based drafter's distribution has a handful of tokens; building it densely over a 49k
    vocabulary for every row and draft position would cost more than the drafting itself. The
    rejection sampler asks only for some rows at one position at a time (:meth:`at`).
    """

    def __init__(self, entries: list[list[dict[int, float]]]) -> None:
        self.entries = entries  # entries[row][j]: token -> probability (summing to 1)

    def at(self, rows: torch.Tensor, j: int, vocab: int) -> torch.Tensor:
        """The distributions of ``rows`` at draft position ``j``, dense ``[len(rows), vocab]``."""
        out = torch.zeros((len(rows), vocab))
        for i, r in enumerate(rows.tolist()):
            if j < len(self.entries[r]):  # past a row's own drafts: padding, as zeros in a dense q
                for tok, prob in self.entries[r][j].items():
                    out[i, tok] = prob
        return out


DraftProbs = torch.Tensor | SparseDraftProbs


def rejection_sample(
    drafts: torch.Tensor,
    n_proposed: torch.Tensor,
    p: torch.Tensor | TargetProbs,
    q: DraftProbs | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative-decoding acceptance for a batch of rows (Leviathan et al. 2023; Chen et al. 2023).

    Args:
        drafts: ``[n, gamma]`` proposed tokens (entries at or past ``n_proposed`` are padding).
        n_proposed: ``[n]`` how many drafts each row really proposed.
        p: the target's (warped) distributions at each draft position and after: ``[n, gamma + 1, V]``,
            or a function ``(rows, j) -> [len(rows), V]`` giving them for some rows at position ``j``
            on demand (see :func:`target_probabilities`).
        q: ``[n, gamma, V]`` the drafter's distributions (a tensor or :class:`SparseDraftProbs`), or
            ``None`` for a deterministic drafter (one-hot on its proposal, e.g. n-gram lookup).
        generator: seeded randomness.

    Returns:
        ``accepted`` ``[n]``: leading drafts kept; ``next_token`` ``[n]``: the recovered token
        (drawn from ``normalize(max(0, p - q))`` at the first rejection) or, when every proposal was
        kept, the bonus token drawn from ``p``. The output is distributed exactly as sampling from
        ``p`` token by token; with one-hot (greedy) ``p`` it is exact-match acceptance.

    Position ``j`` is looked at only for the rows that kept all drafts before it, so each row needs
    the target's distribution at ``accepted + 1`` positions, not at ``gamma + 1``: with a
    vocabulary of 49k, warping every verified position cost up to half a decode step at B=8.
    """
    target = p if callable(p) else (lambda rows, j: p[rows, j])
    if isinstance(q, SparseDraftProbs):
        draft_probs = q.at
    else:
        draft_probs = lambda rows, j, vocab: q[rows, j]  # noqa: E731
    n, gamma = drafts.shape
    accepted = torch.zeros(n, dtype=torch.long)
    final: torch.Tensor | None = None  # [n, V]: each row's distribution for its next token
    active = torch.arange(n)  # rows that kept every draft so far
    for j in range(gamma + 1):
        if active.numel() == 0:
            break
        pj = target(active, j)  # [m, V]
        if final is None:
            final = torch.empty((n, pj.shape[-1]), dtype=pj.dtype)
        done = n_proposed[active] <= j  # every proposal kept: the bonus token comes from p here
        if done.any():
            final[active[done]] = pj[done]
        if j == gamma:
            break
        tok = drafts[active, j]
        p_tok = pj.gather(-1, tok[:, None]).squeeze(-1)
        q_j = draft_probs(active, j, pj.shape[-1]) if q is not None else None  # [m, V]
        q_tok = q_j.gather(-1, tok[:, None]).squeeze(-1) if q_j is not None else torch.ones_like(p_tok)
        u = torch.rand(p_tok.shape, generator=generator)
        keep = (u * q_tok < p_tok) & ~done
        rejected = ~keep & ~done
        if rejected.any():
            rows = active[rejected]
            qj = q_j[rejected] if q_j is not None else torch.nn.functional.one_hot(tok[rejected], pj.shape[-1]).to(pj.dtype)
            residual = (pj[rejected] - qj).clamp_(min=0)
            mass = residual.sum(-1, keepdim=True)
            # p == q leaves no residual mass: rejection had probability 0 then, so fall back to p itself
            final[rows] = torch.where(mass > 0, residual / mass.clamp(min=1e-30), pj[rejected])
        accepted[active[keep]] += 1
        active = active[keep]
    assert final is not None
    return accepted, draw(final, generator)


def target_probabilities(logits: torch.Tensor, params: SamplingParams) -> TargetProbs:
    """The target's warped distributions from verify logits ``[n, k, V]``, computed per (rows, position) on demand."""
    return lambda rows, j: probabilities(logits[rows, j], params)


def greedy_accept(
    drafts: torch.Tensor, n_proposed: torch.Tensor, logits: torch.Tensor, params: SamplingParams | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rejection_sample` for greedy decoding, straight from logits ``[n, gamma + 1, V]``.

    Exact-match acceptance: keep drafts while they equal the target's argmax; the next token is the
    argmax at the first mismatch (or after the last draft). Same result as the one-hot case of
    :func:`rejection_sample`, without building ``[n, gamma + 1, V]`` distributions. ``params`` brings
    the request's logit bias.
    """
    n, gamma = drafts.shape
    target = (biased(logits, params) if params is not None else logits).argmax(-1)  # [n, gamma + 1]
    keep = (drafts == target[:, :gamma]) & (torch.arange(gamma)[None, :] < n_proposed[:, None])
    accepted = keep.long().cumprod(-1).sum(-1)
    return accepted, target[torch.arange(n), accepted]
