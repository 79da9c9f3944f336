"""The seam between the test-time-scaling controller and whatever decodes: the embedded engine
(:class:`latts.engine.engine.Engine`) or a remote OpenAI-compatible server
(:class:`latts.backends.openai.OpenAIBackend`).

The solver, the evaluation harness and ``latts serve`` only use what :class:`Backend` lists, so every
one of them runs unchanged on either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from latts.config import BudgetForcing, SamplingParams
from latts.engine.drafters import Drafter
from latts.types import Branch, Generation


@runtime_checkable
class Backend(Protocol):
    """Decodes B branches of one prompt with sampling, budget forcing and a wall-clock deadline."""

    tokenizer: object  # a Hugging Face tokenizer: chat template, decode
    concurrent: bool  # True when generate() may be called from several threads at once

    def generate(
        self,
        prompt: str | Sequence[int],
        branches: int = 1,
        max_new_tokens: int = 256,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] = (),
        deadline: float | None = None,
        chat: bool = True,
        on_step: Callable[[list[Branch]], bool | None] | None = None,
        ignore_eos: bool = False,
        gamma: int = 0,
        drafter: Drafter | None = None,
        budget: BudgetForcing | None = None,
        logprobs: bool = False,
    ) -> Generation:
        """Decode ``branches`` continuations of ``prompt``; see :meth:`latts.engine.engine.Engine.generate`."""
        ...
