"""The shapes ``latts serve`` speaks: its limits and defaults, the OpenAI chat request it accepts (plus latts'
budget and plan fields), and the OpenAI error shape it answers failures in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from latts.config import MAX_GAMMA


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Limits and defaults of one server."""

    model_name: str
    default_budget_s: float = 10.0  # when a request names no latency_budget (a plain OpenAI client)
    max_budget_s: float = 120.0
    max_branches: int = 64
    max_think: int = 4096
    plans_file: str | None = None  # where the frontier create_app was given comes from (None: no saved plans)
    api_key: str | None = None  # bearer token every /v1 endpoint needs (None: open)
    max_body_bytes: int = 1 << 20
    report_dir: str | None = None  # a `latts report` folder whose accuracy_vs_latency.png the playground links



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
    latts_branches: bool = False  # streamed: every branch's progress and the live tally (the playground)
    gold: str | None = None  # the right answer, if known: the reply says whether the voted answer is it

    @field_validator("stream", "latts_branches", mode="before")
    @classmethod
    def _strict_bool(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """An error in the OpenAI shape (``{"error": {message, type, param, code}}``) with its HTTP status."""
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": code if code is not None else status}})
