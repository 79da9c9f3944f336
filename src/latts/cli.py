"""The ``latts`` command line.

Heavy imports (torch, transformers) happen inside the commands so that ``latts --help`` is instant.
Every problem the user can fix ends as one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from latts.errors import LattsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Latency-aware test-time scaling for LLMs.")
err = Console(stderr=True)
out = Console()

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="bundled model name, HF folder or GGUF file")
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32 or bfloat16")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="the question or prompt")],
    branches: Annotated[int, typer.Option("--branches", "-B", help="branches decoded together")] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="new tokens per branch")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="stop string (repeatable)")] = None,
    deadline: Annotated[Optional[float], typer.Option("--deadline", help="seconds allowed for decoding")] = None,
    gamma: Annotated[int, typer.Option("--gamma", help="draft tokens per branch and step (0: no speculation)")] = 0,
    drafter: Annotated[str, typer.Option("--drafter", help="ngram, or model:PATH (same tokenizer)")] = "ngram",
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of the live view")] = False,
) -> None:
    """Decode B branches of one prompt in one batch (optionally speculatively) and show them."""
    try:
        from latts.config import MAX_GAMMA, SamplingParams, check_deadline, check_generation_args

        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        check_generation_args(branches, max_tokens)
        if not prompt.strip():
            raise LattsError("empty prompt")
        check_deadline(deadline)
        if not 0 <= gamma <= MAX_GAMMA:
            raise LattsError(f"gamma must be between 0 and {MAX_GAMMA}, got {gamma}")
        if drafter != "ngram" and not drafter.startswith("model:"):
            raise LattsError(f"unknown drafter '{drafter}': use ngram or model:PATH")
        from latts.engine.drafters import make_drafter

        loaded, engine = _engine(model, dtype, announce=not as_json)
        spec = {"gamma": gamma, "drafter": make_drafter(drafter, loaded)} if gamma > 0 else {}
        t_deadline = time.monotonic() + deadline if deadline is not None else None
        if as_json:
            result = engine.generate(prompt, branches, max_tokens, sampling, stop or (), t_deadline, **spec)
        else:
            from latts.live_view import BranchView

            with BranchView(out, engine.tokenizer, branches) as view:
                result = engine.generate(
                    prompt, branches, max_tokens, sampling, stop or (), t_deadline, on_step=view.update, **spec
                )
    except LattsError as exc:
        _fail(str(exc))
        return
    if as_json:
        doc = {
            "model": loaded.name,
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "load_s": round(loaded.load_s, 3),
            "warmup_s": round(engine.warmup_s, 3),
            "prompt": prompt,
            **result.to_dict(),
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        from latts.live_view import print_summary

        print_summary(out, result)


@app.command()
def models() -> None:
    """List the bundled models and the converted ones cached on this machine."""
    from rich.table import Table

    from latts.models import list_models

    rows = list_models()
    if not out.is_terminal:  # piped: whole paths, one model per line, tab-separated
        for row in rows:
            sys.stdout.write(f"{row['name']}\t{row['kind']}\t{row['path']}\n")
        return
    table = Table("name", "kind", "path")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["path"])
    out.print(table)


@app.command()
def grade(
    gold: Annotated[Optional[str], typer.Argument(help="the gold answer (for gpqa_diamond: its letter)")] = None,
    pred: Annotated[Optional[str], typer.Argument(help="a predicted answer, or a whole completion")] = None,
    task: Annotated[str, typer.Option("--task", help="math500, aime24, aime25, gpqa_diamond or arith")] = "math500",
    file: Annotated[
        Optional[str], typer.Option("--file", help='JSON Lines of {"gold", "pred"[, "task"]}: one result a line')
    ] = None,
) -> None:
    """Grade a prediction against a gold answer with a task's grader; print one JSON object per pair."""
    try:
        from latts.grade_cli import grade_file, grade_pair
        from latts.tasks import get_task

        get_task(task)  # an unknown --task fails before anything else
        if file is not None:
            if gold is not None or pred is not None:
                raise LattsError("give either GOLD PRED or --file, not both")
            results = grade_file(file, task)
        elif gold is None or pred is None:
            raise LattsError("give GOLD and PRED, or --file PATH")
        else:
            results = [grade_pair(gold, pred, task)]
    except LattsError as exc:
        _fail(str(exc))
        return
    for result in results:
        sys.stdout.write(json.dumps(result) + "\n")


