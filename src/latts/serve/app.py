"""``latts serve``: an OpenAI-compatible HTTP API whose answers are voted within a latency budget.

``POST /v1/chat/completions`` takes the OpenAI chat schema plus ``latency_budget`` (seconds, counted
from the request's arrival) and optional ``branches`` / ``gamma`` / ``max_think`` overrides. The last
user message is the question; the reply is a normal chat completion whose message content is the
voted answer, with the winning branch's reasoning in ``reasoning_content`` (the field vLLM's
reasoning parsers use), plus a ``latts`` object: votes, plan, latency, whether the vote stopped early.
``GET /v1/models`` and ``GET /health`` complete the surface an OpenAI client and a load balancer need.

Requests that cannot be answered in time get a 503 with the reason before their deadline (see
:mod:`latts.serve.scheduler`); malformed ones a 4xx in the OpenAI error shape naming the problem.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from latts.config import MAX_GAMMA, Plan
from latts.errors import LattsError
from latts.latency.optimizer import Candidate
from latts.planning import choose_plan
from latts.serve.scheduler import Scheduler, Unservable
from latts.tts.solver import Solver
from latts.types import Solution


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Limits and defaults of one server."""

    model_name: str
    default_budget_s: float = 10.0  # when a request names no latency_budget (a plain OpenAI client)
    max_budget_s: float = 120.0
    max_branches: int = 64
    max_think: int = 4096
    plans_file: str | None = None  # where the frontier create_app was given comes from (None: no saved plans)


class Message(BaseModel):
    """One chat message; content as a string or as OpenAI text parts."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text, text parts joined."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """The OpenAI chat-completions request, plus latts' budget and plan overrides; unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    latency_budget: float | None = Field(default=None, gt=0)
    branches: int | None = Field(default=None, ge=1)
    gamma: int | None = Field(default=None, ge=0, le=MAX_GAMMA)
    max_think: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = None

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("streaming is not supported: the answer is a vote over finished branches")
        return v


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": status}})


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


def create_app(solver: Solver, config: ServeConfig, min_service: MinService,
               frontier: list[Candidate] | None = None) -> FastAPI:
    """The FastAPI application serving ``solver`` (its backend, task prompt and answer format); ``frontier``:
    the latency-optimal plans of ``latts optimize`` (:func:`latts.planning.saved_frontier`), None for the
    default plan."""
    app = FastAPI(title="latts", description="latency-aware test-time scaling, OpenAI-compatible")
    capacity = 4 if solver.backend.concurrent else 1
    scheduler = Scheduler(capacity)
    app.state.scheduler = scheduler
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return _error(400, f"{where}: {message}" if where else message, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404 else
                      "invalid_request_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_name, "running": scheduler.running,
                "waiting": scheduler.waiting, "served": scheduler.served, "refused": scheduler.refused,
                "min_service_s": round(min_service(1), 3), "min_service_per_branch_s": round(min_service.per_branch_s, 4)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": created,
                                            "owned_by": "latts"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        arrival = time.monotonic()
        if body.model is not None and body.model != config.model_name:
            return _error(404, f"model '{body.model}' is not served here; this server serves '{config.model_name}'",
                          kind="not_found_error", param="model")
        question = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
        if not question.strip():
            return _error(400, "messages must contain a user message with text (the question)", param="messages")
        budget = body.latency_budget if body.latency_budget is not None else config.default_budget_s
        if budget > config.max_budget_s:
            return _error(400, f"latency_budget must be <= {config.max_budget_s:g} s on this server, got {budget:g}",
                          param="latency_budget")
        if body.branches is not None and body.branches > config.max_branches:
            return _error(400, f"branches must be <= {config.max_branches} on this server, got {body.branches}",
                          param="branches")
        if body.max_think is not None and body.max_think > config.max_think:
            return _error(400, f"max_think must be <= {config.max_think} on this server, got {body.max_think}",
                          param="max_think")
        try:
            plan = _plan(body, budget, frontier)
            solution = await run_in_threadpool(
                scheduler.run, arrival, budget, min_service(plan.branches),
                lambda end: solver.solve(question, plan, deadline_s=_solve_time(end, budget)))
        except Unservable as exc:
            return _error(503, str(exc), kind="deadline_unservable")
        except LattsError as exc:
            return _error(400, str(exc))
        return _completion(solution, solver, config, budget, time.monotonic() - arrival)

    return app


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


def _completion(sol: Solution, solver: Solver, config: ServeConfig, budget: float, latency_s: float) -> dict[str, Any]:
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
            "finish_reasons": sol.finish_reasons,
            "branch_answers": sol.branch_answers,
        },
    }
