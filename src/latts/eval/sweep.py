"""What ``latts eval`` runs, callable from Python: a task over a grid of plans × seeds, or the wide runs of
its accuracy surface.

Both check what they are given and read the dataset before the model loads (a mistake costs no load),
then open the backend and append resumable records (see :func:`latts.eval.harness.evaluate`). They print
nothing: a :class:`~latts.progress.Reporter` hears about the load and the progress.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latts.backends import RemoteOptions, open_backend
from latts.config import check_deadline
from latts.engine.speculation.drafters import check_drafter_spec
from latts.engine.loading.sources import DEFAULT_MODEL
from latts.errors import LattsError
from latts.eval.harness import check_concurrency, evaluate, grid
from latts.eval.surface import Estimate
from latts.eval.surface_run import WideRun, run_wide, surface_from_records, wide_run
from latts.progress import Reporter
from latts.tasks import Task, get_task
from latts.tts.solver import Solver

PathLike = str | os.PathLike[str]


def run_grid(task: str, out: PathLike, branches: Sequence[int] = (1, 4), gammas: Sequence[int] = (0,),
             thinks: Sequence[int] = (256,), seeds: Sequence[int] = (0,),
             deadlines: Sequence[float | None] = (None,), *, drafter: str = "ngram", min_think: int = 0,
             temperature: float = 0.7, limit: int | None = None, data: PathLike | None = None,
             concurrency: int = 1, model: str = DEFAULT_MODEL, dtype: str = "auto", backend: str = "embedded",
             remote: RemoteOptions | None = None, reporter: Reporter | None = None,
             engine: str = "auto", gamma_policy: str = "cost") -> list[dict[str, Any]]:
    """Run every (B, γ, L, deadline) × seed on the first ``limit`` problems of ``task`` that ``out`` does not
    hold yet; all the grid's records (resumed ones included).

    ``backend`` "embedded" runs latts' engine (``model`` in ``dtype`` on ``engine``, speculating with ``drafter``),
    "openai" the server ``remote`` describes (it drafts for itself), ``concurrency`` problems at once.
    """
    reporter = reporter or Reporter()
    the_task = _task(task, limit)
    for d in deadlines:
        check_deadline(d)
    check_drafter_spec(drafter)
    if drafter.startswith("model:") and backend != "embedded":
        raise LattsError("--drafter model:PATH drafts in the embedded engine; a server drafts for itself")
    # each plan is validated as it is made (B, L, temperature), before the model loads
    configs = grid(branches, gammas, thinks, deadlines, drafter=drafter, min_think=min_think, temperature=temperature,
                   gamma_policy=gamma_policy)
    check_concurrency(concurrency, backend != "embedded")
    problems = the_task.load(limit=limit, data=Path(data) if data else None)
    opened = open_backend(backend, model, dtype, remote, engine=engine)
    reporter.opened(opened)
    solver = Solver(opened.backend, the_task, draft_engine=engine)
    for config in configs:
        solver.drafter_for(config.plan)  # a draft model loads now, not inside the first problem's latency
    with reporter.progress(task) as progress:
        return evaluate(solver, problems, configs, list(seeds), Path(out), progress, concurrency=concurrency)


@dataclass(frozen=True, slots=True)
class SurfaceRuns:
    """What :func:`run_surface` measured: the wide run, its records, and the accuracy surface they give."""

    run: WideRun
    records: list[dict[str, Any]]
    estimates: list[Estimate]  # accuracy of every (B, L) with its 95% bootstrap interval


def run_surface(task: str, out: PathLike, branches: Sequence[int] = (1, 4), thinks: Sequence[int] = (256,),
                seeds: Sequence[int] = (0,), *, temperature: float = 0.7, limit: int | None = None,
                data: PathLike | None = None, model: str = DEFAULT_MODEL, dtype: str = "auto",
                reporter: Reporter | None = None, engine: str = "auto") -> SurfaceRuns:
    """One wide run of max(``branches``) branches per problem × seed, answers forced at every budget of
    ``thinks`` (resumable in ``out``); then the accuracy of every (B, L) for B in ``branches``.

    Only latts' own engine can do this: it forces the answers from snapshots of each row.
    """
    reporter = reporter or Reporter()
    the_task = _task(task, limit)
    if min(branches) < 1:
        raise LattsError("--branches must be >= 1")
    run = wide_run(max(branches), thinks, temperature)
    problems = the_task.load(limit=limit, data=Path(data) if data else None)
    opened = open_backend("embedded", model, dtype, engine=engine)
    reporter.opened(opened)
    with reporter.progress(task) as progress:
        records = evaluate(Solver(opened.backend, the_task), problems, [run], list(seeds), Path(out), progress,
                           runner=run_wide)
    return SurfaceRuns(run, records, surface_from_records(records, the_task, sorted(set(branches))))


def _task(name: str, limit: int | None) -> Task:
    """The task called ``name``, with ``limit`` (its first problems) checked."""
    the_task = get_task(name)
    if limit is not None and limit < 1:
        raise LattsError(f"--limit must be >= 1, got {limit}")
    return the_task
