"""The seam between the test-time-scaling controller and whatever decodes: the embedded engine
(:class:`latts.engine.engine.Engine`) or a remote OpenAI-compatible server
(:class:`latts.backends.openai.OpenAIBackend`).

The solver, the evaluation harness, the planner and ``latts serve`` only use what :class:`Backend`
lists, so every one of them runs unchanged on either. What a backend cannot do (checkpoint probes on a
server, a γ the server was not started with) it refuses with a :class:`~latts.errors.LattsError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from latts.request import GenerateRequest, OnStep
from latts.types import Generation


@runtime_checkable
class Backend(Protocol):
    """Decodes B branches of one prompt with sampling, budget forcing and a wall-clock deadline."""

    tokenizer: object  # a Hugging Face tokenizer: chat template, decode
    concurrent: bool  # True when generate() may be called from several threads at once
    warmup_s: float  # seconds the warm-up took (never inside a deadline)

    def generate(self, request: GenerateRequest, on_step: OnStep | None = None) -> Generation:
        """Decode ``request``; ``on_step`` sees the branches after every step and may end the request
        (unfinished branches become ``cancelled``). Keep it cheap."""
        ...

    def count_prompt_tokens(self, prompt: str | Sequence[int], chat: bool = True) -> int:
        """How many tokens ``prompt`` is, formatted as ``generate`` formats it (chat template when ``chat``)."""
        ...