def _numbers(text: str, option: str, kind: type = int) -> list:
    """A comma-separated option value as numbers, or a one-line error naming the option."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LattsError(f"{option} must be comma-separated numbers, got '{text}'") from None
    if not values:
        raise LattsError(f"{option} is empty")
    return values


def _engine(model: str, dtype: str, announce: bool = True):
    """Load the model and warm the engine up, reporting both on stderr: neither counts against a deadline."""
    from latts.engine.engine import Engine
    from latts.models import load

    loaded = load(model, dtype)
    engine = Engine(loaded)
    engine.warmup()
    if announce:
        err.print(f"[dim]{loaded.name} ({str(loaded.dtype).removeprefix('torch.')}) loaded in {loaded.load_s:.1f} s, "
                  f"warm-up {engine.warmup_s:.1f} s (not counted in any deadline)[/]")
    return loaded, engine


@app.command()
def solve(
    question: Annotated[str, typer.Argument(help="the question")],
    deadline: Annotated[Optional[float], typer.Option("--deadline", help="seconds to answer in")] = None,
    branches: Annotated[Optional[int], typer.Option("--branches", "-B", help="voting branches")] = None,
    gamma: Annotated[int, typer.Option("--gamma", help="draft tokens per branch and step")] = 0,
    drafter: Annotated[str, typer.Option("--drafter", help="ngram, or model:PATH")] = "ngram",
    max_think: Annotated[Optional[int], typer.Option("--max-think", help="thinking tokens before the answer is forced")] = None,
    min_think: Annotated[int, typer.Option("--min-think", help="stops before this many tokens are suppressed")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.7,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    task: Annotated[str, typer.Option("--task", help="prompt template and answer format")] = "math500",
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help="stop once the vote is decided")] = True,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the Solution as one JSON object")] = False,
) -> None:
    """Answer one question by voting over B branches, within a deadline if given."""
    try:
        from latts.solver import Plan, Solver, default_plan
        from latts.tasks import get_task

        from latts.config import check_deadline

        if not question.strip():
            raise LattsError("empty question")
        check_deadline(deadline)
        base = default_plan(deadline)
        plan = Plan(branches=branches if branches is not None else base.branches, gamma=gamma, drafter=drafter,
                    max_think=max_think if max_think is not None else base.max_think, min_think=min_think,
                    temperature=temperature, seed=seed, early_stop=early_stop)
        the_task = get_task(task)
        loaded, engine = _engine(model, dtype, announce=not as_json)
        draft = None
        if gamma > 0:
            from latts.engine.drafters import make_drafter

            draft = make_drafter(drafter, loaded)
        solver = Solver(engine, the_task, draft)
        if as_json:
            sol = solver.solve(question, plan, deadline)
        else:
            from latts.live_view import BranchView

            with BranchView(out, engine.tokenizer, plan.branches) as view:
                sol = solver.solve(question, plan, deadline, on_step=view.update)
    except LattsError as exc:
        _fail(str(exc))
        return
    if as_json:
        doc = {"model": loaded.name, "load_s": round(loaded.load_s, 3), "warmup_s": round(engine.warmup_s, 3),
               **sol.to_dict()}
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    from latts.live_view import print_solution

    print_solution(out, sol)


@app.command(name="eval")
def evaluate_cmd(
    task: Annotated[str, typer.Option("--task", help="math500, aime24, aime25, gpqa_diamond or arith")] = "math500",
    out_path: Annotated[str, typer.Option("--out", help="JSON Lines of results; an existing file is resumed")] = "runs/eval.jsonl",
    limit: Annotated[Optional[int], typer.Option("--limit", help="first N problems")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="dataset file (required for gpqa_diamond)")] = None,
    branches: Annotated[str, typer.Option("--branches", "-B", help="comma-separated B values")] = "1,4",
    gamma: Annotated[str, typer.Option("--gamma", help="comma-separated γ values")] = "0",
    max_think: Annotated[str, typer.Option("--max-think", help="comma-separated thinking budgets")] = "256",
    seeds: Annotated[str, typer.Option("--seeds", help="comma-separated seeds")] = "0",
    deadline: Annotated[Optional[str], typer.Option("--deadline", help="comma-separated deadlines in seconds")] = None,
    min_think: Annotated[int, typer.Option("--min-think")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.7,
    drafter: Annotated[str, typer.Option("--drafter", help="ngram (model drafters: use the Python API)")] = "ngram",
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
) -> None:
    """Evaluate a task over a grid of (B, γ, L, deadline) × seeds; one JSONL record per run, resumable."""
    from pathlib import Path

    try:
        from latts.config import check_deadline
        from latts.evaluate import evaluate, grid, summarize
        from latts.solver import Solver
        from latts.tasks import get_task

        the_task = get_task(task)
        if limit is not None and limit < 1:
            raise LattsError(f"--limit must be >= 1, got {limit}")
        deadlines = [None] if deadline is None else _numbers(deadline, "--deadline", float)
        for d in deadlines:
            check_deadline(d)
        if drafter != "ngram":
            raise LattsError("latts eval drafts with ngram; model drafters are available from the Python API")
        configs = grid(_numbers(branches, "--branches"), _numbers(gamma, "--gamma"), _numbers(max_think, "--max-think"),
                       deadlines, drafter=drafter, min_think=min_think, temperature=temperature)
        for c in configs:
            c.plan(0)  # validates B, L, temperature before the model loads
        problems = the_task.load(limit=limit, data=Path(data) if data else None)
        _, engine = _engine(model, dtype)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[last]}"), console=err) as bar:
            job = bar.add_task(f"eval {task}", total=None, last="")

            def progress(done: int, total: int, record) -> None:
                last = "" if record is None else f"{record['config_key']} {'✓' if record['correct'] else '✗'}"
                bar.update(job, completed=done, total=total, last=last)

            records = evaluate(Solver(engine, the_task), problems, configs, _numbers(seeds, "--seeds"),
                               Path(out_path), progress)
    except LattsError as exc:
        _fail(str(exc))
        return
    from rich.table import Table

    table = Table("B", "γ", "L", "deadline", "runs", "accuracy", "per-sample", "latency s", title=f"{task}: {out_path}")
    for row in summarize(records):
        c = row.config
        table.add_row(str(c["B"]), str(c["gamma"]), str(c["max_think"]),
                      "—" if c["deadline_s"] is None else f"{c['deadline_s']:g}", str(row.runs),
                      f"{row.accuracy:.1%} ± {row.accuracy_std:.1%}", f"{row.per_sample_accuracy:.1%}",
                      f"{row.latency_s:.2f} ± {row.latency_std:.2f}")
    out.print(table)


@app.command()
def profile(
    out_path: Annotated[str, typer.Option("--out", help="where to write the profile (JSON)")] = "profile.json",
    branches: Annotated[str, typer.Option("--branches", "-B", help="comma-separated B values")] = "1,2,4,8,16,32",
    k: Annotated[str, typer.Option("--k", help="comma-separated tokens per row per forward (γ + 1)")] = "1,2,4,8",
    contexts: Annotated[str, typer.Option("--contexts", help="comma-separated context lengths")] = "256,1024",
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
) -> None:
    """Measure prefill and decode-forward times on this machine and fit the latency model."""
    from pathlib import Path

    try:
        from latts.profiler import profile as run_profile

        bs, ks, cs = _numbers(branches, "--branches"), _numbers(k, "--k"), _numbers(contexts, "--contexts")
        if min(bs) < 1 or min(ks) < 1 or min(cs) < 1:
            raise LattsError("--branches, --k and --contexts must be >= 1")
        loaded, engine = _engine(model, dtype)
        prof = run_profile(engine, bs, ks, cs, progress=lambda msg: err.print(f"[dim]{escape(msg)}[/]"))
        prof.save(Path(out_path))
        fitted = prof.fit()
    except LattsError as exc:
        _fail(str(exc))
        return
    out.print(f"profile of {prof.model} ({prof.dtype}) on {prof.machine['cpu']} written to {out_path}")
    out.print("latency model: " + ", ".join(f"{k_}={v:.3g}" for k_, v in fitted.to_dict().items()))
    out.print(f"median error on the profile itself: {fitted.median_error(prof.steps):.1%}")


@app.command()
def demo(
    deadline: Annotated[float, typer.Option("--deadline", help="seconds per solve")] = 10.0,
    index: Annotated[int, typer.Option("--problem", help="which generated arith problem")] = 0,
    branches: Annotated[int, typer.Option("--branches", "-B", help="branches of the scaled run")] = 8,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
) -> None:
    """Solve one arith question under a deadline twice, baseline (B=1) and B voting branches, side by side."""
    try:
        from rich.markup import escape
        from rich.table import Table

        from dataclasses import replace

        from latts.config import check_deadline
        from latts.solver import Solver, default_plan
        from latts.tasks import get_task

        check_deadline(deadline)
        task = get_task("arith")
        problem = task.load(limit=index + 1)[index]
        _, engine = _engine(model, dtype)
        solver = Solver(engine, task)
        runs = []
        for b in (1, branches):
            plan = replace(default_plan(deadline), branches=b, gamma=0)
            runs.append((f"B={b}, γ=0", solver.solve(problem, plan, deadline)))
    except LattsError as exc:
        _fail(str(exc))
        return
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
