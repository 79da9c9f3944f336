"""``latts serve``: voted answers within a latency budget behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from latts.cli.console import ConsoleReporter
from latts.cli.options import Backend, DtypeOpt, EngineOpt, ModelOpt, backend_options, one_line_errors


@one_line_errors
@backend_options
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
    engine: EngineOpt = "auto",
    backend: Backend = None,
) -> None:
    """Serve voted answers within a latency budget behind an OpenAI-compatible API (POST /v1/chat/completions)."""
    from latts.serve.server import serve as run_server

    run_server(task, host=host, port=port, default_budget=default_budget, max_budget=max_budget,
               max_branches=max_branches, plans=plans, model=model, dtype=dtype, backend=backend.kind,
               remote=backend.remote, reporter=ConsoleReporter(), engine=engine)
