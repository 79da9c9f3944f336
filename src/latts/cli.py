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
        from latts.config import MAX_GAMMA, SamplingParams, check_generation_args

        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        check_generation_args(branches, max_tokens)
        if not prompt.strip():
            raise LattsError("empty prompt")
        if deadline is not None and deadline <= 0:
            raise LattsError(f"deadline must be > 0 seconds, got {deadline}")
        if not 0 <= gamma <= MAX_GAMMA:
            raise LattsError(f"gamma must be between 0 and {MAX_GAMMA}, got {gamma}")
        if drafter != "ngram" and not drafter.startswith("model:"):
            raise LattsError(f"unknown drafter '{drafter}': use ngram or model:PATH")
        from latts.engine.drafters import make_drafter
        from latts.engine.engine import Engine
        from latts.models import load

        loaded = load(model, dtype)
        engine = Engine(loaded)
        spec = {"gamma": gamma, "drafter": make_drafter(drafter, loaded)} if gamma > 0 else {}
        engine.warmup()
        if not as_json:
            err.print(
                f"[dim]{loaded.name} ({str(loaded.dtype).removeprefix('torch.')}) loaded in {loaded.load_s:.1f} s,"
                f" warm-up {engine.warmup_s:.1f} s[/]"
            )
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
