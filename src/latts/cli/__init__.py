"""The ``latts`` command line.

Heavy imports (torch, transformers) happen inside the commands so that ``latts --help`` is instant.
Every problem the user can fix ends as one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

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
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="embedded (latts' engine on this CPU) or openai (a vLLM / SGLang / llama.cpp server; "
                      "--model is then the name the server serves)")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="openai backend: the server's URL, e.g. "
                                                                      "http://127.0.0.1:8000/v1")]
ApiKeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar="OPENAI_API_KEY", help="openai backend: API key")]
TokenizerOpt = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="openai backend: the served model's tokenizer (latts model name, HF folder or GGUF) for "
                        "its chat template; default --model")]
BranchModeOpt = Annotated[str, typer.Option(
    "--branch-mode", help="openai backend: n (one request with n=B), requests (B concurrent requests) or auto")]
ServerGammaOpt = Annotated[int, typer.Option(
    "--server-gamma", help="openai backend: draft tokens per step the server runs (its speculative config)")]
SlotsOpt = Annotated[Optional[int], typer.Option(
    "--slots", help="openai backend: requests the server decodes at once (llama.cpp --parallel)")]


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
    drafter: Annotated[str, typer.Option("--drafter", help="ngram (ngram:N: matches of >= N tokens), or model:PATH")] = "ngram",
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
        from latts.engine.drafters import check_drafter_spec, make_drafter

        check_drafter_spec(drafter)

        loaded, engine = _engine(model, dtype, announce=not as_json)
        spec = {"gamma": gamma, "drafter": make_drafter(drafter, loaded)} if gamma > 0 else {}
        t_deadline = time.monotonic() + deadline if deadline is not None else None
        if as_json:
            result = engine.generate(prompt, branches, max_tokens, sampling, stop or (), t_deadline, **spec)
        else:
            from latts.cli.live_view import BranchView

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
            "weights": loaded.weights,
            "load_s": round(loaded.load_s, 3),
            "kernels_s": round(loaded.kernels_s, 3),
            "warmup_s": round(engine.warmup_s, 3),
            "prompt": prompt,
            **result.to_dict(),
        }
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        from latts.cli.live_view import print_summary

        print_summary(out, result)


@app.command()
def models() -> None:
    """List the bundled models and the converted ones cached on this machine."""
    from rich.table import Table

    from latts.engine.loading import list_models

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
        from latts.cli.grade import grade_file, grade_pair
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
    opened = _open("embedded", model, dtype, None, announce)
    return opened.loaded, opened.backend


def _open(backend: str, model: str, dtype: str, remote, announce: bool = True):
    """The embedded engine or a remote server, ready and warmed up, reported on stderr."""
    from latts.backends import open_backend

    opened = open_backend(backend, model, dtype, remote)
    if announce and opened.loaded is not None:
        loaded = opened.loaded
        built = f" (of which latts' CPU kernels {loaded.kernels_s:.1f} s)" if loaded.kernels_s >= 1 else ""
        err.print(f"[dim]{loaded.name} ({loaded.weights}) loaded in {loaded.load_s:.1f} s{built}, "
                  f"warm-up {opened.backend.warmup_s:.1f} s (not counted in any deadline)[/]")
    elif announce:
        b = opened.backend
        err.print(f"[dim]{b.model} at {b.base_url} ({b.branch_mode} branches, server γ={b.server_gamma}), "
                  f"warm-up {b.warmup_s:.1f} s (not counted in any deadline)[/]")
    return opened


def _drafter(spec: str, loaded, speculates: bool):
    """The ``--drafter`` the embedded engine (``loaded``) drafts with; None when nothing speculates or on a
    server, which drafts for itself."""
    if not speculates or loaded is None:
        return None
    from latts.engine.drafters import make_drafter

    return make_drafter(spec, loaded)


@dataclass(frozen=True)
class _Backend:
    """The --backend choice with its remote-server options (None for the embedded engine)."""

    kind: str
    remote: Any = None  # latts.backends.RemoteOptions

    @property
    def server_gamma(self) -> int:
        """γ the remote server runs (0 for the embedded engine, which speculates per plan)."""
        return self.remote.server_gamma if self.remote is not None else 0


_BACKEND_OPTIONS: dict[str, tuple[Any, Any]] = {
    "backend": (BackendOpt, "embedded"), "base_url": (BaseUrlOpt, None), "api_key": (ApiKeyOpt, None),
    "tokenizer": (TokenizerOpt, None), "branch_mode": (BranchModeOpt, "auto"), "server_gamma": (ServerGammaOpt, 0),
    "slots": (SlotsOpt, None),
}


def _backend_options(command):
    """Give ``command`` the options --backend, --base-url, --api-key, --tokenizer, --branch-mode,
    --server-gamma and --slots; it receives them, checked, as one ``backend: _Backend`` argument."""
    sig = inspect.signature(command, eval_str=True)  # typer reads a given __signature__ as it stands
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
             for name, (kind, default) in _BACKEND_OPTIONS.items()]
    params = [p for p in sig.parameters.values() if p.name != "backend"] + added

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        opts = {name: kwargs.pop(name) for name in _BACKEND_OPTIONS}
        try:
            choice = _choose_backend(**opts)
        except LattsError as exc:
            _fail(str(exc))
            return
        command(**kwargs, backend=choice)

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _choose_backend(backend: str, base_url: str | None, api_key: str | None, tokenizer: str | None,
                    branch_mode: str, server_gamma: int, slots: int | None) -> _Backend:
    """The --backend choice; remote options without --backend openai are a mistake worth naming."""
    from latts.backends import BACKENDS, RemoteOptions

    if backend not in BACKENDS:
        raise LattsError(f"unknown backend '{backend}': use {' or '.join(BACKENDS)}")
    if backend != "openai":
        if base_url or tokenizer or slots or server_gamma or branch_mode != "auto":
            raise LattsError("--base-url, --tokenizer, --branch-mode, --server-gamma and --slots need --backend openai")
        return _Backend(backend)
    return _Backend(backend, RemoteOptions(base_url, api_key, tokenizer, branch_mode, server_gamma, slots))


@app.command()
@_backend_options
def solve(
    question: Annotated[str, typer.Argument(help="the question")],
    deadline: Annotated[Optional[float], typer.Option("--deadline", help="seconds to answer in")] = None,
    branches: Annotated[Optional[int], typer.Option("--branches", "-B", help="voting branches")] = None,
    gamma: Annotated[Optional[int], typer.Option("--gamma", help="draft tokens per branch and step")] = None,
    drafter: Annotated[str, typer.Option("--drafter", help="ngram, ngram:N, or model:PATH")] = "ngram",
    max_think: Annotated[Optional[int], typer.Option("--max-think", help="thinking tokens before the answer is forced")] = None,
    min_think: Annotated[int, typer.Option("--min-think", help="stops before this many tokens are suppressed")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.7,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    task: Annotated[str, typer.Option("--task", help="prompt template and answer format")] = "math500",
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help="stop once the vote is decided")] = True,
    plans: Annotated[Optional[str], typer.Option("--plans", help="plans file (default: this machine's cache)")]
    = None,
    backend: _Backend = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the Solution as one JSON object")] = False,
) -> None:
    """Answer one question by voting over B branches, within a deadline if given.

    With a deadline and none of -B, --gamma, --max-think, the plan ``latts optimize`` saved for this
    model and task (if any) is used: the latency-optimal (B, γ, L) predicted to fit the deadline.
    """
    try:
        from dataclasses import replace

        from latts.config import default_plan
        from latts.planning import choose_plan, plans_path
        from latts.tts.solver import Solver
        from latts.tasks import get_task

        from latts.config import check_deadline

        if not question.strip():
            raise LattsError("empty question")
        check_deadline(deadline)
        base = replace(default_plan(deadline), gamma=backend.server_gamma)  # a server runs its own γ
        overrides = {"branches": branches, "gamma": gamma, "max_think": max_think, "drafter": drafter,
                     "min_think": min_think, "temperature": temperature, "seed": seed, "early_stop": early_stop}
        choose_plan(deadline, None, overrides, base)  # validates the plan before the model loads
        the_task = get_task(task)
        opened = _open(backend.kind, model, dtype, backend.remote, announce=not as_json)
        loaded, engine = opened.loaded, opened.backend
        plans_file = Path(plans) if plans else plans_path(opened.name, task)
        plan, saved = choose_plan(deadline, plans_file, overrides, base)
        if saved is not None and not as_json:
            err.print(f"[dim]latency-optimal plan for {deadline:g} s (latts optimize): B={plan.branches}, "
                      f"γ={plan.gamma}, L={plan.max_think}, predicted {saved.latency_s:.1f} s[/]")
        solver = Solver(engine, the_task, _drafter(drafter, loaded, plan.gamma > 0))
        if as_json:
            sol = solver.solve(question, plan, deadline)
        else:
            from latts.cli.live_view import BranchView

            with BranchView(out, engine.tokenizer, plan.branches) as view:
                sol = solver.solve(question, plan, deadline, on_step=view.update)
    except LattsError as exc:
        _fail(str(exc))
        return
    if as_json:
        doc = {"model": opened.name, "load_s": round(loaded.load_s, 3) if loaded else 0.0,
               "warmup_s": round(engine.warmup_s, 3),
               **sol.to_dict()}
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    from latts.cli.live_view import print_solution

    print_solution(out, sol)


@app.command(name="eval")
@_backend_options
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
    drafter: Annotated[str, typer.Option("--drafter", help="ngram, ngram:N, or model:PATH")] = "ngram",
    surface: Annotated[bool, typer.Option(
        "--surface", help="one wide run of max(B) branches per problem, answers forced at every --max-think: "
                          "accuracy of every (B, L) with 95% bootstrap intervals")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", help="problems run at once (openai backend)")] = 1,
    backend: _Backend = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
) -> None:
    """Evaluate a task over a grid of (B, γ, L, deadline) × seeds; one JSONL record per run, resumable."""
    try:
        from latts.config import check_deadline
        from latts.engine.drafters import check_drafter_spec
        from latts.eval.harness import check_concurrency, evaluate, grid, summarize
        from latts.tts.solver import Solver
        from latts.tasks import get_task

        the_task = get_task(task)
        if limit is not None and limit < 1:
            raise LattsError(f"--limit must be >= 1, got {limit}")
        deadlines = [None] if deadline is None else _numbers(deadline, "--deadline", float)
        for d in deadlines:
            check_deadline(d)
        check_drafter_spec(drafter)
        if drafter.startswith("model:") and backend.kind != "embedded":
            raise LattsError("--drafter model:PATH drafts in the embedded engine; a server drafts for itself")
        if surface and backend.kind != "embedded":
            raise LattsError("--surface needs the embedded engine: it forces answers from snapshots of each row")
        if backend.remote is not None and gamma == "0":
            gamma = str(backend.server_gamma)  # what the server runs, recorded in every record
        if surface:
            _surface_eval(task, the_task, out_path, limit, data, _numbers(branches, "--branches"),
                          _numbers(max_think, "--max-think"), _numbers(seeds, "--seeds"), gamma, deadline,
                          min_think, temperature, model, dtype)
            return
        configs = grid(_numbers(branches, "--branches"), _numbers(gamma, "--gamma"), _numbers(max_think, "--max-think"),
                       deadlines, drafter=drafter, min_think=min_think, temperature=temperature)
        check_concurrency(concurrency, backend.remote is not None)
        problems = the_task.load(limit=limit, data=Path(data) if data else None)
        opened = _open(backend.kind, model, dtype, backend.remote)
        draft = _drafter(drafter, opened.loaded, any(c.plan.gamma for c in configs))
        with _progress_bar(task) as progress:
            records = evaluate(Solver(opened.backend, the_task, draft), problems, configs, _numbers(seeds, "--seeds"),
                               Path(out_path), progress, concurrency=concurrency)
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


def _surface_eval(task: str, the_task, out_path: str, limit: int | None, data: str | None, branches: list[int],
                  thinks: list[int], seeds: list[int], gamma: str, deadline: str | None, min_think: int,
                  temperature: float, model: str, dtype: str) -> None:
    """``latts eval --surface``: the wide runs, then the accuracy surface as a table."""
    from rich.table import Table

    from latts.eval.harness import evaluate
    from latts.tts.solver import Solver
    from latts.eval.surface_run import run_wide, surface_from_records, wide_run

    if set(_numbers(gamma, "--gamma")) != {0} or deadline is not None or min_think:
        raise LattsError("--surface measures accuracy only: no --gamma (speculation is lossless), "
                         "--deadline or --min-think")
    if min(branches) < 1:
        raise LattsError("--branches must be >= 1")
    run = wide_run(max(branches), thinks, temperature)
    problems = the_task.load(limit=limit, data=Path(data) if data else None)
    _, engine = _engine(model, dtype)
    with _progress_bar(task) as progress:
        records = evaluate(Solver(engine, the_task), problems, [run], seeds, Path(out_path), progress, runner=run_wide)
    estimates = surface_from_records(records, the_task, sorted(set(branches)))
    table = Table("B", "L", "accuracy", "95% interval", title=f"{task} accuracy surface ({len(records)} wide runs of "
                  f"B={run.plan.branches}): {out_path}")
    for e in estimates:
        table.add_row(str(e.branches), str(e.think), f"{e.accuracy:.1%}", f"[{e.low:.1%}, {e.high:.1%}]")
    out.print(table)


@contextmanager
def _progress_bar(task: str):
    """A rich progress bar on stderr; yields the ``progress`` callback of :func:`latts.eval.harness.evaluate`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[last]}"), console=err) as bar:
        job = bar.add_task(f"eval {task}", total=None, last="")

        def progress(done: int, total: int, record) -> None:
            verdict = record.get("correct") if record else None  # a surface record has one per (branch, L)
            mark = (" ✓" if verdict else " ✗") if isinstance(verdict, bool) else ""
            bar.update(job, completed=done, total=total, last="" if record is None else record["config_key"] + mark)

        yield progress


