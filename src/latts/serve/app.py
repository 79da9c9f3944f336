"""``latts serve``: an OpenAI-compatible HTTP API whose answers are voted within a latency budget.

``POST /v1/chat/completions`` takes the OpenAI chat schema plus ``latency_budget`` (seconds, counted
from the request's arrival) and optional ``branches`` / ``gamma`` / ``max_think`` overrides. The last
user message is the question; the reply is a normal chat completion whose message content is the
voted answer, with the winning branch's reasoning in ``reasoning_content`` (the field vLLM's
reasoning parsers use), plus a ``latts`` object: votes, plan, latency, whether the vote stopped early.
``GET /v1/models`` and ``GET /health`` complete the surface an OpenAI client and a load balancer need.

Requests that cannot be answered in time get a 503 with the reason before their deadline (see
:mod:`latts.serve.scheduler`); malformed ones a 4xx in the OpenAI error shape naming the problem, a
prompt longer than the model's context a 400 naming the limit. ``stream: true`` answers with
server-sent events (:mod:`latts.serve.stream`); the API key and the body-size limit are checked in
front of everything (:mod:`latts.serve.access`). ``GET /`` is the playground (``static/``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from latts.config import Plan
from latts.errors import LattsError
from latts.latency.optimizer import Candidate
from latts.latency.plans import choose_plan
from latts.serve.access import AccessLimits
from latts.serve.schema import ChatRequest, ServeConfig, error_response
from latts.serve.scheduler import Gone, Scheduler, Unservable
from latts.serve.stream import Live, chunk, sse
from latts.tasks import Problem
from latts.tts.solver import Solver
from latts.types import Solution


STATIC = Path(__file__).parent / "static"
FIGURE = "accuracy_vs_latency.png"


@dataclass(frozen=True, slots=True)
class MinService:
    """The least time a request needs to answer at all, as a line in its branch count: ``base + per_branch · B``.

    Measured at start-up (:meth:`measure`): a prefill plus an answer forced after one thinking token,
    at B = 1 and at the default plan's B, the faster of two tries each, with a 25% margin.
    """

    base_s: float
    per_branch_s: float

    def __call__(self, branches: int) -> float:
        """Seconds a request with ``branches`` branches needs at least."""
        return self.base_s + self.per_branch_s * branches

    @classmethod
    def measure(cls, solver: Solver, plan: Plan) -> MinService:
        """Time forced answers on ``solver``'s backend (see the class doc)."""
        def once(b: int) -> float:
            best = float("inf")
            for _ in range(2):
                t0 = time.monotonic()
                solver.solve("What is 2 + 2?", replace(plan, branches=b, max_think=1, min_think=0, early_stop=False))
                best = min(best, time.monotonic() - t0)
            return 1.25 * best + 0.05

        wide = max(plan.branches, 2)
        t1, tw = once(1), once(wide)
        per = max(0.0, (tw - t1) / (wide - 1))
        return cls(t1 - per, per)


@dataclass(slots=True)
class Served:
    """What the handlers serve, kept in ``app.state.served``: the solver, the limits, the least service time,
    the saved plans and the scheduler."""

    solver: Solver
    config: ServeConfig
    min_service: MinService
    frontier: list[Candidate] | None
    scheduler: Scheduler
    created: int


