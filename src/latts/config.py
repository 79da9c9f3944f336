"""Validated, immutable settings shared by the engine, the CLI and (later) the controller."""

from __future__ import annotations

from dataclasses import dataclass

from latts.errors import LattsError

MAX_BRANCHES = 1024
MAX_GAMMA = 32  # draft tokens per step; past ~8 acceptance makes more pointless


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the next token is chosen: ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise LattsError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LattsError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LattsError(f"top-k must be >= 0 (0 disables it), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the most likely token."""
        return self.temperature == 0


def check_generation_args(branches: int, max_new_tokens: int) -> None:
    """Reject branch counts and token budgets that cannot make sense, naming the problem."""
    if branches <= 0:
        raise LattsError(f"branches (-B) must be >= 1, got {branches}")
    if branches > MAX_BRANCHES:
        raise LattsError(f"branches (-B) must be <= {MAX_BRANCHES}, got {branches}")
    if max_new_tokens <= 0:
        raise LattsError(f"max tokens must be >= 1, got {max_new_tokens}")