@app.command()
@_backend_options
def profile(
    out_path: Annotated[str, typer.Option("--out", help="where to write the profile (JSON)")] = "profile.json",
    branches: Annotated[str, typer.Option("--branches", "-B", help="comma-separated B values")] = "1,2,4,8,16,32",
    k: Annotated[str, typer.Option("--k", help="comma-separated tokens per row per forward (γ + 1)")] = "1,2,4,8",
    contexts: Annotated[str, typer.Option("--contexts", help="comma-separated context lengths")] = "256,1024",
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    backend: _Backend = None,
) -> None:
    """Measure prefill and decode-forward times on this machine (or a server's latency vs B) and fit the
    latency model."""
    try:
        from latts.latency.profiler import profile as run_profile
        from latts.latency.remote_profiler import profile_remote

        bs, ks, cs = _numbers(branches, "--branches"), _numbers(k, "--k"), _numbers(contexts, "--contexts")
        if min(bs) < 1 or min(ks) < 1 or min(cs) < 1:
            raise LattsError("--branches, --k and --contexts must be >= 1")
        opened = _open(backend.kind, model, dtype, backend.remote)
        say = lambda msg: err.print(f"[dim]{escape(msg)}[/]")  # noqa: E731
        if opened.remote:  # a server: latency vs B end to end (its own speculation included), no k sweep
            prof = profile_remote(opened.backend, bs, cs, progress=say)
        else:
            prof = run_profile(opened.backend, bs, ks, cs, progress=say)
        prof.save(Path(out_path))
        fitted = prof.fit()
    except LattsError as exc:
        _fail(str(exc))
        return
    out.print(f"profile of {prof.model} ({prof.dtype}) on {prof.machine['cpu']} written to {out_path}")
    out.print("latency model: " + ", ".join(f"{k_}={v:.3g}" for k_, v in fitted.to_dict().items()))
    out.print(f"median error on the profile itself: {fitted.median_error(prof.steps):.1%}")


