"""Validated, immutable settings shared by the engine, the controller, the planner and the CLI.

:class:`Plan` is the one description of a test-time-scaling configuration — B branches, γ draft
tokens, thinking budget L — that every layer passes around; the evaluation grid, the optimizer's
candidates and the surface's wide runs compose it rather than redefine it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from latts.errors import LattsError

MAX_BRANCHES = 1024
MAX_GAMMA = 32  # draft tokens per step; past ~8 acceptance makes more pointless
ANSWER_PROMPT = "\n\nFinal answer: \\boxed{"  # what budget forcing appends to make a branch answer now


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How the next token is chosen: ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable those filters.

    ``logit_bias`` adds a number to chosen tokens' logits before anything else (OpenAI's ``logit_bias``:
    -100 bans a token, +100 all but forces it), on every engine and passed on to a remote server. Give
    it as a ``{token id: bias}`` mapping; it is kept as sorted ``(id, bias)`` pairs so that the
    settings stay frozen and hashable.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    logit_bias: Mapping[int, float] | tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        pairs = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
        try:
            bias = tuple(sorted({int(t): float(v) for t, v in pairs}.items()))
        except (TypeError, ValueError):
            raise LattsError(f"logit bias must map token ids to numbers, got {self.logit_bias!r}") from None
        if any(t < 0 for t, _ in bias):
            raise LattsError(f"logit bias token ids must be >= 0, got {[t for t, _ in bias if t < 0]}")
        if any(v != v for _, v in bias):
            raise LattsError("logit bias values must be numbers, got NaN")
        object.__setattr__(self, "logit_bias", bias)
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


DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16")
GAMMA_POLICIES = ("cost", "fixed")


def check_gamma_policy(name: str) -> str:
    """``name`` if it is a γ policy (``cost``: a row verifies only the drafts that pay on this machine;
    ``fixed``: every draft offered), else a one-line error."""
    if name not in GAMMA_POLICIES:
        raise LattsError(f"unknown gamma policy '{name}': use {' or '.join(GAMMA_POLICIES)}")
    return name


def check_dtype(name: str) -> str:
    """``name`` if it names a model dtype (``auto``, ``float32``/``fp32``, ``bfloat16``/``bf16``), else a
    one-line error (checked before any model work, without torch)."""
    if name not in DTYPE_NAMES:
        raise LattsError(f"unknown dtype '{name}': use auto, float32 or bfloat16")
    return name


def check_deadline(seconds: float | None) -> None:
    """Reject a deadline that is not a positive number of seconds (None means no deadline)."""
    if seconds is not None and not seconds > 0:
        raise LattsError(f"deadline must be > 0 seconds, got {seconds}")


def check_generation_args(branches: int, max_new_tokens: int) -> None:
    """Reject branch counts and token budgets that cannot make sense, naming the problem."""
    if branches <= 0:
        raise LattsError(f"branches (-B) must be >= 1, got {branches}")
    if branches > MAX_BRANCHES:
        raise LattsError(f"branches (-B) must be <= {MAX_BRANCHES}, got {branches}")
    if max_new_tokens <= 0:
        raise LattsError(f"max tokens must be >= 1, got {max_new_tokens}")


@dataclass(frozen=True, slots=True)
class Pruning:
    """Online pruning of low-confidence branches (DeepConf, arXiv 2508.15260, in its online form).

    A token's confidence is the negative mean log-probability of the ``top_k`` most likely tokens at
    its position (a peaked distribution scores high); a branch's *group confidence* is the mean over
    its last ``window`` tokens. Once every branch has thought ``warmup`` tokens, the bar is the
    ``below`` quantile of the branches' lowest group confidences so far (the group's own warm-up
    sets it: no offline calibration); from then on a thinking branch whose group confidence falls
    under the bar stops (finish reason ``pruned``), is compacted away, and does not vote. Never
    fewer than ``min_branches`` branches are left running.
    """

    below: float = 0.1
    window: int = 16
    warmup: int = 32
    top_k: int = 20
    min_branches: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.below < 1:
            raise LattsError(f"pruning quantile must be in (0, 1), got {self.below}")
        if self.window < 1 or self.warmup < self.window:
            raise LattsError(f"pruning needs window >= 1 and warmup >= window, got {self.window} and {self.warmup}")
        if self.top_k < 1 or self.min_branches < 1:
            raise LattsError("pruning needs top_k >= 1 and min_branches >= 1")


@dataclass(frozen=True, slots=True)
class BudgetForcing:
    """s1-style control of how long each branch thinks (Muennighoff et al. 2025, "budget forcing").

    A branch that tries to stop (end-of-sequence, or ``</think>`` for models with thinking tags)
    before ``min_think`` tokens gets that token replaced by ``ignore`` and goes on; at ``max_think``
    tokens (or when the deadline leaves only time to answer) ``answer_prompt`` is appended and the
    branch decodes at most ``answer_tokens`` more tokens of answer. For a plain instruct model the
    "thinking" is the whole response body.
    """

    min_think: int = 0
    max_think: int = 512
    ignore: str = "Wait"
    answer_prompt: str = ANSWER_PROMPT
    answer_tokens: int = 16

    def __post_init__(self) -> None:
        if self.min_think < 0:
            raise LattsError(f"min_think must be >= 0, got {self.min_think}")
        if self.max_think < 1:
            raise LattsError(f"max_think must be >= 1, got {self.max_think}")
        if self.min_think > self.max_think:
            raise LattsError(f"min_think ({self.min_think}) must not exceed max_think ({self.max_think})")
        if self.answer_tokens < 1:
            raise LattsError(f"answer_tokens must be >= 1, got {self.answer_tokens}")
        if self.min_think > 0 and not self.ignore:
            raise LattsError("the ignore string must not be empty when min_think > 0")


@dataclass(frozen=True, slots=True)
class Plan:
    """One test-time-scaling configuration: B branches, γ draft tokens, thinking budget L, sampling."""

    branches: int = 8
    gamma: int = 0
    drafter: str = "ngram"
    max_think: int = 512
    min_think: int = 0
    answer_tokens: int = 16
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    early_stop: bool = True
    weighted: bool = False  # weight each vote by exp(mean token log-probability) of its branch
    prune: float = 0.0  # prune branches under this quantile of the group's confidence (Pruning.below); 0: never
    gamma_policy: str = "cost"  # cost: only drafts that pay are verified (latts.engine.speculation.gamma_policy); fixed: all

    def __post_init__(self) -> None:
        if self.branches < 1:
            raise LattsError(f"branches must be >= 1, got {self.branches}")
        check_gamma_policy(self.gamma_policy)
        BudgetForcing(self.min_think, self.max_think, answer_tokens=self.answer_tokens)  # validates
        SamplingParams(self.temperature, self.top_p, seed=self.seed)
        if self.prune:
            Pruning(self.prune)  # validates

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


def default_plan(deadline_s: float | None) -> Plan:
    """The plan used when only a deadline is given and no saved latency-optimal plan fits: 8 voting branches,
    thinking until the deadline forces their answers (``latts optimize`` measures better ones per machine)."""
    return Plan(branches=8, max_think=1024 if deadline_s is not None else 512)
