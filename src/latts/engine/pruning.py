"""Online confidence pruning of branches (DeepConf, arXiv 2508.15260): the engine's bookkeeping for
:class:`~latts.config.Pruning`.

Low-confidence reasoning traces are more often wrong, and a branch that stops early frees its row:
later steps of the batch get cheaper, which a deadline turns into more thinking for the others.
DeepConf sets its bar from a few complete warm-up traces; under a deadline there is no time for
those, so the bar here comes from the group's own first tokens (every branch's first ``warmup``).
"""

from __future__ import annotations

from collections import deque

import torch

from latts.config import Pruning


def token_confidence(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """DeepConf's token confidence for logits ``[m, V]``: minus the mean log-probability of the top-k tokens ``[m]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.topk(min(top_k, logp.shape[-1]), dim=-1).values.mean(-1)


class ConfidencePruner:
    """Per-branch sliding-window confidence, the group's bar, and which thinking branches fall under it."""

    def __init__(self, pruning: Pruning) -> None:
        self.pruning = pruning
        self._window: dict[int, deque[float]] = {}
        self._seen: dict[int, int] = {}  # tokens observed per branch
        self._lowest: dict[int, float] = {}  # lowest full-window mean per branch
        self.bar: float | None = None  # set once the warm-up is over

    def observe(self, branch: int, logits: torch.Tensor) -> None:
        """Add the confidences of the tokens branch ``branch`` just kept, chosen from ``logits`` ``[k, V]``."""
        window = self._window.setdefault(branch, deque(maxlen=self.pruning.window))
        for c in token_confidence(logits, self.pruning.top_k).tolist():
            window.append(c)
            self._seen[branch] = self._seen.get(branch, 0) + 1
            if len(window) == window.maxlen:
                mean = sum(window) / len(window)
                self._lowest[branch] = min(self._lowest.get(branch, mean), mean)

    def group_confidence(self, branch: int) -> float | None:
        """The mean confidence of the branch's last ``window`` tokens (None before it has that many)."""
        window = self._window.get(branch)
        return sum(window) / len(window) if window is not None and len(window) == window.maxlen else None

    def to_prune(self, thinking: list[int], running: int) -> list[int]:
        """Which of the ``thinking`` branches stop now, leaving at least ``min_branches`` of the ``running`` ones."""
        p = self.pruning
        if self.bar is None:
            if len(self._lowest) < 2 or any(self._seen.get(i, 0) < p.warmup for i in thinking):
                return []
            self.bar = float(torch.tensor(list(self._lowest.values())).quantile(p.below))
        under = [(conf, i) for i in thinking if (conf := self.group_confidence(i)) is not None and conf < self.bar]
        allowed = max(0, running - p.min_branches)
        return [i for _, i in sorted(under)[:allowed]]  # the least confident first
