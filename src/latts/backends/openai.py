"""Test-time scaling on an existing serving engine: any OpenAI-compatible server (vLLM, SGLang,
llama.cpp's server) as a :class:`~latts.backends.base.Backend`.

What the embedded engine does inside one batch, this backend does over HTTP:

- **B branches**: one ``/v1/completions`` request with ``n = B`` where the server honours ``n``
  (vLLM, SGLang: one shared prefill), else B concurrent requests (llama.cpp's servers). ``auto``
  asks the server once for two choices and looks at how many come back: llama-cpp-python drops
  ``n`` without a word, so trusting the request would be silently wrong.
- **Budget forcing** the way s1 does it client-side, on the raw prompt (the model's own chat
  template, applied here with its tokenizer): stop at end-of-sequence, append the ignore string and
  continue while the branch is under ``min_think``; at ``max_think`` append the answer prompt and
  decode at most ``answer_tokens`` more, cut where the answer ends by the embedded engine's own rule
  (:func:`latts.engine.budget.answer_end`: where the answer's brace closes).
- **The deadline**: every request streams; each piece gets a client-side timestamp. When the time
  left only covers an answer (time to first token + answer tokens × time per token, measured on
  this server's own streams), the thinking streams are closed and the answers forced from what
  arrived; at the deadline itself everything still open is cancelled.
- **Speculative decoding** is the server's setting (vLLM ``--speculative-config``, SGLang
  ``--speculative-algorithm``, llama.cpp ``--model-draft``): ``server_gamma`` records what the user
  says the server runs, and a plan asking for another γ is refused rather than silently ignored.

Errors (server unreachable, a model the server does not serve, HTTP 4xx/5xx, timeouts) become one
:class:`~latts.errors.LattsError` line carrying the server's own message. The streamed run of one
request is :mod:`latts.backends.openai_stream`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from latts.backends.openai_stream import Run, api_error
from latts.config import SamplingParams
from latts.errors import LattsError
from latts.provenance import MeasuredWith
from latts.request import GenerateRequest, OnStep
from latts.types import Branch, Generation

BRANCH_MODES = ("auto", "n", "requests")


class OpenAIBackend:
    """Decodes B branches on a remote OpenAI-compatible server, with budget forcing and a deadline.

    Args:
        base_url: the server's OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server serves (checked against ``GET /v1/models``).
        api_key: sent as a bearer token (``none`` when the server needs none).
        tokenizer: the served model's tokenizer (a latts model name, HF folder or GGUF file) — its
            chat template formats prompts; default: ``model`` itself, which works when the server
            serves it under a name latts can resolve.
        branch_mode: ``n`` (one request, ``n`` = B), ``requests`` (B concurrent requests) or ``auto``.
        server_gamma: draft tokens per step the server was started with (0: no speculation).
        slots: requests the server decodes at once in ``requests`` mode (llama.cpp ``--parallel``;
            llama-cpp-python's server runs 1); None means all B at once. Only the deadline's estimate
            of how long forced answers take uses it.
        timeout_s: the longest wait for any single HTTP response.
    """

    concurrent = True

    def __init__(self, base_url: str, model: str, api_key: str | None = None, tokenizer: str | object | None = None,
                 branch_mode: str = "auto", server_gamma: int = 0, slots: int | None = None,
                 timeout_s: float = 60.0) -> None:
        try:
            import openai
        except ImportError:
            raise LattsError("the openai backend needs the openai package: pip install 'latts[remote]'") from None
        if branch_mode not in BRANCH_MODES:
            raise LattsError(f"branch mode must be one of {', '.join(BRANCH_MODES)}, got '{branch_mode}'")
        if server_gamma < 0:
            raise LattsError(f"server gamma must be >= 0, got {server_gamma}")
        if slots is not None and slots < 1:
            raise LattsError(f"slots must be >= 1, got {slots}")
        if not base_url.startswith(("http://", "https://")):
            raise LattsError(f"base URL must start with http:// or https://, got '{base_url}'")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.api_key = api_key or "none"
        self.timeout_s = timeout_s
        self.server_gamma = server_gamma
        self.slots = slots
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=timeout_s)
        served = self.served_models()
        if model not in served:
            raise LattsError(f"model '{model}' is not served by {self.base_url}; it serves: {', '.join(served) or 'nothing'}")
        if tokenizer is None or isinstance(tokenizer, str):
            from latts.engine.loading.loader import load_tokenizer

            try:
                tokenizer = load_tokenizer(tokenizer or model)
            except LattsError as exc:
                raise LattsError(f"the openai backend formats prompts with the model's own tokenizer: pass "
                                 f"--tokenizer (a latts model name, HF folder or GGUF file) ({exc})") from None
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(i for i in [getattr(tokenizer, "eos_token_id", None)] if i is not None)
        self.branch_mode = self._detect_branch_mode() if branch_mode == "auto" else branch_mode
        self.ttft_s = 0.3  # time to first token, refined on every stream
        self.tpot_s = 0.05  # time per output token, refined on every stream
        self.warmup_s = 0.0

    # ----------------------------------------------------------------- server facts
    def served_models(self) -> list[str]:
        """Model names the server lists under ``GET /v1/models``."""
        try:
            return [m.id for m in self._client.models.list()]
        except Exception as exc:
            raise api_error(exc, self.base_url, self.timeout_s) from None

    def _detect_branch_mode(self) -> str:
        """``n`` if the server really returns two choices for ``n=2``, else ``requests``."""
        import openai

        try:
            r = self._client.completions.create(model=self.model, prompt="1, 2, 3,", max_tokens=1, n=2,
                                                temperature=1.0)
        except openai.BadRequestError:  # e.g. llama.cpp: "Only one completion choice is allowed"
            return "requests"
        except Exception as exc:
            raise api_error(exc, self.base_url, self.timeout_s) from None
        return "n" if len({c.index for c in r.choices}) >= 2 else "requests"

    def describe(self) -> dict[str, Any]:
        """What a profile or plan records about this backend."""
        return {"backend": "openai", "base_url": self.base_url, "model": self.model, "branch_mode": self.branch_mode,
                "server_gamma": self.server_gamma, "slots": self.slots}

    def measured_with(self) -> MeasuredWith:
        """What a measurement of this server records: its model (its kernels and weights are the server's)."""
        return MeasuredWith(f"remote:{self.model}", "remote", "remote", 0)

    def warmup(self, branches: Sequence[int] = (1,)) -> float:
        """One short request so the time estimates come from this server; seconds spent."""
        t0 = time.perf_counter()
        for b in branches:
            self.generate(GenerateRequest("Say hi.", branches=b, max_new_tokens=4,
                                          sampling=SamplingParams(temperature=1.0), gamma=self.server_gamma))
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def answer_time_s(self, branches: int, answer_tokens: int) -> float:
        """Estimated seconds for B forced answers of ``answer_tokens`` tokens on this server."""
        waves = 1
        if self.branch_mode == "requests" and self.slots is not None:
            waves = math.ceil(branches / self.slots)
        return waves * (self.ttft_s + (answer_tokens + 1) * self.tpot_s)

    def prompt_text(self, prompt: str | Sequence[int], chat: bool = True) -> str:
        """The raw prompt sent to ``/v1/completions``: the chat template applied here, or decoded ids."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise LattsError("empty prompt")
            if chat and getattr(self.tokenizer, "chat_template", None):
                return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                          add_generation_prompt=True, tokenize=False)
            return prompt
        ids = [int(t) for t in prompt]
        if not ids:
            raise LattsError("empty prompt")
        return self.tokenizer.decode(ids)

    def count_prompt_tokens(self, prompt: str | Sequence[int], chat: bool = True) -> int:
        """How many tokens the raw prompt sent to the server is (by the served model's tokenizer)."""
        return len(self.tokenizer(self.prompt_text(prompt, chat), add_special_tokens=False)["input_ids"])

    # ----------------------------------------------------------------- generation
    def generate(self, request: GenerateRequest, on_step: OnStep | None = None) -> Generation:
        """Decode ``request``'s branches on the server (see :class:`~latts.request.GenerateRequest`).

        ``drafter`` is ignored: the server drafts, and ``gamma`` must be what it runs. Checkpoint
        probes, token log-probabilities and top-k are refused: the server cannot provide them.
        ``token_times`` holds one client-side timestamp per streamed piece (one token per piece on
        llama.cpp and vLLM by default).
        """
        t0 = time.monotonic()
        r = request
        if r.gamma != self.server_gamma:
            raise LattsError(f"the server's speculation is set when it starts (told: γ={self.server_gamma}); "
                             f"a plan with γ={r.gamma} cannot run on it")
        if r.logprobs:
            raise LattsError("weighted voting needs token log-probabilities, which the openai backend does not collect")
        if r.sampling.top_k:
            raise LattsError("top-k is not part of the OpenAI completions API; use top-p")
        if r.checkpoints:
            raise LattsError("checkpoint probes need the embedded engine: they copy a branch's cache row, "
                             "which a server does not expose")
        if r.pruning is not None:
            raise LattsError("confidence pruning needs the embedded engine: it reads every token's distribution, "
                             "which the openai backend does not collect")
        text = self.prompt_text(r.prompt, r.chat)
        n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        out = [Branch(index=i) for i in range(r.branches)]
        if r.deadline is not None and t0 >= r.deadline:
            for b in out:
                b.finish_reason = "deadline"
            return Generation(out, n_prompt, 0.0, 0.0, 0, None)
        run = Run(self, text, out, r.sampling, r.stop, r.deadline, r.budget, r.max_new_tokens, on_step,
                   r.ignore_eos, t0)
        asyncio.run(run.main())
        first = [b.token_times[0] for b in out if b.token_times]
        prefill = min(first) if first else 0.0
        return Generation(out, n_prompt, prefill, time.monotonic() - t0 - prefill, max(run.pieces), None)
