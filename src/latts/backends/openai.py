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
:class:`~latts.errors.LattsError` line carrying the server's own message.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latts.config import BudgetForcing, SamplingParams
from latts.engine.budget import answer_end
from latts.errors import LattsError
from latts.request import GenerateRequest, OnStep
from latts.types import Branch, Generation

BRANCH_MODES = ("auto", "n", "requests")
_EMA = 0.2  # weight of the newest measurement in the server's time-per-token / first-token estimates
_POLL_S = 0.02  # how often the request's watcher runs on_step and checks the deadline


def api_error(exc: Exception, base_url: str, timeout_s: float) -> LattsError:
    """One line saying what went wrong talking to the server, with its own message when it sent one."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return LattsError(f"the server at {base_url} did not answer within {timeout_s:g} s")
    if isinstance(exc, openai.APIConnectionError):
        return LattsError(f"cannot reach the server at {base_url} ({exc.__cause__ or exc})")
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = None
        if isinstance(body, dict):
            err = body.get("error", body)
            message = err.get("message") if isinstance(err, dict) else str(err)
            message = message or body.get("detail")
        message = " ".join(str(message or exc.message).split())
        return LattsError(f"the server at {base_url} answered HTTP {exc.status_code}: {message[:300]}")
    return LattsError(f"error talking to the server at {base_url}: {type(exc).__name__}: {exc}")


@dataclass(slots=True)
class _Segment:
    """One streamed completion of one branch: its text and why it ended."""

    text: str = ""
    # eos (the server stopped: end of sequence), length (max_tokens), stop (a stop string), answered (the
    # forced answer ended: answer_end), until (our time limit closed it)
    reason: str | None = None
    tokens: int = 0
    pieces: int = 0  # streamed pieces (each one token or more)


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
            from latts.engine.loading import load_tokenizer

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
        text = self.prompt_text(r.prompt, r.chat)
        n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        out = [Branch(index=i) for i in range(r.branches)]
        if r.deadline is not None and t0 >= r.deadline:
            for b in out:
                b.finish_reason = "deadline"
            return Generation(out, n_prompt, 0.0, 0.0, 0, None)
        run = _Run(self, text, out, r.sampling, r.stop, r.deadline, r.budget, r.max_new_tokens, on_step,
                   r.ignore_eos, t0)
        asyncio.run(run.main())
        first = [b.token_times[0] for b in out if b.token_times]
        prefill = min(first) if first else 0.0
        return Generation(out, n_prompt, prefill, time.monotonic() - t0 - prefill, max(run.pieces), None)


class _Run:
    """One generate() call: a coroutine per branch, and a watcher for on_step and the deadline."""

    def __init__(self, backend: OpenAIBackend, prompt: str, out: list[Branch], sampling: SamplingParams,
                 stops: tuple[str, ...], deadline: float | None, budget: BudgetForcing | None, max_new_tokens: int,
                 on_step: OnStep | None, ignore_eos: bool, t0: float) -> None:
        self.be, self.prompt, self.out, self.sampling = backend, prompt, out, sampling
        self.stops, self.deadline, self.budget, self.max_new_tokens = stops, deadline, budget, max_new_tokens
        self.on_step, self.t0 = on_step, t0
        self.pieces = [0] * len(out)
        # fixed-length runs (profiling): end-of-sequence banned
        self.logit_bias = {str(t): -100 for t in backend.eos_token_ids} if ignore_eos else None
        # thinking ends here so that the forced answers still fit before the deadline
        self.force_at = None
        if deadline is not None and budget is not None:
            self.force_at = deadline - backend.answer_time_s(len(out), budget.answer_tokens)
        self._first: asyncio.Task | None = None

    def _count(self, text: str) -> int:
        return len(self.be.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    async def main(self) -> None:
        import openai

        client = openai.AsyncOpenAI(base_url=self.be.base_url, api_key=self.be.api_key, max_retries=0,
                                    timeout=self.be.timeout_s)
        async with client:
            tasks = [asyncio.create_task(self._branch(client, i)) for i in range(len(self.out))]
            why = "deadline"
            try:
                while True:
                    done, pending = await asyncio.wait(tasks, timeout=_POLL_S)
                    for t in done:
                        if not t.cancelled() and t.exception() is not None:
                            raise t.exception()
                    if not pending:
                        break
                    if self.deadline is not None and time.monotonic() >= self.deadline:
                        break
                    if self.on_step is not None and self.on_step(self.out):
                        why = "cancelled"
                        break
            except openai.OpenAIError as exc:
                raise api_error(exc, self.be.base_url, self.be.timeout_s) from None
            finally:
                for t in tasks + ([self._first] if self._first else []):
                    t.cancel()
                await asyncio.gather(*tasks, *([self._first] if self._first else []), return_exceptions=True)
            for b in self.out:
                if not b.finish_reason:
                    self._finish(b, why)

    def _finish(self, b: Branch, reason: str) -> None:
        b.token_ids = list(self.be.tokenizer(b.text, add_special_tokens=False)["input_ids"])
        b.finish_reason = reason  # type: ignore[assignment]

    # ----------------------------------------------------------------- one branch
    async def _branch(self, client: Any, i: int) -> None:
        b, f = self.out[i], self.budget
        if f is None:
            seg = await self._segment(client, [i], self.max_new_tokens, self.deadline, 0)
            self._finish(b, {"until": "deadline"}.get(seg[0].reason, seg[0].reason))
            return
        part = 0
        while True:
            if part == 0 and self.be.branch_mode == "n" and len(self.out) > 1:
                seg = await self._shared_first(client, i, f.max_think)
            else:
                seg = (await self._segment(client, [i], f.max_think - b.think_tokens, self.force_at, part))[0]
            part += 1
            b.think_tokens += f.max_think - b.think_tokens if seg.reason == "length" else seg.tokens
            if seg.reason == "stop":
                return self._finish(b, "stop")
            if seg.reason == "eos":
                if b.think_tokens >= f.min_think:
                    return self._finish(b, "eos")
                self._append(i, f.ignore)  # s1: suppress the stop, make it go on
                b.think_tokens += self._count(f.ignore)
                b.ignored += 1
                if b.think_tokens < f.max_think:
                    continue
            b.forced = "deadline" if seg.reason == "until" else "max_think"
            break
        self._append(i, f.answer_prompt)
        seg = (await self._segment(client, [i], f.answer_tokens, self.deadline, part, answer=True))[0]
        self._finish(b, {"length": "answered", "until": "deadline"}.get(seg.reason, seg.reason))

    async def _shared_first(self, client: Any, i: int, max_tokens: int) -> _Segment:
        """The first thinking segment of every branch from one ``n = B`` request (one shared prefill)."""
        if self._first is None:
            self._first = asyncio.create_task(self._segment(client, list(range(len(self.out))), max_tokens,
                                                            self.force_at, 0))
        return (await asyncio.shield(self._first))[i]

    def _append(self, i: int, text: str) -> None:
        self.out[i].text += text

    async def _segment(self, client: Any, rows: list[int], max_tokens: int, until: float | None, part: int,
                       answer: bool = False) -> list[_Segment]:
        """Stream one completion (``n = len(rows)`` choices) continuing each row's text, until ``until``."""
        segs = [_Segment() for _ in rows]
        if until is not None and time.monotonic() >= until:
            for s in segs:
                s.reason = "until"
            return segs
        s0 = self.sampling.seed
        # requests mode: a distinct seed per branch and segment, or every branch would sample the same text
        seed = s0 if len(rows) > 1 else (s0 * 1_000_003 + rows[0] * 1009 + part) % (2**31)
        t_req = time.monotonic()
        stream = None
        try:
            async with asyncio.timeout(None if until is None else until - t_req):
                stream = await client.completions.create(
                    model=self.be.model, prompt=self.prompt + self.out[rows[0]].text, max_tokens=max_tokens,
                    n=len(rows), temperature=self.sampling.temperature, top_p=self.sampling.top_p, seed=seed,
                    stream=True, **({"logit_bias": self.logit_bias} if self.logit_bias else {}))
                last = [None] * len(rows)
                async for chunk in stream:
                    now = time.monotonic()
                    for ch in chunk.choices:
                        k = ch.index if len(rows) > 1 else 0
                        if k >= len(rows) or segs[k].reason:
                            continue
                        if ch.text:
                            self._receive(rows[k], segs[k], ch.text, answer, now, t_req, last, k)
                        if ch.finish_reason and not segs[k].reason:
                            segs[k].reason = "eos" if ch.finish_reason == "stop" else ch.finish_reason
                    if all(s.reason for s in segs):
                        break
        except TimeoutError:
            for s in segs:
                s.reason = s.reason or "until"
        finally:
            if stream is not None:
                await stream.close()
        if any(s.reason is None for s in segs):
            await self._explain_cut_stream(client, rows[0], segs)  # raises
        for s in segs:  # what each branch's thinking count grows by: a full segment is max_tokens long
            s.tokens = max_tokens if s.reason == "length" else self._count(s.text)
        return segs

    async def _explain_cut_stream(self, client: Any, row: int, segs: list[_Segment]) -> None:
        """A stream ended without a finish reason: find out why and raise it as one line.

        Servers that fail a streamed request after sending the HTTP 200 (llama-cpp-python does, e.g.
        for a prompt longer than its context) just end the stream; the same request unstreamed gets
        the server's real error. A stream cut after some tokens is llama-cpp-python's
        ``interrupt_requests`` at work.
        """
        if not any(s.text for s in segs):
            # on a fresh connection (the cut one may be unusable); raises the server's own error
            await asyncio.to_thread(self.be._client.completions.create, model=self.be.model,
                                    prompt=self.prompt + self.out[row].text, max_tokens=1, temperature=0.0)
            raise LattsError(f"the server at {self.be.base_url} ended a stream before its first token")
        raise LattsError(f"the server at {self.be.base_url} ended a stream without a finish reason (llama-cpp-"
                         "python's server interrupts a request when another arrives: start it with "
                         "--interrupt_requests False)")

    def _receive(self, i: int, seg: _Segment, piece: str, answer: bool, now: float, t_req: float, last: list,
                 k: int) -> None:
        """Add a streamed piece to branch ``i``: timestamps, stop strings, the end of a forced answer."""
        b, be = self.out[i], self.be
        if last[k] is None:
            be.ttft_s = (1 - _EMA) * be.ttft_s + _EMA * (now - t_req)
        else:
            be.tpot_s = (1 - _EMA) * be.tpot_s + _EMA * (now - last[k])
        last[k] = now
        self.pieces[i] += 1
        b.token_times.append(now - self.t0)
        seg.pieces += 1
        if answer:  # the forced answer ends where the embedded engine's rule says (the brace closes, ...)
            end = answer_end(seg.text + piece, seg.pieces, self.budget)
            if end is not None:
                piece, seg.reason = piece[: end - len(seg.text)], "answered"
        seg.text += piece
        b.text += piece
        for s in self.stops:
            at = b.text.find(s)
            if at >= 0:
                cut = len(b.text) - at
                b.text, seg.text, seg.reason = b.text[:at], seg.text[: max(0, len(seg.text) - cut)], "stop"
                return