def create_app(solver: Solver, config: ServeConfig, min_service: MinService,
               frontier: list[Candidate] | None = None) -> FastAPI:
    """The FastAPI application serving ``solver`` (its backend, task prompt and answer format); ``frontier``:
    the latency-optimal plans of ``latts optimize`` (:func:`latts.latency.plans.saved_frontier`), None for the
    default plan."""
    app = FastAPI(title="latts", description="latency-aware test-time scaling, OpenAI-compatible")
    scheduler = Scheduler(4 if solver.backend.concurrent else 1)
    app.state.scheduler = scheduler
    app.state.served = Served(solver, config, min_service, frontier, scheduler, int(time.time()))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.include_router(routes)
    app.add_middleware(AccessLimits, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    return app


routes = APIRouter()


def _served(request: Request) -> Served:
    return request.app.state.served


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """A request the schema refuses: a 400 naming the field and the problem."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON")
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return error_response(400, f"{where}: {message}" if where else message, param=where or None)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (an unknown path, a wrong method) in the OpenAI error shape."""
    status = getattr(exc, "status_code", 500)
    return error_response(status, str(getattr(exc, "detail", exc)),
                  kind="not_found_error" if status == 404 else "invalid_request_error")


@routes.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness and load: the scheduler's counts and the least service time of one branch and of each more."""
    s = _served(request)
    cores = getattr(s.solver.backend, "cores", None)  # the embedded engine's view of the machine's load
    load = {"others_cores": round(cores.update(), 2), "threads": cores.threads()} if cores is not None else None
    return {"status": "ok", "model": s.config.model_name, "running": s.scheduler.running,
            "waiting": s.scheduler.waiting, "served": s.scheduler.served, "refused": s.scheduler.refused,
            "min_service_s": round(s.min_service(1), 3),
            "min_service_per_branch_s": round(s.min_service.per_branch_s, 4), "load": load}


@routes.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The one model served, as OpenAI clients list models."""
    s = _served(request)
    return {"object": "list", "data": [{"id": s.config.model_name, "object": "model", "created": s.created,
                                        "owned_by": "latts"}]}


@routes.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    """The playground page."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@routes.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Any:
    """The playground's scripts and styles (one flat folder, nothing outside it)."""
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        return error_response(404, f"no static file '{name}'", kind="not_found_error")
    return FileResponse(path)


def _report_figure(config: ServeConfig) -> Path | None:
    figure = Path(config.report_dir) / FIGURE if config.report_dir else None
    return figure if figure is not None and figure.is_file() else None


@routes.get("/playground/info")
async def info(request: Request) -> dict[str, Any]:
    """What the playground shows and offers: model, task, limits, whether plans and a report figure exist."""
    s = _served(request)
    c = s.config
    return {"model": c.model_name, "task": s.solver.task.name, "needs_key": c.api_key is not None,
            "default_budget_s": c.default_budget_s, "max_budget_s": c.max_budget_s,
            "max_branches": c.max_branches, "max_think": c.max_think, "optimized_plans": s.frontier is not None,
            "report_figure": "/report/" + FIGURE if _report_figure(c) is not None else None}


@routes.get("/report/" + FIGURE, include_in_schema=False)
async def report_figure(request: Request) -> Any:
    """The accuracy-versus-latency figure of the ``--report`` folder, if one was given."""
    figure = _report_figure(_served(request).config)
    if figure is None:
        return error_response(404, "no report figure: start latts serve with --report <latts report folder>",
                      kind="not_found_error")
    return FileResponse(figure, media_type="image/png")


@routes.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request) -> Any:
    """A voted answer within the request's latency budget (a 503 before the budget if it cannot be met)."""
    arrival = time.monotonic()
    s = _served(request)
    solver, config, scheduler = s.solver, s.config, s.scheduler
    question = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
    budget = body.latency_budget if body.latency_budget is not None else config.default_budget_s
    problem = _check(body, question, budget, config, solver)
    if isinstance(problem, JSONResponse):
        return problem
    try:
        plan = _plan(body, budget, s.frontier)
    except LattsError as exc:
        return error_response(400, str(exc))
    need = s.min_service(plan.branches)
    if body.stream:
        return await _stream(request, body, scheduler, solver, config, plan, question, budget, arrival, need)
    try:
        solution = await run_in_threadpool(
            scheduler.run, arrival, budget, need,
            lambda end: solver.solve(question, plan, deadline_s=_solve_time(end, budget)))
    except Unservable as exc:
        return error_response(503, str(exc), kind="deadline_unservable")
    except LattsError as exc:
        return error_response(400, str(exc))
    return _completion(solution, solver, config, budget, time.monotonic() - arrival, body.gold)


def _check(body: ChatRequest, question: str, budget: float, config: ServeConfig, solver: Solver) -> JSONResponse | None:
    """The 4xx for what the schema cannot see (model, question, server limits, context), or None."""
    if body.model is not None and body.model != config.model_name:
        return error_response(404, f"model '{body.model}' is not served here; this server serves '{config.model_name}'",
                      kind="not_found_error", param="model")
    if not question.strip():
        return error_response(400, "messages must contain a user message with text (the question)", param="messages")
    if budget > config.max_budget_s:
        return error_response(400, f"latency_budget must be <= {config.max_budget_s:g} s on this server, got {budget:g}",
                      param="latency_budget")
    if body.branches is not None and body.branches > config.max_branches:
        return error_response(400, f"branches must be <= {config.max_branches} on this server, got {body.branches}",
                      param="branches")
    if body.max_think is not None and body.max_think > config.max_think:
        return error_response(400, f"max_think must be <= {config.max_think} on this server, got {body.max_think}",
                      param="max_think")
    context = getattr(getattr(solver.backend, "model", None), "max_positions", None)
    if context is not None and len(question) > context:  # a token is at least one character: count only then
        prompt = solver.task.prompt(Problem("question", question, "", {"raw": True}))
        n = solver.backend.count_prompt_tokens(prompt)
        if n >= context:
            return error_response(400, f"the prompt is {n} tokens, over this model's context of {context} tokens "
                               "(room is needed for thinking and the answer too)", param="messages",
                          code="context_length_exceeded")
    return None


