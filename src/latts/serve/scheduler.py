"""Who gets the engine next, and who is told no in time.

The embedded engine runs one request at a time, so requests queue. The queue is ordered by deadline
(earliest first): a request's deadline counts from its arrival, and the one that must finish soonest
is the one that can least afford to wait. A request that can no longer be answered before its
deadline — its budget is below the least a request costs, or its wait has eaten the budget — is
refused with :class:`Unservable` *before* its deadline, never answered late. When requests are
waiting, the one starting gets a fair share of its remaining budget (split with the waiters) and
ends early enough for the most urgent waiter to still fit: under load, answers come from shorter
thinking instead of not at all.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


class Unservable(Exception):
    """The request cannot be answered within its budget; the message says why (for a 503)."""


class Gone(Exception):
    """The request's client went away while it waited: it left the queue unanswered."""


@dataclass(order=True, slots=True)
class _Ticket:
    deadline: float
    seq: int
    arrival: float = field(compare=False)
    need_s: float = field(compare=False)  # the least time this request needs to produce an answer


class Scheduler:
    """Earliest-deadline-first admission of requests to a backend that runs ``capacity`` at once.

    Args:
        capacity: requests run at the same time (1 for the embedded engine).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._running = 0
        self._seq = itertools.count()
        self.served = 0
        self.refused = 0

    @property
    def waiting(self) -> int:
        """Requests queued now."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests being answered now."""
        return self._running

    def run(self, arrival: float, budget_s: float, need_s: float, work: Callable[[float], T],
            cancelled: threading.Event | None = None) -> T:
        """Run ``work(end)`` once it is this request's turn; ``end`` is the monotonic time it must finish by.

        ``need_s`` is the least time the request needs to produce any answer (prefill and a forced
        answer with its plan's branches). Raises :class:`Unservable`, before the deadline, when the
        request cannot be answered in time, and :class:`Gone` when ``cancelled`` is set while it waits
        (a streaming client that disconnected).
        """
        deadline = arrival + budget_s
        ticket = _Ticket(deadline, next(self._seq), arrival, need_s)
        with self._cond:
            if budget_s < need_s:
                self.refused += 1
                raise Unservable(f"a budget of {budget_s:g} s is below the {need_s:.2f} s this server needs to answer "
                                 "with this plan (fewer branches need less)")
            heapq.heappush(self._waiting, ticket)
            while not (self._running < self.capacity and self._waiting[0] is ticket):
                left = deadline - need_s - time.monotonic()
                if cancelled is not None and cancelled.is_set():
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                    self._cond.notify_all()
                    raise Gone("the client went away while its request waited")
                if left <= 0:
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                    self.refused += 1
                    ahead = self._running + sum(1 for t in self._waiting if t < ticket)
                    self._cond.notify_all()
                    raise Unservable(f"no time left to answer within {budget_s:g} s: waited "
                                     f"{time.monotonic() - arrival:.2f} s behind {ahead} other request(s)")
                self._cond.wait(left if cancelled is None else min(left, 0.1))
            heapq.heappop(self._waiting)
            self._running += 1
            end = self._end(ticket, time.monotonic())
            self._cond.notify_all()
        try:
            return work(end)
        finally:
            with self._cond:
                self._running -= 1
                self.served += 1
                self._cond.notify_all()

    def _end(self, ticket: _Ticket, now: float) -> float:
        """When the starting request must finish: its deadline, or sooner when others wait (see module doc)."""
        if not self._waiting or self.capacity > 1:
            return ticket.deadline
        share = now + (ticket.deadline - now) / (len(self._waiting) + 1)
        urgent = self._waiting[0].deadline - self._waiting[0].need_s
        return min(ticket.deadline, max(now + ticket.need_s, min(share, urgent)))
