"""One request on an OpenAI-compatible server, streamed: what :class:`~latts.backends.openai.OpenAIBackend`
runs for each ``generate`` call.

A coroutine per branch streams its segments (thinking, the ignore string's continuations, the forced
answer, or the response after a reasoning model closed its thinking) and timestamps every piece; a
watcher runs ``on_step`` and holds the deadline. For a model whose tokenizer has ``</think>``, a
thinking segment ends where the tag arrives: below ``min_think`` the tag is dropped and the ignore
string appended (as the embedded engine does), else the tag is kept and the branch streams its
response; a forced answer is ``</think>`` and the answer prompt. Errors become
one :class:`~latts.errors.LattsError` line (:func:`api_error`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Protocol

from latts.config import BudgetForcing, SamplingParams
from latts.engine.budget import answer_end
from latts.tasks.grading import THINK_END
from latts.errors import LattsError
from latts.request import OnStep
from latts.types import Branch


class Server(Protocol):
    """What a streamed request needs of the backend that sends it (:class:`~latts.backends.openai.OpenAIBackend`):
    where the server is, what it runs, and what its own measurements say."""

    base_url: str
    model: str
    api_key: str
    timeout_s: float
    branch_mode: str
    tokenizer: Any  # a Hugging Face tokenizer
    eos_token_ids: Sequence[int]

    def answer_time_s(self, branches: int, answer_tokens: int) -> float:
        """Seconds a forced answer of ``answer_tokens`` tokens takes with ``branches`` streams at once."""
        ...

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
    # forced answer ended: answer_end), until (our time limit closed it), think_end (</think> arrived; not
    # in the text)
    reason: str | None = None
    tokens: int = 0
    pieces: int = 0  # streamed pieces (each one token or more)


class Run:
    """One generate() call: a coroutine per branch, and a watcher for on_step and the deadline."""

    def __init__(self, backend: Server, prompt: str, out: list[Branch], sampling: SamplingParams,
                 stops: tuple[str, ...], deadline: float | None, budget: BudgetForcing | None, max_new_tokens: int,
                 on_step: OnStep | None, ignore_eos: bool, t0: float) -> None:
        self.be, self.prompt, self.out, self.sampling = backend, prompt, out, sampling
        self.stops, self.deadline, self.budget, self.max_new_tokens = stops, deadline, budget, max_new_tokens
        self.on_step, self.t0 = on_step, t0
        self.pieces = [0] * len(out)
        # the request's own bias; fixed-length runs (profiling): end-of-sequence banned
        bias = {str(t): v for t, v in sampling.logit_bias}
        if ignore_eos:
            bias.update({str(t): -100 for t in backend.eos_token_ids})
        self.logit_bias = bias or None
        # a reasoning model's end of thinking, when its tokenizer has the tag as one token
        self.think_end = THINK_END in backend.tokenizer.get_vocab() if budget is not None else False
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
                seg = (await self._segment(client, [i], f.max_think - b.think_tokens, self.force_at, part,
                                           thinking=True))[0]
            part += 1
            b.think_tokens += f.max_think - b.think_tokens if seg.reason == "length" else seg.tokens
            if seg.reason == "stop":
                return self._finish(b, "stop")
            if seg.reason == "think_end" and b.think_tokens >= f.min_think:
                return await self._respond(client, i, part)
            if seg.reason in ("eos", "think_end"):
                if seg.reason == "eos" and b.think_tokens >= f.min_think:
                    return self._finish(b, "eos")
                self._append(i, f.ignore)  # s1: suppress the stop, make it go on
                b.think_tokens += self._count(f.ignore)
                b.ignored += 1
                if b.think_tokens < f.max_think:
                    continue
            b.forced = "deadline" if seg.reason == "until" else "max_think"
            break
        self._append(i, (THINK_END if self.think_end else "") + f.answer_prompt)
        seg = (await self._segment(client, [i], f.answer_tokens, self.deadline, part, answer=True))[0]
        self._finish(b, {"length": "answered", "until": "deadline"}.get(seg.reason, seg.reason))

    async def _respond(self, client: Any, i: int, part: int) -> None:
        """Branch ``i`` closed its thinking by itself: keep the tag and stream its response, up to the tokens a
        branch may hold in all (the embedded engine's :attr:`~latts.engine.budget.Forcing.capacity`)."""
        b, f = self.out[i], self.budget
        self._append(i, THINK_END)
        capacity = (f.max_think + self._count(f.ignore) + self._count(THINK_END + f.answer_prompt) + f.answer_tokens
                    + 1)
        left = max(1, capacity - self._count(b.text))
        seg = (await self._segment(client, [i], left, self.deadline, part, thinking=False))[0]
        self._finish(b, {"until": "deadline"}.get(seg.reason, seg.reason))

    async def _shared_first(self, client: Any, i: int, max_tokens: int) -> _Segment:
        """The first thinking segment of every branch from one ``n = B`` request (one shared prefill)."""
        if self._first is None:
            self._first = asyncio.create_task(self._segment(client, list(range(len(self.out))), max_tokens,
                                                            self.force_at, 0, thinking=True))
        return (await asyncio.shield(self._first))[i]

    def _append(self, i: int, text: str) -> None:
        self.out[i].text += text

    async def _segment(self, client: Any, rows: list[int], max_tokens: int, until: float | None, part: int,
                       answer: bool = False, thinking: bool = False) -> list[_Segment]:
        """Stream one completion (``n = len(rows)`` choices) continuing each row's text, until ``until``
        (``thinking``: it ends where ``</think>`` arrives)."""
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
                            self._receive(rows[k], segs[k], ch.text, answer, now, t_req, last, k,
                                          thinking and self.think_end)
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
                 k: int, thinking: bool = False) -> None:
        """Add a streamed piece to branch ``i``: timestamps, stop strings, the end of a forced answer, the end of
        thinking (``</think>``: the segment ends before it, and the tag is left out of the text)."""
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
        if thinking and THINK_END in seg.text:
            cut = len(seg.text) - seg.text.index(THINK_END)
            b.text, seg.text, seg.reason = b.text[:-cut], seg.text[:-cut], "think_end"
        for s in self.stops:
            at = b.text.find(s)
            if at >= 0:
                cut = len(b.text) - at
                b.text, seg.text, seg.reason = b.text[:at], seg.text[: max(0, len(seg.text) - cut)], "stop"
                return