async def _stream(request: Request, body: ChatRequest, scheduler: Scheduler, solver: Solver, config: ServeConfig,
                  plan: Plan, question: str, budget: float, arrival: float, need: float) -> Any:
    """A streamed reply (see :mod:`latts.serve.stream`): a 503 or 400 is still a plain error response, sent
    before the first event; once the request runs, events until the voted answer and ``[DONE]``."""
    loop = asyncio.get_running_loop()
    live = Live(loop, solver.backend.tokenizer, solver.task, body.latts_branches)
    admitted = asyncio.Event()

    def work(end: float) -> Solution:
        loop.call_soon_threadsafe(admitted.set)
        return solver.solve(question, plan, deadline_s=_solve_time(end, budget), on_step=live.on_step)

    job = asyncio.ensure_future(run_in_threadpool(scheduler.run, arrival, budget, need, work, live.cancelled))
    gate = asyncio.ensure_future(admitted.wait())
    while gate not in (await asyncio.wait({job, gate}, timeout=0.2, return_when=asyncio.FIRST_COMPLETED))[0]:
        if job.done():
            gate.cancel()
            exc = job.exception()
            if isinstance(exc, Unservable):
                return error_response(503, str(exc), kind="deadline_unservable")
            if isinstance(exc, LattsError):
                return error_response(400, str(exc))
            if isinstance(exc, Gone):
                return error_response(499, str(exc), kind="client_closed_request")
            raise exc if exc is not None else RuntimeError("the solve ended before it started")
        if await request.is_disconnected():
            live.cancelled.set()
    cid, created = f"chatcmpl-latts-{uuid.uuid4().hex[:16]}", int(time.time())

    async def events() -> Any:
        try:
            yield chunk(cid, created, config.model_name, {"role": "assistant", "content": ""},
                        latts={"plan": plan.to_dict(), "latency_budget_s": budget})
            while True:
                get = asyncio.ensure_future(live.queue.get())
                done, _ = await asyncio.wait({get, job}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                yield _progress_chunk(cid, created, config.model_name, get.result())
            while not live.queue.empty():
                yield _progress_chunk(cid, created, config.model_name, live.queue.get_nowait())
            try:
                solution = job.result()
            except LattsError as exc:
                yield sse({"error": {"message": str(exc), "type": "invalid_request_error", "param": None,
                                     "code": 400}})
                return
            done_doc = _completion(solution, solver, config, budget, time.monotonic() - arrival, body.gold)
            yield chunk(cid, created, config.model_name, {"content": done_doc["choices"][0]["message"]["content"]})
            yield chunk(cid, created, config.model_name, {}, "stop", usage=done_doc["usage"],
                        latts={**done_doc["latts"], "reasoning_branch": 0})
            yield sse("[DONE]")
        finally:
            live.cancelled.set()  # a no-op when the solve is over; else the client left: free the rows now

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _progress_chunk(cid: str, created: int, model: str, event: dict[str, Any]) -> bytes:
    delta = {"reasoning_content": event["reasoning"]} if "reasoning" in event else {}
    extra = {"latts": event["latts"]} if "latts" in event else {}
    return chunk(cid, created, model, delta, **extra)


def _solve_time(end: float, budget_s: float) -> float:
    """Seconds the solve may take to finish by ``end``, less what building and sending the response needs
    (under load that competes for the interpreter with the next request's decoding; serve_load.py measures it)."""
    left = end - time.monotonic()
    return left - min(0.02 * budget_s + 0.03, 0.25 * left)


def _plan(body: ChatRequest, budget: float, frontier: list[Candidate] | None) -> Plan:
    """The request's plan: the saved latency-optimal one for its budget if any, else the default; then overrides."""
    overrides = {"branches": body.branches, "gamma": body.gamma, "max_think": body.max_think,
                 "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed}
    return choose_plan(budget, frontier, overrides)[0]


def _completion(sol: Solution, solver: Solver, config: ServeConfig, budget: float, latency_s: float,
                gold: str | None = None) -> dict[str, Any]:
    """A chat.completion whose message is the voted answer, with the winning branch's reasoning."""
    winner = next((b for b, a in zip(sol.branches, sol.branch_answers)
                   if a is not None and sol.answer is not None and solver.task.same(a, sol.answer)), None)
    if winner is None:
        winner = next((b for b, a in zip(sol.branches, sol.branch_answers) if a is not None), None)
    tokens = sum(b.n_tokens for b in sol.branches)
    return {
        "id": f"chatcmpl-latts-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": config.model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": sol.answer or "",
                        "reasoning_content": winner.text if winner is not None else None},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": sol.prompt_tokens, "completion_tokens": tokens,
                  "total_tokens": sol.prompt_tokens + tokens},
        "latts": {
            "answer": sol.answer,
            "votes": [[a, c] for a, c in sol.votes],
            "abstained": sol.abstained,
            "plan": sol.plan.to_dict(),
            "latency_budget_s": budget,
            "latency_s": round(latency_s, 4),
            "solve_s": round(sol.latency_s, 4),
            "early_stopped": sol.early_stopped,
            "cut_by_deadline": sol.cut_by_deadline,
            "load": sol.load.to_dict() if sol.load is not None else None,  # other processes' share of the CPU
            "finish_reasons": sol.finish_reasons,
            "forced": [b.forced for b in sol.branches],  # why an answer was forced (max_think, deadline) or None
            "branch_answers": sol.branch_answers,
            "winners": [i for i, a in enumerate(sol.branch_answers)
                        if a is not None and sol.answer is not None and solver.task.same(a, sol.answer)],
            **({"gold": gold, "correct": solver.task.grade(gold, sol.answer)} if gold is not None else {}),
        },
    }
