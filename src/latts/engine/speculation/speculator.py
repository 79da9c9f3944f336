"""One speculative round over the live rows of a batch, and what the engine learns from the rounds it runs.

A round drafts up to γ tokens a row, keeps (under the ``cost`` γ policy, :mod:`.gamma_policy`) only the
drafts expected to pay for their positions, verifies every row's kept drafts in one ragged forward, and
accepts a prefix of each row's drafts plus one token of its own (:mod:`.sampler`), so the output
distribution is the target's. A round whose drafts would not pay is a plain step. :class:`Speculator` keeps,
across requests, the measured cost shape of a forward, the drafts' acceptance per match length, a round's
seconds beyond its forward, and how much slower verifies run than the shape predicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from latts.engine.speculation.gamma_policy import (AcceptanceStats, CostShape, choose_drafts, drafts_may_pay,
                                                   match_bucket)
from latts.engine.speculation.sampler import greedy_accept, rejection_sample, sample, target_probabilities
from latts.request import Drafter, GenerateRequest
from latts.types import SpecStats

EMA = 0.2  # weight of the newest round in the learned extra seconds and verify slowdown


class Round:
    """What one round gave the live rows: new tokens per row, the logits ``[n, w, V]`` they were chosen from,
    and per row the drafts proposed and accepted (empty for a round that became a plain step)."""

    __slots__ = ("new", "logits", "proposed", "accepted")

    def __init__(self, new: list[list[int]], logits: torch.Tensor, proposed: list[int] | None = None,
                 accepted: list[int] | None = None) -> None:
        self.new, self.logits = new, logits
        self.proposed, self.accepted = proposed or [], accepted or []


class Speculator:
    """Runs speculative rounds on one model and learns their costs (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cost_shape: CostShape | None = None  # forward seconds by positions (measured at warm-up)
        self.acceptance = {True: AcceptanceStats(), False: AcceptanceStats()}  # by greedy: drafts' acceptance
        self.spec_extra_s = {True: 0.0, False: 0.0}  # by greedy: a round's seconds beyond its forward
        self.verify_slower = 1.0  # verify forwards' seconds over what the cost shape predicts (learned)

    def measure(self) -> None:
        """Measure the cost shape of a forward on this machine (the engine's warm-up calls this)."""
        self.cost_shape = CostShape.measure(self.model)

    def start(self, request: GenerateRequest) -> None:
        """Before a request's clock starts: the cost shape if the ``cost`` policy needs it, and the verify
        slowdown half forgotten, so that one stall does not turn speculation off for good."""
        if request.gamma and request.gamma_policy == "cost":
            if self.cost_shape is None:
                self.measure()
            self.verify_slower = (1.0 + self.verify_slower) / 2

    def may_pay(self, request: GenerateRequest, rows: int, plain_s: float) -> bool:
        """Under the ``cost`` policy, whether any drafts could pay for their verify this round at ``rows`` live
        rows whose plain step takes ``plain_s`` now (see :func:`.gamma_policy.drafts_may_pay`); always under
        ``fixed``."""
        if request.gamma_policy != "cost" or self.cost_shape is None:
            return True
        greedy = request.sampling.greedy
        return drafts_may_pay(rows, request.gamma, self.acceptance[greedy], self.cost_shape,
                              self._extra_in_shape(greedy, rows, plain_s), self.verify_slower)

    def _scale(self, rows: int, plain_s: float) -> float:
        """How much slower than the cost shape's (measured at a short context) plain steps of ``rows`` run now."""
        assert self.cost_shape is not None
        return max(plain_s / self.cost_shape.plain(rows), 1e-3)

    def _extra_in_shape(self, greedy: bool, rows: int, plain_s: float) -> float:
        """A speculative round's extra seconds (drafting, acceptance) in the units of the cost shape."""
        return self.spec_extra_s[greedy] / self._scale(rows, plain_s)

    def round(self, request: GenerateRequest, drafter: Drafter, hists: Sequence[list[int]], last: torch.Tensor,
              start: torch.Tensor, cache: Any, gen: torch.Generator, spec: SpecStats, plain_s: float,
              plain_forward: Callable[[], torch.Tensor]) -> Round:
        """Draft, choose, verify and accept for the rows whose histories are ``hists`` (``last`` ``[n, 1]``: each
        row's one unfed token at position ``start`` ``[n]``). ``plain_forward`` runs a plain step instead (the
        engine's fastest path, timed by it) when no draft would pay."""
        gamma, sampling = request.gamma, request.sampling
        rows = len(hists)
        t0 = time.perf_counter()
        drafts, n_proposed, q = drafter.propose(list(hists), gamma, sampling, gen)  # [n, γ], [n], [n, γ, V]?
        buckets = [match_bucket(n) for n in getattr(drafter, "match_lengths", ())] or [0] * rows
        stats = self.acceptance[sampling.greedy]
        if request.gamma_policy == "cost" and self.cost_shape is not None:
            # decided on the most drafts each row could offer (a drafter's ``draft_limits``: known from the
            # history alone), not on how many it drew: when a sampled draft's value decides whether more
            # follow, verifying it only when more follow would verify it only for some of its values, and
            # rejection sampling would no longer reproduce the target's distribution
            offered = getattr(drafter, "draft_limits", None) or n_proposed.tolist()
            keep = choose_drafts(offered, buckets, stats, self.cost_shape,
                                 self._extra_in_shape(sampling.greedy, rows, plain_s), self.verify_slower)
            if not any(keep):  # a plain step after all: no verify, no rejection sampler
                drafter.observe([len(h) for h in hists], [0] * rows)
                logits = plain_forward()  # [n, V]
                return Round([[tok] for tok in sample(logits, sampling, gen).tolist()], logits[:, None])
            n_proposed = torch.minimum(n_proposed, torch.tensor(keep, dtype=torch.long))
        # verify only the proposed positions (ragged rows): padding would cost compute for nothing
        width = int(n_proposed.max())
        if width < gamma:
            drafts = drafts[:, :width]
            q = q[:, :width] if isinstance(q, torch.Tensor) else q  # sparse ones are read per position
        t1 = time.perf_counter()
        feed = torch.cat([last, drafts], 1)  # [n, width + 1]
        # [n, width + 1, V]; a round the policy left without drafts is a plain step
        logits = self.model.decode(feed, start, cache, n_proposed + 1 if width else None)
        t_forward = time.perf_counter()
        if sampling.greedy:
            accepted, nxt = greedy_accept(drafts, n_proposed, logits, sampling)
        else:
            accepted, nxt = rejection_sample(drafts, n_proposed, target_probabilities(logits, sampling), q, gen)
        t2 = time.perf_counter()
        acc, proposed = accepted.tolist(), n_proposed.tolist()
        drafter.observe([len(h) for h in hists], acc)
        stats.record(buckets, proposed, acc)
        spec.record(proposed, acc, t1 - t0, t2 - t1)
        self._learn(sampling.greedy, (t1 - t0) + (t2 - t_forward), t_forward - t1 if width else None,
                    rows + sum(proposed), rows, plain_s)
        table = drafts.tolist()
        return Round([table[r][: acc[r]] + [tok] for r, tok in enumerate(nxt.tolist())], logits, proposed, acc)

    def _learn(self, greedy: bool, extra_s: float, verify_s: float | None, positions: int, rows: int,
               plain_s: float) -> None:
        """What a round cost beyond its forward (drafting, acceptance), held against the drafts' gain; and how
        its verify compared with the cost shape's prediction (clamped: one stalled verify must not decide)."""
        self.spec_extra_s[greedy] += EMA * (extra_s - self.spec_extra_s[greedy])
        if verify_s is not None and self.cost_shape is not None:
            predicted = self._scale(rows, plain_s) * self.cost_shape(positions)
            ratio = min(max(verify_s / predicted, 0.5), 3.0)
            self.verify_slower += EMA * (ratio - self.verify_slower)
