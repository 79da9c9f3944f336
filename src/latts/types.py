"""Results: one :class:`Branch` per reasoning branch, gathered in a :class:`Generation`; a question's voted
:class:`Solution`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from latts.config import Plan

FinishReason = Literal["eos", "stop", "length", "deadline", "answered", "cancelled", "pruned"]


@dataclass(slots=True)
class Branch:
    """One decoded continuation of the prompt.

    ``token_times[i]`` is when token ``i`` was produced, in seconds since the request started
    (model already loaded), so latency per token and time-to-answer can be read off directly.
    ``finish_reason``: ``eos`` (end-of-sequence token), ``stop`` (a stop string; ``text`` ends before
    it), ``length`` (token budget), ``deadline`` (the wall-clock deadline stopped it), ``answered``
    (budget forcing made it answer and the answer is complete), ``cancelled`` (the caller stopped it,
    e.g. the vote was already decided), ``pruned`` (its confidence fell under the group's bar, see
    :class:`~latts.config.Pruning`; it does not vote).

    Budget forcing: ``think_tokens`` counts the thinking part, ``ignored`` the suppressed stops,
    ``forced`` why the answer was forced (``max_think``, ``deadline`` or ``checkpoint``; None if it
    ended by itself). A checkpoint probe (see ``GenerateRequest.checkpoints``) is a copy of branch
    ``parent`` forced to answer after ``checkpoint`` thinking tokens while the branch itself went on.
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    token_times: list[float] = field(default_factory=list)
    spec_rounds: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0
    think_tokens: int = 0
    ignored: int = 0
    forced: str | None = None
    logprob_sum: float = 0.0
    logprob_count: int = 0
    parent: int | None = None
    checkpoint: int | None = None

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability of the sampled tokens (when the request asked for log-probabilities)."""
        return self.logprob_sum / self.logprob_count if self.logprob_count else None

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
        """JSON-ready view, with the derived speed (and acceptance when speculation ran)."""
        d = asdict(self)
        d["n_tokens"] = self.n_tokens
        d["tokens_per_s"] = round(self.tokens_per_s, 3)
        if self.spec_rounds:
            d["acceptance_rate"] = round(self.spec_accepted / max(1, self.spec_proposed), 4)
            d["mean_accepted_length"] = round((self.spec_accepted + self.spec_rounds) / self.spec_rounds, 4)
        return d


@dataclass(slots=True)
class SpecStats:
    """Speculative-decoding metrics of one request, in vLLM's vocabulary.

    A *round* is one row verified once. ``mean_accepted_length`` counts the bonus/recovered token
    (tokens gained per row per verify), so plain decoding would score 1.0.
    """

    drafter: str
    gamma: int
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    proposed_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    draft_s: float = 0.0
    verify_s: float = 0.0
    verifies: int = 0  # verify forwards (one per step, over all rows)

    def __post_init__(self) -> None:
        self.proposed_at = self.proposed_at or [0] * self.gamma
        self.accepted_at = self.accepted_at or [0] * self.gamma

    def record(self, n_proposed: list[int], accepted: list[int], draft_s: float, verify_s: float) -> None:
        """Add one verify step over several rows."""
        self.verifies += 1
        self.rounds += len(accepted)
        self.proposed += sum(n_proposed)
        self.accepted += sum(accepted)
        for n, a in zip(n_proposed, accepted):
            for i in range(n):
                self.proposed_at[i] += 1
            for i in range(a):
                self.accepted_at[i] += 1
        self.draft_s += draft_s
        self.verify_s += verify_s

    @property
    def acceptance_rate(self) -> float:
        """α: accepted drafts over proposed drafts."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens gained per row per verify, bonus included."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0

    @property
    def proposal_rate(self) -> float:
        """Fraction of the γ drafts a row was offered per round (an n-gram drafter without a match offers none)."""
        return self.proposed / (self.rounds * self.gamma) if self.rounds and self.gamma else 0.0

    @property
    def mean_verify_width(self) -> float:
        """Tokens per row the average verify computes: the row's own proposal, plus one.

        What a verify costs: the forward runs its projections on the proposed positions only (ragged
        rows), so a row without a proposal costs about what its plain step costs (only the
        attention over its own new tokens runs on the padded layout).
        """
        return 1.0 + self.proposed / self.rounds if self.rounds else 0.0

    def acceptance_by_position(self) -> list[float]:
        """Fraction of proposals accepted at each draft position 1..γ."""
        return [a / p if p else 0.0 for a, p in zip(self.accepted_at, self.proposed_at)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view with the derived rates."""
        return {
            "drafter": self.drafter,
            "gamma": self.gamma,
            "rounds": self.rounds,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "acceptance_by_position": [round(x, 4) for x in self.acceptance_by_position()],
            "proposal_rate": round(self.proposal_rate, 4),
            "mean_verify_width": round(self.mean_verify_width, 4),
            "draft_s": round(self.draft_s, 4),
            "verify_s": round(self.verify_s, 4),
        }


@dataclass(frozen=True, slots=True)
class MachineLoad:
    """What the machine's load did to a request: the cores other processes held (an estimate over the last
    fraction of a second), the threads latts' forwards ran on (fewer than ``configured`` while others held
    cores), and how much slower its plain forwards ran than the same rows' at warm-up (median; None before one;
    about 1 on a quiet machine, somewhat more at long contexts)."""

    others_cores: float
    threads: int
    configured: int
    slowdown: float | None = None

    @property
    def loaded(self) -> bool:
        """True when other processes held a core's worth or more, or steps ran more than 1.5x warm-up's."""
        return self.others_cores >= 0.5 or (self.slowdown is not None and self.slowdown > 1.5)

    def describe(self) -> str:
        """One line for users: why an answer may be thin."""
        slower = f"; steps {self.slowdown:g}x slower than at warm-up" if self.slowdown is not None else ""
        return (f"machine loaded: other processes held {self.others_cores:.1f} cores, latts ran on {self.threads} "
                f"of {self.configured} threads{slower}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"others_cores": self.others_cores, "threads": self.threads, "configured_threads": self.configured,
                "slowdown": self.slowdown, "loaded": self.loaded}


@dataclass(slots=True)
class Generation:
    """All branches of one request plus where the time went."""

    branches: list[Branch]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    steps: int
    spec: SpecStats | None = None
    probes: list[Branch] = field(default_factory=list)  # answers forced at checkpoints (surface runs)
    load: MachineLoad | None = None  # what the machine's load did to the request (the embedded engine)

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
            "speculation": self.spec.to_dict() if self.spec is not None else None,
            "branches": [b.to_dict() for b in self.branches],
            **({"probes": [b.to_dict() for b in self.probes]} if self.probes else {}),
            **({"load": self.load.to_dict()} if self.load is not None else {}),
        }


@dataclass(slots=True)
class Solution:
    """The voted answer of one question and how it was reached."""

    question: str
    answer: str | None
    votes: list[tuple[str, float]]
    abstained: int
    branch_answers: list[str | None]
    branches: list[Branch]
    latency_s: float
    prefill_s: float
    tokens: int
    plan: Plan
    deadline_s: float | None
    early_stopped: bool
    steps: int
    spec: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    load: MachineLoad | None = None  # what the machine's load did to it (see MachineLoad)

    @property
    def cut_by_deadline(self) -> bool:
        """True when the deadline ended a branch before it answered: the answer (or its absence) is what the
        time allowed."""
        return any(b.finish_reason == "deadline" and a is None for b, a in zip(self.branches, self.branch_answers))

    @property
    def finish_reasons(self) -> list[str | None]:
        """Why each branch ended."""
        return [b.finish_reason for b in self.branches]

    def to_dict(self, with_text: bool = True) -> dict[str, Any]:
        """JSON-ready view: answer, votes, latency, plan and a summary per branch."""
        return {
            "question": self.question,
            "answer": self.answer,
            "votes": [[a, c] for a, c in self.votes],
            "abstained": self.abstained,
            "latency_s": round(self.latency_s, 4),
            "prefill_s": round(self.prefill_s, 4),
            "tokens": self.tokens,
            "steps": self.steps,
            "deadline_s": self.deadline_s,
            "early_stopped": self.early_stopped,
            "cut_by_deadline": self.cut_by_deadline,
            "load": self.load.to_dict() if self.load is not None else None,
            "plan": self.plan.to_dict(),
            "spec": self.spec,
            "branches": [
                {
                    "index": b.index,
                    "answer": a,
                    "finish_reason": b.finish_reason,
                    "n_tokens": b.n_tokens,
                    "think_tokens": b.think_tokens,
                    "ignored": b.ignored,
                    "forced": b.forced,
                    **({"text": b.text} if with_text else {}),
                }
                for b, a in zip(self.branches, self.branch_answers)
            ],
        }
