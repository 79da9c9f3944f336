"""Streaming chat completions: the solve's progress as server-sent events in OpenAI's chunk format.

The solve runs in a worker thread; :class:`Live` is its ``on_step`` callback. At most every
``every_s`` seconds (and whenever a branch finishes) it turns the branches into one progress event
and hands it to the response's coroutine. The stream is then:

1. a first chunk with ``delta.role`` and the request's ``latts`` plan and budget;
2. ``reasoning_content`` deltas: the text **branch 0** adds. One branch, because a reader (and a chat
   front-end) needs one coherent, append-only text; the branch whose answer wins is not known until
   the vote, and following the current leader would splice pieces of different branches together.
   Branch 0 is as good a sample of the reasoning as any (the branches are exchangeable), it exists in
   every plan, and the final ``latts`` object names the winning branches and carries every answer;
3. with ``latts_branches: true`` in the request (the playground), every chunk also carries
   ``latts.branches`` (each branch's new text, tokens, drafts accepted/proposed, finish reason and
   answer) and ``latts.tally`` (the vote over the branches finished so far);
4. the voted answer as one ``content`` delta, then a last chunk with ``finish_reason``, ``usage`` and
   the same ``latts`` object an unstreamed reply carries; then ``data: [DONE]``.

A client that goes away sets :attr:`Live.cancelled`: the next decode step ends the request (its rows
are freed) and a request still queued leaves the queue.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from latts.tasks import Task
from latts.tts.voting import vote
from latts.types import Branch


class Live:
    """One streamed request's progress, from the solve's thread (``on_step``) to the response (``queue``).

    Args:
        loop: the event loop of the response.
        tokenizer: decodes the branches' tokens.
        task: extracts answers and says which are the same (the live tally).
        lanes: carry every branch's progress (the playground), not only branch 0's reasoning.
        every_s: the least time between two progress events.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tokenizer: Any, task: Task, lanes: bool,
                 every_s: float = 0.12) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.tokenizer = tokenizer
        self.task = task
        self.lanes = lanes
        self.every_s = every_s
        self._sent: dict[int, str] = {}
        self._answers: dict[int, str | None] = {}
        self._last = 0.0
        self.t0 = time.monotonic()

    def on_step(self, branches: list[Branch]) -> bool:
        """The solver's step callback: True (end the request) once the client is gone."""
        if self.cancelled.is_set():
            return True
        now = time.monotonic()
        finished = self.lanes and any(b.finish_reason and b.index not in self._answers for b in branches)
        if now - self._last >= self.every_s or finished:
            self._last = now
            event = self.progress(branches)
            if event:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        return False

    def progress(self, branches: list[Branch]) -> dict[str, Any]:
        """What changed since the last event: branch 0's reasoning delta and, with lanes, every branch's."""
        event: dict[str, Any] = {}
        lanes = []
        for b in branches if self.lanes else branches[:1]:
            delta = self._delta(b)
            if b.finish_reason and b.index not in self._answers:
                self._answers[b.index] = self.task.extract(self._sent.get(b.index, ""))
            if b.index == 0 and delta:
                event["reasoning"] = delta
            if self.lanes:
                lanes.append({"index": b.index, "delta": delta, "tokens": b.n_tokens, "think_tokens": b.think_tokens,
                              "drafts_accepted": b.spec_accepted, "drafts_proposed": b.spec_proposed,
                              "finish_reason": b.finish_reason, "forced": b.forced,
                              "answer": self._answers.get(b.index)})
        if self.lanes:
            answers = [self._answers[i] for i in sorted(self._answers)]
            event["latts"] = {"elapsed_s": round(time.monotonic() - self.t0, 3), "branches": lanes,
                              "tally": [[a, c] for a, c in vote(answers, self.task.same).counts]}
        return event

    def _delta(self, b: Branch) -> str:
        """The text branch ``b`` added since the last event (an incomplete UTF-8 character waits)."""
        text = self.tokenizer.decode(b.token_ids, skip_special_tokens=True).rstrip("\ufffd")
        sent = self._sent.get(b.index, "")
        if not text.startswith(sent):
            return ""  # the tokenizer rewrote the tail (rare): wait until it is a continuation again
        self._sent[b.index] = text
        return text[len(sent):]


def chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> bytes:
    """One ``chat.completion.chunk`` as a server-sent event."""
    doc = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
    return sse(doc)


def sse(doc: dict[str, Any] | str) -> bytes:
    """A server-sent event's ``data:`` line."""
    return f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n".encode()
