"""Budget forcing and the other finishing rules, applied to each step's new tokens.

s1's budget forcing (Muennighoff et al. 2025) in token ids: a branch that tries to stop before
``min_think`` thinking tokens gets the ignore string instead and goes on; at ``max_think`` (or when
the deadline leaves only time to answer, or at a checkpoint) the answer prompt is appended and the
branch answers. Where a forced answer ends is :func:`answer_end`, the one rule both backends apply.
The engine decides *when* to step; this module decides what each new token does to its branch.
Everything here needs only the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from latts.config import BudgetForcing
from latts.tasks.grading import THINK_END
from latts.types import Branch


def opens_brace(answer_prompt: str) -> bool:
    """Whether the answer prompt opens a brace (``\\boxed{``): then the answer ends where it closes."""
    return answer_prompt.rstrip().endswith("{")


def answer_end(text: str, tokens: int, budget: BudgetForcing) -> int | None:
    """Where a forced answer ends, as a length of ``text`` (the answer's own text after the answer
    prompt, ``tokens`` tokens long); None while it goes on.

    An answer prompt that opens a brace ends the answer just past the brace that closes it; any other
    ends it at its first line end (the newline left out). Either way the answer ends, all of it, once
    its tokens reach ``budget.answer_tokens``.
    """
    if opens_brace(budget.answer_prompt):
        depth = 0
        for j, ch in enumerate(text):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth < 0:
                return j + 1
    elif "\n" in text:
        return text.index("\n")
    return len(text) if tokens >= budget.answer_tokens else None


def hit_stop(tokenizer: object, token_ids: list[int], stops: tuple[str, ...]) -> bool:
    """Whether the text of the last few tokens contains a stop string."""
    window = max(len(s) for s in stops) + 8
    tail = tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
    return any(s in tail for s in stops)


def branch_text(tokenizer: object, token_ids: list[int], tags: set[int]) -> str:
    """A branch's text without special tokens, but with its thinking tags (``tags``: :func:`thinking_tags`) even
    where the tokenizer marks them special: the answer is read after ``</think>``
    (:func:`~latts.tasks.grading.after_thinking`)."""
    if not tags or not tags & set(token_ids):
        return tokenizer.decode(token_ids, skip_special_tokens=True)
    parts, start = [], 0
    for j, tok in enumerate(token_ids + [-1]):
        if tok in tags or tok == -1:
            parts.append(tokenizer.decode(token_ids[start:j], skip_special_tokens=True))
            if tok != -1:
                parts.append(tokenizer.convert_ids_to_tokens(tok))
            start = j + 1
    return "".join(parts)


def thinking_tags(tokenizer: object) -> set[int]:
    """Ids of ``<think>`` and ``</think>`` where the tokenizer has them as special tokens (else empty)."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    if not special:
        return set()
    vocab = tokenizer.get_vocab()
    return {vocab[t] for t in ("<think>", THINK_END) if t in vocab} & special


@dataclass(slots=True)
class Row:
    """Per-branch decoding state: prompt + tokens so far, and how many positions have K/V in the cache."""

    history: list[int]
    fed: int
    phase: str = "think"  # think -> (respond, after </think>) or answer (forced)
    answer_start: int = 0  # token index where the forced answer's own tokens begin


@dataclass(frozen=True, slots=True)
class Forcing:
    """Budget forcing in token ids."""

    budget: BudgetForcing
    ignore: list[int]
    answer: list[int]
    think_end: int | None
    capacity: int  # tokens a branch can ever hold: thinking, one ignore overshoot, answer prompt, answer

    @classmethod
    def build(cls, tokenizer: object, budget: BudgetForcing) -> Forcing:
        """The ignore and answer texts tokenized, the thinking-end token found (models with ``</think>``)."""
        enc = lambda text: list(tokenizer.encode(text, add_special_tokens=False)) if text else []  # noqa: E731
        think_end = tokenizer.convert_tokens_to_ids(THINK_END) if THINK_END in tokenizer.get_vocab() else None
        answer = enc((THINK_END if think_end is not None else "") + budget.answer_prompt)
        ignore = enc(budget.ignore)
        capacity = budget.max_think + len(ignore) + len(answer) + budget.answer_tokens + 1
        return cls(budget, ignore, answer, think_end, capacity)

    @property
    def answer_steps(self) -> float:
        """Decode steps a forced answer costs: its prompt (one forward) and its tokens."""
        return self.budget.answer_tokens + 2


class Appender:
    """Adds each step's tokens to the branches and applies finishing and budget-forcing rules.

    Finish reasons, in order: ``eos``, ``stop`` (a stop string), ``answered`` (a forced answer ended,
    :func:`answer_end`), ``length``. Checkpoints passed while thinking are queued for the engine to
    copy into probes (:meth:`take_forks`).
    """

    def __init__(self, tokenizer: object, out: list[Branch], rows: list[Row], max_new_tokens: int,
                 stops: tuple[str, ...], eos: frozenset[int], forcing: Forcing | None,
                 checkpoints: frozenset[int] = frozenset()) -> None:
        self.tokenizer, self.out, self.rows = tokenizer, out, rows
        self.max_new_tokens, self.stops, self.eos, self.forcing = max_new_tokens, stops, eos, forcing
        self.checkpoints = checkpoints
        self._forks: list[tuple[int, int]] = []  # (branch, checkpoint) reached this step, still thinking

    def take_forks(self) -> list[tuple[int, int]]:
        """(branch, checkpoint) pairs reached this step, each to be copied into a probe; clears the list."""
        forks, self._forks = self._forks, []
        return forks

    def _note_checkpoints(self, i: int, before: int) -> None:
        """Queue a probe of branch ``i`` for every checkpoint its thinking count just passed."""
        now = self.out[i].think_tokens
        self._forks.extend((i, c) for c in sorted(self.checkpoints) if before < c <= now)

    def __call__(self, live: list[int], new_tokens: list[list[int]], at: float) -> list[int]:
        """Append ``new_tokens[slot]`` to branch ``live[slot]``; per row, how many of them were kept."""
        return [self._row(i, toks, at) for i, toks in zip(live, new_tokens)]

    def _push(self, i: int, toks: list[int], at: float) -> None:
        b, row = self.out[i], self.rows[i]
        b.token_ids.extend(toks)
        row.history.extend(toks)
        b.token_times.extend([at] * len(toks))

    def force_answer(self, i: int, why: str, at: float) -> None:
        """Make branch ``i`` answer now: append the answer prompt (once) and switch it to answering."""
        row, b, f = self.rows[i], self.out[i], self.forcing
        if f is None or row.phase != "think" or b.finish_reason:
            return
        self._push(i, f.answer, at)
        row.phase = "answer"
        row.answer_start = b.n_tokens
        b.forced = why

    def _row(self, i: int, toks: list[int], at: float) -> int:
        b, row, f = self.out[i], self.rows[i], self.forcing
        for kept, tok in enumerate(toks):
            stopping = tok in self.eos or (f is not None and tok == f.think_end)
            if f is not None and row.phase == "think" and stopping:
                if b.think_tokens < f.budget.min_think:  # s1: suppress the stop, make it go on
                    self._push(i, f.ignore, at)
                    b.think_tokens += len(f.ignore)
                    b.ignored += 1
                    self._note_checkpoints(i, b.think_tokens - len(f.ignore))
                    self._check_think_limit(i, at)
                    return kept
                if tok == f.think_end:
                    self._push(i, [tok], at)
                    row.phase = "respond"
                    continue
            self._push(i, [tok], at)
            if tok in self.eos:
                b.finish_reason = "eos"
            elif self.stops and hit_stop(self.tokenizer, b.token_ids, self.stops):
                b.finish_reason = "stop"
            elif row.phase == "answer" and self._answer_done(i):
                b.finish_reason = "answered"
            elif b.n_tokens >= self.max_new_tokens:
                b.finish_reason = "length"
            elif row.phase == "think" and f is not None:
                b.think_tokens += 1
                self._note_checkpoints(i, b.think_tokens - 1)
                if self._check_think_limit(i, at):
                    return kept + 1
            if b.finish_reason:
                return kept + 1
        return len(toks)

    def _check_think_limit(self, i: int, at: float) -> bool:
        """Force the answer when the thinking budget is spent; True if it was."""
        if self.out[i].think_tokens >= self.forcing.budget.max_think:
            self.force_answer(i, "max_think", at)
            return True
        return False

    def _answer_done(self, i: int) -> bool:
        """Whether branch ``i``'s forced answer has ended (:func:`answer_end`)."""
        answer = self.out[i].token_ids[self.rows[i].answer_start :]
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        return answer_end(text, len(answer), self.forcing.budget) is not None
