"""Results of generation: one :class:`Branch` per reasoning branch, gathered in a :class:`Generation`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FinishReason = Literal["eos", "stop", "length", "deadline"]


@dataclass(slots=True)
class Branch:
    """One decoded continuation of the prompt.

    ``token_times[i]`` is when token ``i`` was produced, in seconds since the request started
    (model already loaded), so latency per token and time-to-answer can be read off directly.
    ``finish_reason``: ``eos`` (end-of-sequence token), ``stop`` (a stop string; ``text`` ends before
    it), ``length`` (token budget), ``deadline`` (the wall-clock deadline stopped it).
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    token_times: list[float] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        """Number of generated tokens."""
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed of this branch, from its first to its last token."""
        if len(self.token_times) < 2:
            return 0.0
        span = self.token_times[-1] - self.token_times[0]
        return (len(self.token_times) - 1) / span if span > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view, with the derived speed."""
        d = asdict(self)
        d["n_tokens"] = self.n_tokens
        d["tokens_per_s"] = round(self.tokens_per_s, 3)
        return d


@dataclass(slots=True)
class Generation:
    """All branches of one request plus where the time went."""

    branches: list[Branch]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    steps: int

    @property
    def total_tokens(self) -> int:
        """Generated tokens summed over branches."""
        return sum(b.n_tokens for b in self.branches)

    @property
    def latency_s(self) -> float:
        """Wall time of the request, prefill included."""
        return self.prefill_s + self.decode_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "prefill_s": round(self.prefill_s, 4),
            "decode_s": round(self.decode_s, 4),
            "latency_s": round(self.latency_s, 4),
            "steps": self.steps,
            "total_tokens": self.total_tokens,
            "tokens_per_s": round(self.total_tokens / self.decode_s, 3) if self.decode_s > 0 else 0.0,
            "branches": [b.to_dict() for b in self.branches],
        }
