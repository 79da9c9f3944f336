"""``latts profile`` and ``latts optimize``: measure this machine, then choose the latency-optimal plans."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from latts.cli.console import ConsoleReporter, note, out
from latts.cli.options import (Backend, DataOpt, DtypeOpt, EngineOpt, ModelOpt, PlansOpt, backend_options, numbers,
                               one_line_errors, open_announced, refuse_unrunnable)
from latts.errors import LattsError

if TYPE_CHECKING:
    from latts.planning import Optimized


@one_line_errors
@backend_options
def profile(
    out_path: Annotated[str, typer.Option("--out", help="where to write the profile (JSON)")] = "profile.json",
    branches: Annotated[str, typer.Option("--branches", "-B", help="comma-separated B values")] = "1,2,4,8,16,32",
    k: Annotated[str, typer.Option("--k", help="comma-separated tokens per row per forward (γ + 1)")] = "1,2,4,8",
    contexts: Annotated[str, typer.Option("--contexts", help="comma-separated context lengths")] = "256,1024",
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
    backend: Backend = None,
) -> None:
    """Measure prefill and decode-forward times on this machine (or a server's latency vs B) and fit the
    latency model."""
    bs, ks, cs = numbers(branches, "--branches"), numbers(k, "--k"), numbers(contexts, "--contexts")
    if min(bs) < 1 or min(ks) < 1 or min(cs) < 1:
        raise LattsError("--branches, --k and --contexts must be >= 1")
    refuse_unrunnable(backend, model, engine, dtype)
    from latts.latency.profiler import profile as run_profile
    from latts.latency.remote_profiler import profile_remote

    opened = open_announced(backend, model, dtype, engine=engine)
    if opened.remote:  # a server: latency vs B end to end (its own speculation included), no k sweep
        prof = profile_remote(opened.backend, bs, cs, progress=note)
    else:
        prof = run_profile(opened.backend, bs, ks, cs, progress=note)
    prof.save(Path(out_path))
    fitted = prof.fit()
    out.print(f"profile of {prof.model} ({prof.dtype}) on {prof.machine['cpu']} written to {out_path}")
    out.print(f"measured with {prof.measured_with.describe()} (another engine build or weight format "
              "will not use it)")
    out.print("latency model: " + ", ".join(f"{k_}={v:.3g}" for k_, v in fitted.to_dict().items()))
    out.print(f"median error on the profile itself: {fitted.median_error(prof.steps):.1%}")


@one_line_errors
def optimize(
    task: Annotated[str, typer.Option("--task", help="the task whose accuracy surface is used")] = "arith",
    deadlines: Annotated[str, typer.Option("--deadline", help="comma-separated deadlines in seconds")] = "2,5,10,20",
    profile_path: Annotated[Optional[str], typer.Option(
        "--profile", help="latts profile JSON, measured now if missing (default: profile.json, also measured again "
                          "when another engine build or weight format measured it; a stale --profile is refused)")]
    = None,
    surface_path: Annotated[str, typer.Option(
        "--surface", help="records of latts eval --surface (made now, resumably, if the file has none)")]
    = "runs/surface.jsonl",
    thinks: Annotated[str, typer.Option("--max-think", help="thinking budgets of a new wide run")] = "16,32,64,128",
    surface_limit: Annotated[int, typer.Option("--surface-problems", help="problems of a new wide run")] = 30,
    branches: Annotated[str, typer.Option("--branches", "-B", help="B values to consider (<= the wide run's)")]
    = "1,2,4,8,16",
    gammas: Annotated[str, typer.Option("--gamma", help="γ values to consider")] = "0,1,2,3,4",
    drafters: Annotated[str, typer.Option(
        "--drafter", help="model-free drafters to measure and plan with (comma-separated: ngram, group)")]
    = "ngram,group",
    validate_limit: Annotated[int, typer.Option("--validate", help="run the plans on the first N problems (0: no)")]
    = 0,
    seeds: Annotated[str, typer.Option("--seeds", help="seeds of the validation runs")] = "1",
    validate_out: Annotated[str, typer.Option("--validate-out", help="JSON Lines of the validation runs")]
    = "runs/validate.jsonl",
    data: DataOpt = None,
    plans: PlansOpt = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
) -> None:
    """The latency-optimal (B, γ, L) per deadline and the Pareto frontier; optionally validated for real."""
    refuse_unrunnable("embedded", model, engine, dtype)
    from latts.planning import optimize as run_optimize

    result = run_optimize(
        task, numbers(deadlines, "--deadline", float), profile=profile_path, surface=surface_path,
        gammas=numbers(gammas, "--gamma"), branches=numbers(branches, "--branches"), drafters=[d.strip() for d in drafters.split(",") if d.strip()],
        thinks=numbers(thinks, "--max-think"), surface_problems=surface_limit, validate_problems=validate_limit,
        seeds=numbers(seeds, "--seeds") if validate_limit > 0 else [],  # read only when validating, as always
        validate_out=validate_out, data=data, plans=plans, model=model, dtype=dtype, engine=engine,
        reporter=ConsoleReporter())
    _print_optimized(result)


def _print_optimized(result: Optimized) -> None:
    """The measured acceptance, the plan per deadline (with its validation), the frontier, where plans went."""
    from rich.table import Table

    from latts.eval.harness import summarize
    from latts.planning import WIDE_BRANCHES

    task, validated = result.task, result.validated
    for drafter, measured in result.acceptance.items():
        for batch, tables in (("1 branch", measured.small), (f"{WIDE_BRANCHES} branches", measured.wide or {})):
            out.print(f"{drafter} drafting measured here, {batch}: " + ", ".join(
                f"γ={g}: α={a.alpha:.2f}, {a.tokens_per_round:.2f} tokens/round, {a.proposal_rate:.0%} of drafts "
                "offered" for g, a in tables.items()))
    table = Table("deadline s", "B", "γ", "drafter", "L", "accuracy (surface)", "95% interval", "predicted s",
                  *(["measured accuracy", "measured s"] if validated else []), title=f"latency-optimal plans: {task}")
    measured = {(row.config["B"], row.config["gamma"], row.config["drafter"], row.config["max_think"]): row
                for row in summarize(validated)}
    for r in result.recommendations:
        if r.best is None:
            continue
        c, p = r.best, r.best.plan
        cells = [f"{r.deadline_s:g}", str(p.branches), str(p.gamma), p.drafter if p.gamma else "-", str(p.max_think),
                 f"{c.accuracy:.1%}", f"[{r.low:.1%}, {r.high:.1%}]", f"{c.latency_s:.2f}"]
        if validated:
            m = measured.get((p.branches, p.gamma, p.drafter, p.max_think))
            cells += [f"{m.accuracy:.1%} ({m.runs} runs)", f"{m.latency_s:.2f} ± {m.latency_std:.2f}"] if m else ["—"] * 2
        table.add_row(*cells)
    out.print(table)
    for r in result.recommendations:
        if r.best is None:
            out.print(f"no plan is predicted to fit {r.deadline_s:g} s")
    out.print("Pareto frontier (predicted s → accuracy): " + ", ".join(
        f"{c.latency_s:.1f}s B={c.plan.branches} γ={c.plan.gamma}{f' ({c.plan.drafter})' if c.plan.gamma else ''} "
        f"L={c.plan.max_think} {c.accuracy:.0%}"
        for c in result.frontier))
    out.print(f"plans saved to {result.plans_file} (latts solve --task {task} --deadline T uses them)")
