"""How long a test-time-scaling run takes: a small roofline-like model fitted to measured forwards.

One decode forward over ``B`` rows of ``k`` tokens each (``n = B·k`` tokens) at context ``c`` (the
shared prompt), each row already holding ``o`` tokens of its own (what it generated), costs

    t_step = overhead + w_token · n + w_attn · n · c / 1000 + w_own · n · o / 1000 + w_row · B

- ``overhead``: reading every weight once plus per-step fixed costs (memory-bound, independent of n);
- ``w_token · n``: the compute that grows with the tokens in the forward (matmuls past the roofline knee);
- ``w_attn · n · c``: attention over the shared prompt;
- ``w_own · n · o``: attention over each row's own tokens. It costs more per token than the prompt's:
  the prompt's keys are read once for a block of queries and sit in a layout made for the dot products,
  while each row's own keys and values are read for that row alone (the fitted ratio is in
  ``docs/measurement-history.md``). A profile without forwards over own tokens (older ones, remote servers) leaves
  ``w_own`` at 0, and own tokens then count as context;
- ``w_row · B``: per-row bookkeeping (sampling, cache writes).

The engine switches weight format at ``switch_rows`` (exact quantized weights up to that many rows per
forward, pre-packed dense above: see :mod:`latts.engine.models.linear`). The two formats read different
bytes and spend different compute per token, so forwards of ``n <= switch_rows`` tokens get their own
memory term and slope (``small_overhead``, ``small_w_token``): two rooflines, one per weight format.

A prefill of ``P`` tokens costs ``p0 + p1 · P``. A whole run with thinking budget ``L``, draft length ``γ``
and acceptance rate ``α`` takes ``L / E`` verify rounds, where ``E = (1 − α^(γ+1)) / (1 − α)`` tokens are
gained per round (Leviathan et al.), each round a forward of ``k = γ + 1`` tokens per row (fewer when
rows were offered fewer drafts: the verify computes the proposed positions only) plus the drafter's
cost; then a forced answer (one catch-up forward and ``answer_tokens`` plain steps). Every coefficient
is fitted by least squares to a profile and clipped at zero, so each one reads as a cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latts.errors import LattsError


@dataclass(frozen=True, slots=True)
class StepSample:
    """One measured decode forward: B rows × k tokens after a ``context``-token prompt and ``own`` tokens of
    each row's own, ``seconds`` (median)."""

    branches: int
    k: int
    context: int
    seconds: float
    own: int = 0


@dataclass(frozen=True, slots=True)
class LoopSample:
    """What one engine step (γ = 0) or speculative round (γ > 0) of B rows costs beyond its forward."""

    branches: int
    gamma: int
    seconds: float


@dataclass(frozen=True, slots=True)
class PrefillSample:
    """One measured prefill of ``tokens`` prompt tokens."""

    tokens: int
    seconds: float


def expected_tokens_per_round(alpha: float, gamma: int) -> float:
    """Tokens a row gains per verify round with γ drafts accepted i.i.d. with probability α (bonus included)."""
    if gamma == 0:
        return 1.0
    if not 0.0 <= alpha <= 1.0:
        raise LattsError(f"acceptance rate must be in [0, 1], got {alpha}")
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_verify_width(gamma: int, proposal_rate: float) -> float:
    """Tokens per row the average verify computes: 1 + γ · ``proposal_rate`` (the share of the γ drafts offered).

    The verify forward computes the proposed positions only (ragged rows), so its cost follows the mean
    proposal, not the longest one of the batch.
    """
    if gamma == 0:
        return 1.0
    if not 0.0 <= proposal_rate <= 1.0:
        raise LattsError(f"proposal rate must be in [0, 1], got {proposal_rate}")
    return 1.0 + gamma * proposal_rate


