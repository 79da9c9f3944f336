"""Where the ``latts`` command line writes: results on stdout, everything else (load and warm-up times, notes,
progress bars, errors) on stderr, so that a command's results can be piped."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from latts.progress import ProgressFn, Reporter

err = Console(stderr=True)
out = Console()


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr (verbatim, never read as markup) and exit with code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def print_json(doc: dict[str, Any]) -> None:
    """``doc`` as one JSON line on stdout (never wrapped or highlighted, unlike a rich print)."""
    sys.stdout.write(json.dumps(doc) + "\n")


def note(message: str) -> None:
    """A dim line on stderr, printed as given (not read as markup)."""
    err.print(f"[dim]{escape(message)}[/]")


# what running on torch's ops instead of latts' kernels cost, measured (decode of the default model, 128 tokens)
_TORCH_OPS_COST = "decode runs on torch's ops, about 4x slower (measured 3.8x at B=1 and 4.2x at B=8 on an Intel Xeon)"


def warn_missing_kernels(opened: Any) -> None:
    """Say once on stderr, whatever else is announced, when latts' CPU kernels could not be built for a model
    that wanted them: why, and what it costs (the run goes on, several times slower)."""
    loaded = opened.loaded
    why = getattr(loaded, "kernels_missing", None)
    if why and not why.startswith("turned off by"):
        err.print(f"[yellow]warning: latts' CPU kernels are not available ({escape(why)}): {_TORCH_OPS_COST}[/]",
                  highlight=False, soft_wrap=True)


def announce(opened: Any) -> None:
    """Say on stderr what was opened and how long loading and warm-up took (counted in no deadline)."""
    if opened.loaded is not None:
        loaded = opened.loaded
        built = f" (of which latts' CPU kernels {loaded.kernels_s:.1f} s)" if loaded.kernels_s >= 1 else ""
        err.print(f"[dim]{escape(loaded.name)} ({escape(loaded.report)}) loaded in {loaded.load_s:.1f} s{built}, "
                  f"warm-up {opened.backend.warmup_s:.1f} s (not counted in any deadline)[/]")
    else:
        b = opened.backend
        err.print(f"[dim]{b.model} at {b.base_url} ({b.branch_mode} branches, server γ={b.server_gamma}), "
                  f"warm-up {b.warmup_s:.1f} s (not counted in any deadline)[/]")


@contextmanager
def progress_bar(title: str) -> Iterator[ProgressFn]:
    """A rich progress bar on stderr, named ``eval <title>``; yields the ``progress`` callback of
    :func:`latts.eval.harness.evaluate`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[last]}"), console=err) as bar:
        job = bar.add_task(f"eval {title}", total=None, last="")

        def progress(done: int, total: int, record: dict[str, Any] | None) -> None:
            verdict = record.get("correct") if record else None  # a surface record has one per (branch, L)
            mark = (" ✓" if verdict else " ✗") if isinstance(verdict, bool) else ""
            bar.update(job, completed=done, total=total, last="" if record is None else record["config_key"] + mark)

        yield progress


class ConsoleReporter(Reporter):
    """A workflow's progress on stderr: the load announcement (unless ``announce`` is off), notes and bars."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce

    def opened(self, opened: Any) -> None:
        """Announce the backend (see :func:`announce`) and warn of missing kernels (:func:`warn_missing_kernels`)."""
        warn_missing_kernels(opened)
        if self.announce:
            announce(opened)

    def note(self, message: str) -> None:
        """A dim line on stderr."""
        note(message)

    def progress(self, title: str) -> AbstractContextManager[ProgressFn]:
        """A rich progress bar on stderr (see :func:`progress_bar`)."""
        return progress_bar(title)
