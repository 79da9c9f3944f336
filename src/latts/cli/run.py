"""Running the model once: ``latts generate`` (raw branches), ``solve`` (a voted answer), ``demo`` (baseline
against voting, side by side) and ``models`` (what can be run)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from latts.cli.console import err, note, out, print_json
from latts.cli.options import (Backend, DtypeOpt, EngineOpt, ModelOpt, PlansOpt, SeedOpt, TemperatureOpt,
                               backend_options, one_line_errors, open_announced,
                               refuse_unrunnable)
from latts.errors import LattsError

if TYPE_CHECKING:
    from latts.config import Plan
    from latts.latency.optimizer import Candidate
    from latts.tasks import Problem, Task
    from latts.types import Solution


@one_line_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="the question or prompt")],
    branches: Annotated[int, typer.Option("--branches", "-B", help="branches decoded together")] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="new tokens per branch")] = 256,
    temperature: TemperatureOpt = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k")] = 0,
    seed: SeedOpt = 0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="stop string (repeatable)")] = None,
    deadline: Annotated[Optional[float], typer.Option("--deadline", help="seconds allowed for decoding")] = None,
    gamma: Annotated[int, typer.Option("--gamma", help="draft tokens per branch and step (0: no speculation)")] = 0,
    drafter: Annotated[str, typer.Option("--drafter", help="ngram (ngram:N: matches of >= N tokens), group (group:N: drafts from every branch), or model:PATH")] = "ngram",
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of the live view")] = False,
) -> None:
    """Decode B branches of one prompt in one batch (optionally speculatively) and show them."""
    from latts.cli.live_view import print_summary, watch
    from latts.config import SamplingParams
    from latts.request import GenerateRequest

    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    _check_generate_args(prompt, branches, max_tokens, deadline, gamma, drafter, engine, model, dtype)
    opened = open_announced("embedded", model, dtype, announce=not as_json, engine=engine)
    spec = {}
    if gamma > 0:
        from latts.engine.speculation.drafters import make_drafter

        spec = {"gamma": gamma, "drafter": make_drafter(drafter, opened.loaded, engine=engine)}
    runner = opened.backend
    t_deadline = time.monotonic() + deadline if deadline is not None else None
    request = GenerateRequest(prompt, branches, max_tokens, sampling, stop or (), t_deadline, **spec)
    result = watch(None if as_json else out, runner.tokenizer, branches,
                   lambda on_step: runner.generate(request, on_step=on_step))
    if as_json:
        loaded = opened.loaded
        print_json({"model": loaded.name, "engine": loaded.engine, "engine_reason": loaded.engine_reason,
                    "engine_build": loaded.measured_with().engine, "avoided": list(loaded.avoided),
                    "dtype": str(loaded.dtype).removeprefix("torch."), "weights": loaded.weights,
                    "load_s": round(loaded.load_s, 3), "kernels_s": round(loaded.kernels_s, 3),
                    "warmup_s": round(runner.warmup_s, 3), "prompt": prompt, **result.to_dict()})
    else:
        print_summary(out, result)


@one_line_errors
def models() -> None:
    """List the bundled models and the converted ones cached on this machine, with the engine each runs on
    (``--engine auto``) and why."""
    from rich.table import Table

    from latts.engine.loading.loader import list_models

    rows = list_models()
    if not out.is_terminal:  # piped: whole paths, one model per line, tab-separated
        for row in rows:
            sys.stdout.write(f"{row['name']}\t{row['kind']}\t{row['path']}\t{row['engine']}\t{row['why']}\n")
        return
    table = Table("name", "kind", "engine (auto)", "why", "path")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["engine"], row["why"], row["path"])
    out.print(table)


@one_line_errors
@backend_options
def solve(
    question: Annotated[str, typer.Argument(help="the question")],
    deadline: Annotated[Optional[float], typer.Option("--deadline", help="seconds to answer in")] = None,
    branches: Annotated[Optional[int], typer.Option("--branches", "-B", help="voting branches")] = None,
    gamma: Annotated[Optional[int], typer.Option("--gamma", help="draft tokens per branch and step")] = None,
    drafter: Annotated[Optional[str], typer.Option(
        "--drafter", help="ngram, ngram:N, group, group:N (drafts from every branch), or model:PATH "
                          "[default: the plan's: a saved latency-optimal plan's, else ngram]")] = None,
    max_think: Annotated[Optional[int], typer.Option("--max-think", help="thinking tokens before the answer is forced")] = None,
    min_think: Annotated[int, typer.Option("--min-think", help="stops before this many tokens are suppressed")] = 0,
    temperature: TemperatureOpt = 0.7,
    seed: SeedOpt = 0,
    task: Annotated[str, typer.Option("--task", help="prompt template and answer format")] = "math500",
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help="stop once the vote is decided")] = True,
    plans: PlansOpt = None,
    backend: Backend = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the Solution as one JSON object")] = False,
) -> None:
    """Answer one question by voting over B branches, within a deadline if given.

    With a deadline and none of -B, --gamma, --max-think, the plan ``latts optimize`` saved for this
    model and task (if any) is used: the latency-optimal (B, γ, L) predicted to fit the deadline.
    """
    overrides = {"branches": branches, "gamma": gamma, "max_think": max_think, "drafter": drafter,
                 "min_think": min_think, "temperature": temperature, "seed": seed, "early_stop": early_stop}
    base = _base_plan(question, deadline, backend.server_gamma, overrides)  # question, deadline and plan checked
    refuse_unrunnable(backend, model, engine, dtype)
    from latts.cli.live_view import print_solution, watch
    from latts.tasks import get_task
    from latts.tts.solver import Solver

    the_task = get_task(task)
    opened = open_announced(backend, model, dtype, announce=not as_json, engine=engine)
    plan = _chosen_plan(deadline, plans, opened, task, overrides, base, announce=not as_json)
    solver = Solver(opened.backend, the_task, draft_engine=engine)
    solver.drafter_for(plan)  # the plan's drafter (--drafter, else a saved plan's), a draft model loaded now
    sol = watch(None if as_json else out, opened.backend.tokenizer, plan.branches,
                lambda on_step: solver.solve(question, plan, deadline, on_step=on_step))
    if as_json:
        print_json(_solution_doc(opened, sol))
    else:
        print_solution(out, sol)


@one_line_errors
def demo(
    deadline: Annotated[float, typer.Option("--deadline", help="seconds per solve")] = 10.0,
    index: Annotated[int, typer.Option("--problem", help="which generated arith problem")] = 0,
    branches: Annotated[int, typer.Option("--branches", "-B", help="branches of the scaled run")] = 8,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
) -> None:
    """Solve one arith question under a deadline twice, baseline (B=1) and B voting branches, side by side."""
    from dataclasses import replace

    from latts.config import check_deadline, default_plan

    check_deadline(deadline)
    refuse_unrunnable("embedded", model, engine, dtype)
    from latts.tasks import get_task
    from latts.tts.solver import Solver

    task = get_task("arith")
    problem = task.load(limit=index + 1)[index]
    solver = Solver(open_announced("embedded", model, dtype, engine=engine).backend, task)
    runs = [(f"B={b}, γ=0", solver.solve(problem, replace(default_plan(deadline), branches=b, gamma=0), deadline))
            for b in (1, branches)]
    _print_demo(task, problem, deadline, runs)


def _check_generate_args(prompt: str, branches: int, max_tokens: int, deadline: float | None, gamma: int,
                         drafter: str, engine: str, model: str, dtype: str) -> None:
    """What ``generate`` checks before the model loads, in this order (the first problem is the one named);
    ``model`` on ``engine`` is checked before the drafter, whose check imports torch, so that refusing a model
    takes well under a second."""
    from latts.config import MAX_GAMMA, check_deadline, check_generation_args

    check_generation_args(branches, max_tokens)
    if not prompt.strip():
        raise LattsError("empty prompt")
    check_deadline(deadline)
    if not 0 <= gamma <= MAX_GAMMA:
        raise LattsError(f"gamma must be between 0 and {MAX_GAMMA}, got {gamma}")
    refuse_unrunnable("embedded", model, engine, dtype)
    from latts.engine.speculation.drafters import check_drafter_spec

    check_drafter_spec(drafter)


def _base_plan(question: str, deadline: float | None, server_gamma: int, overrides: dict[str, Any]) -> Plan:
    """The plan ``solve`` starts from (the default plan for ``deadline``, with a server's own γ), once the
    question, the deadline and the plan the options ask for are checked: all before the model loads."""
    from dataclasses import replace

    from latts.config import check_deadline, default_plan
    from latts.latency.plans import choose_plan

    if not question.strip():
        raise LattsError("empty question")
    check_deadline(deadline)
    base = replace(default_plan(deadline), gamma=server_gamma)  # a server runs its own γ
    choose_plan(deadline, None, overrides, base)  # validates the plan the options ask for
    return base


def _chosen_plan(deadline: float | None, plans: str | None, opened: Any, task: str, overrides: dict[str, Any],
                 base: Plan, announce: bool) -> Plan:
    """:func:`latts.latency.plans.choose_plan` with the plans of ``--plans`` (default: this machine's cache for
    the model and ``task``), read only when wanted; a stale ``--plans`` is refused, a stale cache skipped
    with a note. A saved latency-optimal plan it follows is announced on stderr."""
    from latts.latency.plans import choose_plan, saved_frontier

    def frontier() -> list[Candidate] | None:
        return saved_frontier(plans, opened.name, task, opened.measured_with(), note)

    plan, saved = choose_plan(deadline, frontier, overrides, base)
    if saved is not None and announce:
        err.print(f"[dim]latency-optimal plan for {deadline:g} s (latts optimize): B={plan.branches}, "
                  f"γ={plan.gamma}, L={plan.max_think}, predicted {saved.latency_s:.1f} s[/]")
    return plan


def _solution_doc(opened: Any, sol: Solution) -> dict[str, Any]:
    """``solve --json``'s one object: the model, its load and warm-up times, then the Solution."""
    load_s = round(opened.loaded.load_s, 3) if opened.loaded else 0.0
    return {"model": opened.name, "load_s": load_s, "warmup_s": round(opened.backend.warmup_s, 3), **sol.to_dict()}


def _print_demo(task: Task, problem: Problem, deadline: float, runs: list[tuple[str, Solution]]) -> None:
    """The question, its gold answer, and each run's answer, votes, latency, tokens and finish reasons."""
    from rich.markup import escape
    from rich.table import Table

    out.print(f"[bold]question[/] ({problem.id}): {escape(problem.question)}")
    out.print(f"[bold]gold answer[/]: {escape(problem.gold)} · deadline {deadline:g} s each")
    table = Table("", *[name for name, _ in runs])
    table.add_row("answer", *[escape(str(sol.answer)) for _, sol in runs])
    table.add_row("correct", *["yes" if task.grade(problem.gold, sol.answer) else "no" for _, sol in runs])
    table.add_row("votes", *[escape(", ".join(f"{a}: {c:g}" for a, c in sol.votes) or "—") for _, sol in runs])
    table.add_row("latency", *[f"{sol.latency_s:.2f} s" for _, sol in runs])
    table.add_row("tokens", *[str(sol.tokens) for _, sol in runs])
    table.add_row("finish", *[", ".join(sorted({str(r) for r in sol.finish_reasons})) for _, sol in runs])
    out.print(table)
