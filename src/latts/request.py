"""What a backend is asked to decode: one :class:`GenerateRequest`, the same for every backend.

Everything a request can get wrong without a tokenizer is checked here, once, when it is built; what
needs the model (prompt token ids in its vocabulary, the context length) or a particular backend (a
drafter for the embedded engine, the server's γ) is checked by the backend that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from latts.config import MAX_GAMMA, BudgetForcing, Pruning, SamplingParams, check_gamma_policy, check_generation_args
from latts.errors import LattsError
from latts.types import Branch

if TYPE_CHECKING:
    import torch

GREEDY = SamplingParams(temperature=0.0)

# ``generate``'s callback: sees the branches after every step (live views, early stopping); returning
# True ends the request (unfinished branches become ``cancelled``). Keep it cheap.
OnStep = Callable[[list[Branch]], bool | None]


class Drafter(Protocol):
    """Proposes draft tokens for a batch of rows and learns how many were accepted.

    The engine's cost γ policy also reads, where a drafter has them, ``match_lengths`` (per row, the
    length of the match its drafts came from) and ``draft_limits`` (per row, the most drafts it could
    have offered this round, from its history alone). A drafter whose number of drafts depends on the
    values it drew must give ``draft_limits``; without it the number offered stands in.
    """

    name: str

    def begin(self, prompt: list[int], rows: int, max_new_tokens: int) -> None:
        """Start a request: ``rows`` branches continuing ``prompt``."""

    def propose(
        self, histories: list[list[int]], gamma: int, sampling: SamplingParams, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Drafts ``[n, gamma]`` (padded), proposals per row ``[n]`` and draft distributions ``[n, gamma, V]``
        (:class:`latts.engine.speculation.sampler.DraftProbs` or its sparse form).

        ``histories[slot]`` is the row's prompt plus generated tokens. The distributions are ``None``
        for a deterministic drafter (its proposal is one-hot).
        """

    def observe(self, lengths_before: list[int], accepted: list[int]) -> None:
        """After verification: row ``slot`` had ``lengths_before[slot]`` tokens and kept ``accepted[slot]`` drafts."""

    def move_row(self, src: int, dst: int) -> None:
        """Batch compaction: row ``src`` now lives in slot ``dst``."""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """Decode ``branches`` continuations of ``prompt`` together.

    Args:
        prompt: text (formatted with the chat template when ``chat``) or token ids (any sequence; kept
            as a tuple).
        branches: B, the number of continuations decoded in one batch.
        max_new_tokens: per-branch token budget (with ``budget``: raised to fit thinking + answer).
        sampling: temperature / top-p / top-k / seed; ``None`` means greedy.
        stop: strings that end a branch; its ``text`` stops before the first one (any sequence; kept as
            a tuple, empty strings dropped).
        deadline: ``time.monotonic()`` value by which all work must end. With ``budget``, branches
            are forced to answer once the time left only suffices for that.
        chat: apply the chat template to a text prompt.
        ignore_eos: decode past end-of-sequence tokens (fixed-length runs for benchmarks).
        gamma: draft tokens per row and step (speculative decoding; 0 = plain decoding).
        drafter: who proposes the drafts (the embedded engine needs one when ``gamma > 0``; a server
            drafts for itself).
        budget: s1 budget forcing (min/max thinking tokens, forced answers).
        logprobs: accumulate each branch's sampled-token log-probabilities (under the model's own
            distribution, temperature 1) in ``Branch.logprob_sum`` — weighted voting uses them.
        checkpoints: thinking lengths (with ``budget``, below its ``max_think``) at which every branch
            still thinking is copied into a probe that is forced to answer right there, while the
            branch itself goes on: one wide run then yields the answers of every shorter budget (the
            accuracy surface). Probes come back in ``Generation.probes``; each is answered exactly as
            a run with ``max_think`` = its checkpoint would answer. Plain decoding only (``gamma``
            0): speculation changes latency, not answers. Embedded engine only. Kept sorted.
        pruning: stop thinking branches whose confidence falls under the group's bar (embedded
            engine; see :class:`~latts.config.Pruning`).
        gamma_policy: ``cost`` (default): each round every row verifies as many of its up to ``gamma``
            drafts as pay for themselves on this machine's measured costs (none when a plain step is
            faster; see :mod:`latts.engine.speculation.gamma_policy`); ``fixed``: every draft the drafter offers
            (reproducible by seed whatever the timing; benchmarks of a fixed γ).
    """

    prompt: str | tuple[int, ...]
    branches: int = 1
    max_new_tokens: int = 256
    sampling: SamplingParams = GREEDY
    stop: tuple[str, ...] = ()
    deadline: float | None = None
    chat: bool = True
    ignore_eos: bool = False
    gamma: int = 0
    drafter: Drafter | None = None
    budget: BudgetForcing | None = None
    logprobs: bool = False
    checkpoints: tuple[int, ...] = ()
    pruning: Pruning | None = None
    gamma_policy: str = "cost"

    def __post_init__(self) -> None:
        # normalised first (callers pass lists and None), then checked
        if not isinstance(self.prompt, str):
            object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        if self.sampling is None:
            object.__setattr__(self, "sampling", GREEDY)
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "checkpoints", tuple(sorted(set(self.checkpoints))))
        check_generation_args(self.branches, self.max_new_tokens)
        if not 0 <= self.gamma <= MAX_GAMMA:
            raise LattsError(f"gamma must be between 0 and {MAX_GAMMA}, got {self.gamma}")
        check_gamma_policy(self.gamma_policy)
        if not (self.prompt.strip() if isinstance(self.prompt, str) else self.prompt):
            raise LattsError("empty prompt")
        if self.checkpoints:
            if self.budget is None or self.gamma:
                raise LattsError("checkpoints need budget forcing and plain decoding (gamma 0)")
            if self.checkpoints[0] < 1 or self.checkpoints[-1] >= self.budget.max_think:
                last = self.budget.max_think - 1
                raise LattsError(f"checkpoints must be between 1 and max_think - 1 ({last})")