@app.command()
def optimize(
    task: Annotated[str, typer.Option("--task", help="the task whose accuracy surface is used")] = "arith",
    deadlines: Annotated[str, typer.Option("--deadline", help="comma-separated deadlines in seconds")] = "2,5,10,20",
    profile_path: Annotated[str, typer.Option("--profile", help="latts profile JSON (measured now if missing)")]
    = "profile.json",
    surface_path: Annotated[str, typer.Option(
        "--surface", help="records of latts eval --surface (made now, resumably, if the file has none)")]
    = "runs/surface.jsonl",
    thinks: Annotated[str, typer.Option("--max-think", help="thinking budgets of a new wide run")] = "16,32,64,128",
    surface_limit: Annotated[int, typer.Option("--surface-problems", help="problems of a new wide run")] = 30,
    branches: Annotated[str, typer.Option("--branches", "-B", help="B values to consider (<= the wide run's)")]
    = "1,2,4,8,16",
    gammas: Annotated[str, typer.Option("--gamma", help="γ values to consider (n-gram drafter)")] = "0,1,2,3,4",
    validate_limit: Annotated[int, typer.Option("--validate", help="run the plans on the first N problems (0: no)")]
    = 0,
    seeds: Annotated[str, typer.Option("--seeds", help="seeds of the validation runs")] = "1",
    validate_out: Annotated[str, typer.Option("--validate-out", help="JSON Lines of the validation runs")]
    = "runs/validate.jsonl",
    data: Annotated[Optional[str], typer.Option("--data", help="dataset file (required for gpqa_diamond)")] = None,
    plans: Annotated[Optional[str], typer.Option("--plans", help="plans file (default: this machine's cache)")]
    = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
) -> None:
    """The latency-optimal (B, γ, L) per deadline and the Pareto frontier; optionally validated for real."""
    from rich.table import Table

    try:
        from latts.config import check_deadline
        from latts.eval.harness import evaluate, read_records
        from latts.engine.drafters import NGramDrafter
        from latts.planning import Planner, measure_alpha, plans_path, prompt_length, save_plans, validate
        from latts.latency.profile import Profile
        from latts.latency.profiler import profile as run_profile
        from latts.tts.solver import Solver
        from latts.eval.surface_run import expected_thinking, run_wide, surface_from_records, wide_run
        from latts.tasks import get_task

        the_task = get_task(task)
        ds = _numbers(deadlines, "--deadline", float)
        for d in ds:
            check_deadline(d)
        gs = _numbers(gammas, "--gamma")
        if min(gs) < 0:
            raise LattsError("--gamma values must be >= 0")
        bs = _numbers(branches, "--branches")
        wide = wide_run(max(bs), _numbers(thinks, "--max-think"))
        problems = the_task.load(data=Path(data) if data else None)
        records = [r for r in read_records(Path(surface_path)) if r["task"] == task and r.get("kind") == "surface"]
        loaded, engine = _engine(model, dtype)
        solver = Solver(engine, the_task)
        if not records:
            err.print(f"[dim]no {task} surface records in {escape(surface_path)}: one wide run of B={wide.plan.branches} "
                      f"per problem on {surface_limit} problems[/]")
            with _progress_bar(f"surface {task}") as progress:
                records = evaluate(solver, problems[:surface_limit], [wide], [100], Path(surface_path), progress,
                                   runner=run_wide)
        b_max = max(r["config"]["B"] for r in records)
        surface = surface_from_records(records, the_task, [b for b in bs if b <= b_max] or [1])
        if Path(profile_path).is_file():
            prof = Profile.load(Path(profile_path))
            if prof.model != loaded.name:
                raise LattsError(f"{profile_path} profiles {prof.model}, not {loaded.name}")
        else:
            err.print(f"[dim]no profile at {escape(profile_path)}: measuring this machine (a few minutes)[/]")
            prof = run_profile(engine, progress=lambda msg: err.print(f"[dim]{escape(msg)}[/]"))
            prof.save(Path(profile_path))
        temperature = records[0]["config"]["temperature"]
        alphas = measure_alpha(solver, problems[:2], gs, temperature)
        wide = measure_alpha(solver, problems[:2], gs, temperature, min_n=NGramDrafter.CONFIDENT_N)
        planner = Planner(prof.fit(), surface, alphas, prompt_length(solver, problems[:16]),
                          thinking=lambda b_, L: expected_thinking(records, b_, L), wide_alphas=wide)
        recs = planner.recommend(ds)
        plans_file = Path(plans) if plans else plans_path(loaded.name, task)
        save_plans(planner, plans_file, loaded.name, task)
        validated = []
        if validate_limit > 0:
            with _progress_bar(f"validate {task}") as progress:
                validated = validate(solver, problems[:validate_limit], recs, _numbers(seeds, "--seeds"),
                                     Path(validate_out), temperature, progress)
    except LattsError as exc:
        _fail(str(exc))
        return
    out.print("n-gram drafting measured here: " + ", ".join(
        f"γ={g}: α={a.alpha:.2f}, {a.tokens_per_round:.2f} tokens/round, {a.proposal_rate:.0%} of drafts offered"
        for g, a in alphas.items()))
    table = Table("deadline s", "B", "γ", "L", "accuracy (surface)", "95% interval", "predicted s",
                  *(["measured accuracy", "measured s"] if validated else []), title=f"latency-optimal plans: {task}")
    from latts.eval.harness import summarize

    measured = {(row.config["B"], row.config["gamma"], row.config["max_think"]): row for row in summarize(validated)}
    for r in recs:
        if r.best is None:
            continue
        c, p = r.best, r.best.plan
        cells = [f"{r.deadline_s:g}", str(p.branches), str(p.gamma), str(p.max_think), f"{c.accuracy:.1%}",
                 f"[{r.low:.1%}, {r.high:.1%}]", f"{c.latency_s:.2f}"]
        if validated:
            m = measured.get((p.branches, p.gamma, p.max_think))
            cells += [f"{m.accuracy:.1%} ({m.runs} runs)", f"{m.latency_s:.2f} ± {m.latency_std:.2f}"] if m else ["—"] * 2
        table.add_row(*cells)
    out.print(table)
    for r in recs:
        if r.best is None:
            out.print(f"no plan is predicted to fit {r.deadline_s:g} s")
    front = planner.frontier()
    out.print("Pareto frontier (predicted s → accuracy): " + ", ".join(
        f"{c.latency_s:.1f}s B={c.plan.branches} γ={c.plan.gamma} L={c.plan.max_think} {c.accuracy:.0%}" for c in front))
    out.print(f"plans saved to {plans_file} (latts solve --task {task} --deadline T uses them)")