def _step_features(branches: int, k: float, context: float, switch_rows: int = 0, own: float = 0.0) -> list[float]:
    n = branches * k
    small = 1.0 if n <= switch_rows else 0.0
    return [1.0 - small, n * (1.0 - small), n * context / 1000.0, branches, small, n * small, n * own / 1000.0]


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Fitted costs (seconds); see the module docstring for the formula."""

    overhead: float
    w_token: float
    w_attn: float
    w_row: float
    prefill_base: float
    prefill_per_token: float
    draft_per_row: float = 0.0  # drafter cost per row and round (per drafted token: × γ)
    small_overhead: float = 0.0  # the memory term and slope of forwards of <= switch_rows tokens
    small_w_token: float = 0.0
    switch_rows: int = 0
    loop_base: float = 0.0  # engine loop beyond the forward, per step: loop_base + loop_per_row · B
    loop_per_row: float = 0.0
    spec_base: float = 0.0  # the same per speculative round (drafting and acceptance included)
    spec_per_row: float = 0.0
    w_own: float = 0.0  # attention over each row's own tokens; 0: not measured, own tokens count as context

    @classmethod
    def fit(
        cls,
        steps: Sequence[StepSample],
        prefills: Sequence[PrefillSample] = (),
        draft_per_row: float = 0.0,
        switch_rows: int = 0,
        loops: Sequence[LoopSample] = (),
    ) -> LatencyModel:
        """Least-squares fit (relative error weighted, coefficients clipped at zero) to measured forwards.

        ``switch_rows``: the engine's weight-format switch (``LoadedModel.quant_max_rows``; 0 = one format).
        ``loops``: the engine loop's own cost per step and per speculative round (fitted linear in B).
        """
        if len(steps) < 4:
            raise LattsError(f"a latency fit needs at least 4 step measurements, got {len(steps)}")
        feats = [_step_features(s.branches, s.k, s.context, switch_rows, s.own) for s in steps]
        coef = _nonneg_lstsq(feats, [s.seconds for s in steps])
        if len(prefills) >= 2:
            p0, p1 = _nonneg_lstsq([[1.0, p.tokens] for p in prefills], [p.seconds for p in prefills])
        elif prefills:
            p0, p1 = 0.0, prefills[0].seconds / prefills[0].tokens
        else:
            p0, p1 = 0.0, 0.0
        overhead, w_token, w_attn, w_row, small_overhead, small_w_token, w_own = coef
        loop = _linear_in_b([x for x in loops if x.gamma == 0])
        spec = _linear_in_b([x for x in loops if x.gamma > 0])
        return cls(overhead, w_token, w_attn, w_row, prefill_base=p0, prefill_per_token=p1,
                   draft_per_row=draft_per_row, small_overhead=small_overhead, small_w_token=small_w_token,
                   switch_rows=switch_rows, loop_base=loop[0], loop_per_row=loop[1], spec_base=spec[0],
                   spec_per_row=spec[1], w_own=w_own)

    def loop(self, branches: int, gamma: int = 0) -> float:
        """Seconds the engine spends per step (γ = 0) or round (γ > 0) beyond the forward."""
        if gamma == 0:
            return self.loop_base + self.loop_per_row * branches
        if self.spec_base or self.spec_per_row:
            return self.spec_base + self.spec_per_row * branches
        return self.loop_base + self.loop_per_row * branches + self.draft_per_row * branches * gamma

    def step(self, branches: int, k: float = 1, context: float = 512, own: float = 0) -> float:
        """Seconds for one forward of ``branches`` rows × ``k`` tokens after a ``context``-token prompt, each
        row holding ``own`` tokens of its own (k and own may be means)."""
        if not self.w_own:
            context, own = context + own, 0
        w = (self.overhead, self.w_token, self.w_attn, self.w_row, self.small_overhead, self.small_w_token, self.w_own)
        return float(sum(a * b for a, b in zip(w, _step_features(branches, k, context, self.switch_rows, own))))

    def prefill(self, tokens: int) -> float:
        """Seconds to prefill ``tokens`` prompt tokens."""
        return self.prefill_base + self.prefill_per_token * tokens

    def predict(
        self,
        branches: int,
        gamma: int,
        think: int,
        alpha: float = 0.0,
        prompt_len: int = 64,
        answer_tokens: int = 16,
        answer_prompt_tokens: int = 8,
        tokens_per_round: float | None = None,
        forced_share: float = 1.0,
        verify_width: float | None = None,
    ) -> float:
        """Wall time of a whole run: prefill, ``think`` tokens of (speculative) decoding, a forced answer.

        ``tokens_per_round``: measured tokens a row gains per round (the mean accepted length, bonus
        included). It overrides the i.i.d. formula from ``alpha``, which assumes γ proposals every
        round: a drafter that often proposes fewer (an n-gram without a match) gains less.
        ``forced_share``: the chance that the run ends with a forced answer (branches that stop by
        themselves before the budget need none).
        ``verify_width``: tokens per row of the average verify forward (:func:`expected_verify_width`);
        γ + 1, every row offered all γ drafts, when not given.
        """
        per_round = tokens_per_round if gamma and tokens_per_round else expected_tokens_per_round(alpha, gamma)
        width = verify_width if gamma and verify_width else gamma + 1
        rounds = think / per_round
        decode = rounds * (self.step(branches, width, prompt_len, think / 2) + self.loop(branches, gamma))
        answer = 0.0
        if answer_prompt_tokens:  # the forced answer's prompt, fed in one forward
            answer += self.step(branches, answer_prompt_tokens, prompt_len, think) + self.loop(branches)
        answer += answer_tokens * (self.step(branches, 1, prompt_len, think) + self.loop(branches))
        return self.prefill(prompt_len) + decode + forced_share * answer

    def errors(self, steps: Iterable[StepSample]) -> list[float]:
        """Relative errors |predicted − measured| / measured of single forwards (held-out checks)."""
        return [abs(self.step(s.branches, s.k, s.context, s.own) - s.seconds) / s.seconds for s in steps]

    def median_error(self, steps: Iterable[StepSample]) -> float:
        """Median relative error over ``steps``."""
        errs = self.errors(steps)
        return statistics.median(errs) if errs else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready coefficients."""
        return asdict(self)


def _linear_in_b(samples: Sequence[LoopSample]) -> tuple[float, float]:
    """(base, per_row) of seconds = base + per_row · B, both >= 0; zeros without samples."""
    if not samples:
        return 0.0, 0.0
    if len({x.branches for x in samples}) < 2 or all(x.seconds <= 0 for x in samples):
        return statistics.fmean(x.seconds for x in samples), 0.0
    base, per_row = _nonneg_lstsq([[1.0, x.branches] for x in samples], [max(x.seconds, 1e-6) for x in samples])
    return base, per_row


def _nonneg_lstsq(rows: list[list[float]], target: list[float]) -> list[float]:
    """Least squares on relative error, dropping negative coefficients until all are >= 0 (active set)."""
    a = np.asarray(rows, dtype=float)
    y = np.asarray(target, dtype=float)
    if np.any(y <= 0):
        raise LattsError("measured times must be > 0")
    scale = 1.0 / y  # weight each sample by 1/measured: fit relative, not absolute, error
    active = [j for j in range(a.shape[1]) if np.any(a[:, j])]  # a feature no sample has stays 0
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active] * scale[:, None], y * scale, rcond=None)
        if np.all(sol >= 0):
            coef[:] = 0
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef.tolist()
