"""Terminal views of branches for the CLI: a rich live table while decoding, a summary after."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.live import Live
from rich.table import Table

from latts.types import Branch, Generation

if TYPE_CHECKING:
    from latts.types import Solution

_REFRESH_S = 0.25
T = TypeVar("T")


def _tail(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else "…" + flat[-width:]


class BranchView:
    """A live table of the branches being decoded, refreshed a few times a second."""

    def __init__(self, console: Console, tokenizer: object, branches: int) -> None:
        self.console = console
        self.tokenizer = tokenizer
        self.live = Live(console=console, auto_refresh=False, transient=True)
        self._last = 0.0

    def __enter__(self) -> "BranchView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def update(self, branches: list[Branch]) -> None:
        """Redraw, at most every 0.25 s (decoding text for many branches is not free)."""
        now = time.monotonic()
        if now - self._last < _REFRESH_S:
            return
        self._last = now
        table = Table("#", "tokens", "state", "latest text", expand=True)
        for b in branches:
            # a remote backend's branches carry their text as it streams; the engine's carry token ids
            text = b.text[-300:] if b.text else self.tokenizer.decode(b.token_ids[-40:], skip_special_tokens=True)
            table.add_row(str(b.index), str(b.n_tokens), b.finish_reason or "…", _tail(text))
        self.live.update(table, refresh=True)


def watch(console: Console | None, tokenizer: object, branches: int,
          run: Callable[[Callable[[list[Branch]], None] | None], T]) -> T:
    """``run(on_step)``'s result; with a ``console``, the branches shown live on it meanwhile (``on_step`` is
    the view's update), without one nothing shown (``on_step`` None)."""
    if console is None:
        return run(None)
    with BranchView(console, tokenizer, branches) as view:
        return run(view.update)


def print_summary(console: Console, result: Generation) -> None:
    """The final branches, then where the time went."""
    for b in result.branches:
        console.rule(f"branch {b.index} · {b.n_tokens} tokens · {b.finish_reason} · {b.tokens_per_s:.1f} tok/s")
        console.print(b.text.strip(), highlight=False, markup=False)
    tps = result.total_tokens / result.decode_s if result.decode_s > 0 else 0.0
    console.rule()
    console.print(
        f"{len(result.branches)} branches · prompt {result.prompt_tokens} tokens · prefill {result.prefill_s:.2f} s"
        f" · decode {result.decode_s:.2f} s for {result.total_tokens} tokens ({tps:.1f} tok/s summed)",
        highlight=False,
    )
    if result.spec is not None:
        sp = result.spec
        console.print(
            f"speculation {sp.drafter} γ={sp.gamma}: acceptance {sp.acceptance_rate:.1%}, "
            f"{sp.mean_accepted_length:.2f} tokens per verify, draft {sp.draft_s:.2f} s / verify {sp.verify_s:.2f} s",
            highlight=False,
        )


def print_solution(console: Console, sol: "Solution") -> None:
    """The voted answer, the vote counts, one line per branch and the latency."""
    from rich.markup import escape

    table = Table("#", "answer", "finish", "tokens", "thinking", "forced", title="branches")
    for b, a in zip(sol.branches, sol.branch_answers):
        table.add_row(str(b.index), escape(a) if a is not None else "—", b.finish_reason or "?", str(b.n_tokens),
                      str(b.think_tokens), b.forced or "")
    console.print(table)
    votes = ", ".join(f"{escape(a)}: {c:g}" for a, c in sol.votes) or "no answers"
    abstained = f" ({sol.abstained} abstained)" if sol.abstained else ""
    console.print(f"votes: {votes}{abstained}", highlight=False)
    deadline = f" of {sol.deadline_s:g} s allowed" if sol.deadline_s is not None else ""
    early = " · stopped early (vote decided)" if sol.early_stopped else ""
    p = sol.plan
    console.print(
        f"latency {sol.latency_s:.2f} s{deadline} · B={p.branches} γ={p.gamma} L={p.max_think} · "
        f"{sol.tokens} tokens{early}",
        highlight=False,
    )
    if sol.load is not None and sol.load.loaded:
        console.print(f"[yellow]{escape(sol.load.describe())}[/]", highlight=False)
    cut = " (cut by the deadline)" if sol.cut_by_deadline and sol.answer is None else ""
    console.print(f"[bold]answer:[/] {escape(sol.answer) if sol.answer is not None else '(none)'}{cut}")
