"""Start the latts server, callable from Python: check the limits, open the backend, measure the least
time an answer takes, then serve :func:`latts.serve.app.create_app` with uvicorn until interrupted.

The limits are checked before the model loads, so a mistake costs no load; fastapi and uvicorn (the
``serve`` extra) are imported here, not at ``import latts.serve``, so that their absence is one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

from latts.backends import RemoteOptions, open_backend
from latts.config import MAX_BRANCHES, check_deadline, default_plan
from latts.engine.loading.sources import DEFAULT_MODEL
from latts.errors import LattsError
from latts.latency.plans import plans_path, saved_frontier
from latts.progress import Reporter
from latts.tasks import get_task
from latts.tts.solver import Solver


def serve(task: str = "math500", *, host: str = "127.0.0.1", port: int = 8000, default_budget: float = 10.0,
          max_budget: float = 120.0, max_branches: int = 64, plans: str | os.PathLike[str] | None = None,
          model: str = DEFAULT_MODEL, dtype: str = "auto", backend: str = "embedded",
          remote: RemoteOptions | None = None, reporter: Reporter | None = None, api_key: str | None = None,
          max_body: int = 1 << 20, report: str | os.PathLike[str] | None = None, engine: str = "auto") -> None:
    """Serve voted answers to ``task``'s questions within a latency budget on ``http://host:port/v1``.

    Requests without ``latency_budget`` get ``default_budget`` seconds; larger budgets than ``max_budget``
    and more branches than ``max_branches`` are refused. The plans ``latts optimize`` saved (``plans``, by
    default this machine's cache for the model and task) are used when the file exists. With ``api_key``
    (default: the ``LATTS_API_KEY`` environment variable) every ``/v1`` endpoint needs it as a bearer token;
    bodies over ``max_body`` bytes get 413; ``report`` is a ``latts report`` folder the playground links.
    """
    try:
        import uvicorn

        from latts.serve.app import MinService, create_app
        from latts.serve.schema import ServeConfig
    except ImportError:
        raise LattsError("latts serve needs fastapi and uvicorn: pip install 'latts[serve]'") from None
    reporter = reporter or Reporter()
    check_deadline(default_budget)
    if max_budget < default_budget:
        raise LattsError(f"--max-budget ({max_budget:g}) must be >= --default-budget ({default_budget:g})")
    if not 1 <= max_branches <= MAX_BRANCHES:
        raise LattsError(f"--max-branches must be between 1 and {MAX_BRANCHES}, got {max_branches}")
    if not 0 < port < 65536:
        raise LattsError(f"--port must be between 1 and 65535, got {port}")
    if max_body < 1024:
        raise LattsError(f"--max-body must be >= 1024 bytes, got {max_body}")
    if report is not None and not Path(report).is_dir():
        raise LattsError(f"--report {report}: no such folder (write one with latts report ... --out)")
    api_key = api_key if api_key is not None else os.environ.get("LATTS_API_KEY") or None
    the_task = get_task(task)
    opened = open_backend(backend, model, dtype, remote, engine=engine)
    reporter.opened(opened)
    # read once, before anything is measured: a stale --plans is refused, a stale cache skipped with a note
    frontier = saved_frontier(plans, opened.name, task, opened.measured_with(), reporter.note)
    plans_file = Path(plans) if plans else plans_path(opened.name, task)
    solver = Solver(opened.backend, the_task)
    min_service = MinService.measure(solver, default_plan(default_budget))
    config = ServeConfig(opened.name, default_budget, max_budget, max_branches,
                         plans_file=str(plans_file) if frontier is not None else None, api_key=api_key,
                         max_body_bytes=max_body, report_dir=str(report) if report is not None else None)
    application = create_app(solver, config, min_service, frontier)
    reporter.note(f"serving {opened.name} on http://{host}:{port}/v1 · an answer needs >= {min_service.base_s:.2f} s "
                  f"+ {min_service.per_branch_s:.3f} s per branch · "
                  f"plans: {config.plans_file or 'default (no latts optimize plans)'} · "
                  f"API key: {'required' if api_key else 'none (open to anyone who can reach ' + host + ')'} · "
                  f"playground: http://{host}:{port}/")
    uvicorn.run(application, host=host, port=port, log_level="warning")
