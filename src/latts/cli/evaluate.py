"""``latts eval`` and ``latts report``: run a task over a grid of plans (or its accuracy surface), then turn
the records into tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from latts.cli.console import ConsoleReporter, out
from latts.cli.options import (Backend, DataOpt, DrafterOpt, DtypeOpt, EngineOpt, ModelOpt, TaskOpt, TemperatureOpt,
                               backend_options, numbers, one_line_errors, refuse_unrunnable)
from latts.errors import LattsError

if TYPE_CHECKING:
    from latts.eval.sweep import SurfaceRuns

SurfaceOpt = Annotated[bool, typer.Option(
    "--surface", help="one wide run of max(B) branches per problem, answers forced at every --max-think: "
                      "accuracy of every (B, L) with 95% bootstrap intervals")]


@one_line_errors
@backend_options
def evaluate_cmd(
    task: TaskOpt = "math500",
    out_path: Annotated[str, typer.Option("--out", help="JSON Lines of results; an existing file is resumed")] = "runs/eval.jsonl",
    limit: Annotated[Optional[int], typer.Option("--limit", help="first N problems")] = None,
    data: DataOpt = None,
    branches: Annotated[str, typer.Option("--branches", "-B", help="comma-separated B values")] = "1,4",
    gamma: Annotated[str, typer.Option("--gamma", help="comma-separated γ values")] = "0",
    max_think: Annotated[str, typer.Option("--max-think", help="comma-separated thinking budgets")] = "256",
    seeds: Annotated[str, typer.Option("--seeds", help="comma-separated seeds")] = "0",
    deadline: Annotated[Optional[str], typer.Option("--deadline", help="comma-separated deadlines in seconds")] = None,
    min_think: Annotated[int, typer.Option("--min-think")] = 0,
    temperature: TemperatureOpt = 0.7,
    drafter: DrafterOpt = "ngram",
    gamma_policy: Annotated[str, typer.Option("--gamma-policy", help="cost: a row verifies only the drafts that "
                                              "pay on this machine; fixed: every draft (γ as given)")] = "cost",
    surface: SurfaceOpt = False,
    concurrency: Annotated[int, typer.Option("--concurrency", help="problems run at once (openai backend)")] = 1,
    backend: Backend = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
) -> None:
    """Evaluate a task over a grid of (B, γ, L, deadline) × seeds; one JSONL record per run, resumable."""
    if backend.remote is not None and gamma == "0":
        gamma = str(backend.server_gamma)  # what the server runs, recorded in every record
    deadlines = [None] if deadline is None else numbers(deadline, "--deadline", float)
    bs, gs, ls = numbers(branches, "--branches"), numbers(gamma, "--gamma"), numbers(max_think, "--max-think")
    refuse_unrunnable(backend, model, engine, dtype)
    from latts.eval.sweep import run_grid, run_surface

    common: dict[str, Any] = dict(temperature=temperature, limit=limit, data=data, model=model, dtype=dtype,
                                  engine=engine, reporter=ConsoleReporter())
    if surface:
        _check_surface_options(drafter, backend, gs, deadline, min_think)
        _print_surface(task, out_path, run_surface(task, out_path, bs, ls, numbers(seeds, "--seeds"), **common))
        return
    records = run_grid(task, out_path, bs, gs, ls, numbers(seeds, "--seeds"), deadlines, drafter=drafter,
                       gamma_policy=gamma_policy,
                       min_think=min_think, concurrency=concurrency, backend=backend.kind, remote=backend.remote,
                       **common)
    _print_grid(task, out_path, records)


@one_line_errors
def report(
    records: Annotated[list[str], typer.Argument(help="JSON Lines files written by latts eval / optimize")],
    out_dir: Annotated[str, typer.Option("--out", help="folder for table1.md and the PNGs")] = "report",
    profile_path: Annotated[Optional[str], typer.Option("--profile", help="a latts profile (tokens/s vs B plot)")]
    = None,
) -> None:
    """Paper-style Table 1 (markdown) and accuracy/latency plots (PNG) from evaluation records."""
    from latts.eval.report import write_report

    paths = write_report([Path(r) for r in records], Path(out_dir), Path(profile_path) if profile_path else None)
    for p in paths:
        typer.echo(str(p))  # one path a line, never wrapped


def _check_surface_options(drafter: str, backend: Backend, gammas: list[int], deadline: str | None,
                           min_think: int) -> None:
    """What ``--surface`` cannot go with (it measures accuracy only, on the embedded engine)."""
    from latts.engine.speculation.drafters import check_drafter_spec

    check_drafter_spec(drafter)
    if backend.kind != "embedded":
        raise LattsError("--surface needs the embedded engine: it forces answers from snapshots of each row")
    if set(gammas) != {0} or deadline is not None or min_think:
        raise LattsError("--surface measures accuracy only: no --gamma (speculation is lossless), "
                         "--deadline or --min-think")


def _print_grid(task: str, out_path: str, records: list[dict[str, Any]]) -> None:
    """Accuracy and latency per configuration of the grid (mean ± std over seeds)."""
    from rich.table import Table

    from latts.eval.harness import summarize

    table = Table("B", "γ", "L", "deadline", "runs", "accuracy", "per-sample", "latency s", title=f"{task}: {out_path}")
    for row in summarize(records):
        c = row.config
        table.add_row(str(c["B"]), str(c["gamma"]), str(c["max_think"]),
                      "—" if c["deadline_s"] is None else f"{c['deadline_s']:g}", str(row.runs),
                      f"{row.accuracy:.1%} ± {row.accuracy_std:.1%}", f"{row.per_sample_accuracy:.1%}",
                      f"{row.latency_s:.2f} ± {row.latency_std:.2f}")
    out.print(table)


def _print_surface(task: str, out_path: str, result: SurfaceRuns) -> None:
    """The accuracy surface: accuracy of every (B, L) with its 95% interval."""
    from rich.table import Table

    table = Table("B", "L", "accuracy", "95% interval", title=f"{task} accuracy surface ({len(result.records)} wide "
                  f"runs of B={result.run.plan.branches}): {out_path}")
    for e in result.estimates:
        table.add_row(str(e.branches), str(e.think), f"{e.accuracy:.1%}", f"[{e.low:.1%}, {e.high:.1%}]")
    out.print(table)
