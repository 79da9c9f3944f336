"""``latts serve``: voted answers within a latency budget behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from latts.cli.console import ConsoleReporter
from latts.cli.options import (Backend, DtypeOpt, EngineOpt, ModelOpt, one_line_errors, refuse_unrunnable,
                               serving_backend_options)


@one_line_errors
@serving_backend_options
def serve(
    host: Annotated[str, typer.Option("--host", help="address to listen on (0.0.0.0: every interface; "
                                      "then set --api-key)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    task: Annotated[str, typer.Option("--task", help="prompt template and answer format of the questions")] = "math500",
    default_budget: Annotated[float, typer.Option("--default-budget", help="seconds, for requests without "
                                                  "latency_budget")] = 10.0,
    max_budget: Annotated[float, typer.Option("--max-budget", help="largest latency_budget accepted")] = 120.0,
    max_branches: Annotated[int, typer.Option("--max-branches", help="largest branches override accepted")] = 64,
    plans: Annotated[Optional[str], typer.Option("--plans", help="plans file (default: this machine's cache, "
                                                 "if `latts optimize` wrote one)")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LATTS_API_KEY", show_envvar=True,
                                                   help="bearer token every /v1 endpoint requires")] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="largest request body in bytes (413 above)")] = 1 << 20,
    report: Annotated[Optional[str], typer.Option("--report", help="a `latts report` folder: the playground links "
                                                  "its accuracy-vs-latency figure")] = None,
    model: ModelOpt = "smollm2-135m-instruct",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "auto",
    backend: Backend = None,
) -> None:
    """Serve voted answers within a latency budget behind an OpenAI-compatible API (POST /v1/chat/completions,
    streaming too) and a playground at GET /."""
    refuse_unrunnable(backend, model, engine, dtype)
    from latts.serve.server import serve as run_server

    run_server(task, host=host, port=port, default_budget=default_budget, max_budget=max_budget,
               max_branches=max_branches, plans=plans, model=model, dtype=dtype, backend=backend.kind,
               remote=backend.remote, reporter=ConsoleReporter(), api_key=api_key, max_body=max_body,
               report=report, engine=engine)