@app.command()
def report(
    records: Annotated[list[str], typer.Argument(help="JSON Lines files written by latts eval / optimize")],
    out_dir: Annotated[str, typer.Option("--out", help="folder for table1.md and the PNGs")] = "report",
    profile_path: Annotated[Optional[str], typer.Option("--profile", help="a latts profile (tokens/s vs B plot)")]
    = None,
) -> None:
    """Paper-style Table 1 (markdown) and accuracy/latency plots (PNG) from evaluation records."""
    try:
        from latts.eval.report import write_report

        paths = write_report([Path(r) for r in records], Path(out_dir), Path(profile_path) if profile_path else None)
    except LattsError as exc:
        _fail(str(exc))
        return
    for p in paths:
        typer.echo(str(p))  # one path a line, never wrapped


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
        from latts.config import default_plan
        from latts.tts.solver import Solver
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


@app.command()
@_backend_options
def serve(
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    task: Annotated[str, typer.Option("--task", help="prompt template and answer format of the questions")] = "math500",
    default_budget: Annotated[float, typer.Option("--default-budget", help="seconds, for requests without "
                                                  "latency_budget")] = 10.0,
    max_budget: Annotated[float, typer.Option("--max-budget", help="largest latency_budget accepted")] = 120.0,
    max_branches: Annotated[int, typer.Option("--max-branches", help="largest branches override accepted")] = 64,
    plans: Annotated[Optional[str], typer.Option("--plans", help="plans file (default: this machine's cache, "
                                                 "if `latts optimize` wrote one)")] = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    backend: _Backend = None,
) -> None:
    """Serve voted answers within a latency budget behind an OpenAI-compatible API (POST /v1/chat/completions)."""
    try:
        try:
            import uvicorn

            from latts.serve.app import MinService, ServeConfig, create_app
        except ImportError:
            raise LattsError("latts serve needs fastapi and uvicorn: pip install 'latts[serve]'") from None
        from latts.config import MAX_BRANCHES, check_deadline
        from latts.planning import plans_path
        from latts.config import default_plan
        from latts.tts.solver import Solver
        from latts.tasks import get_task

        check_deadline(default_budget)
        if max_budget < default_budget:
            raise LattsError(f"--max-budget ({max_budget:g}) must be >= --default-budget ({default_budget:g})")
        if not 1 <= max_branches <= MAX_BRANCHES:
            raise LattsError(f"--max-branches must be between 1 and {MAX_BRANCHES}, got {max_branches}")
        if not 0 < port < 65536:
            raise LattsError(f"--port must be between 1 and 65535, got {port}")
        the_task = get_task(task)
        opened = _open(backend.kind, model, dtype, backend.remote)
        solver = Solver(opened.backend, the_task)
        min_service = MinService.measure(solver, default_plan(default_budget))
        plans_file = Path(plans) if plans else plans_path(opened.name, task)
        config = ServeConfig(opened.name, default_budget, max_budget, max_branches,
                             plans_file=str(plans_file) if plans_file.is_file() else None)
        application = create_app(solver, config, min_service)
    except LattsError as exc:
        _fail(str(exc))
        return
    err.print(f"[dim]serving {opened.name} on http://{host}:{port}/v1 · an answer needs >= {min_service.base_s:.2f} s "
              f"+ {min_service.per_branch_s:.3f} s per branch · "
              f"plans: {config.plans_file or 'default (no latts optimize plans)'}[/]")
    uvicorn.run(application, host=host, port=port, log_level="warning")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
