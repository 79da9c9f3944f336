"""The serve scheduler: earliest deadline first, refusals before the deadline, fair shares under load."""

from __future__ import annotations

import threading
import time

import pytest

from latts.serve.scheduler import Gone, Scheduler, Unservable


def test_budget_below_need_is_refused_at_once() -> None:
    s = Scheduler(1)
    with pytest.raises(Unservable, match="below"):
        s.run(time.monotonic(), 0.5, 1.0, lambda end: "never")
    assert s.refused == 1 and s.served == 0


def test_alone_a_request_gets_its_whole_budget() -> None:
    s = Scheduler(1)
    arrival = time.monotonic()
    end = s.run(arrival, 5.0, 0.1, lambda end: end)
    assert end == pytest.approx(arrival + 5.0)
    assert s.served == 1


def _occupy(s: Scheduler, release: threading.Event, started: threading.Event) -> threading.Thread:
    def hold(end: float) -> None:
        started.set()
        release.wait(10)

    t = threading.Thread(target=s.run, args=(time.monotonic(), 30.0, 0.01, hold))
    t.start()
    assert started.wait(5)
    return t


def test_waiters_run_earliest_deadline_first() -> None:
    s = Scheduler(1)
    release, started = threading.Event(), threading.Event()
    holder = _occupy(s, release, started)
    order: list[str] = []
    now = time.monotonic()
    late = threading.Thread(target=s.run, args=(now, 20.0, 0.01, lambda end: order.append("late")))
    late.start()
    while s.waiting < 1:
        time.sleep(0.01)
    soon = threading.Thread(target=s.run, args=(now, 10.0, 0.01, lambda end: order.append("soon")))
    soon.start()
    while s.waiting < 2:
        time.sleep(0.01)
    release.set()
    for t in (holder, late, soon):
        t.join(10)
    assert order == ["soon", "late"]


def test_a_waiter_that_can_no_longer_make_it_is_refused_before_its_deadline() -> None:
    s = Scheduler(1)
    release, started = threading.Event(), threading.Event()
    holder = _occupy(s, release, started)
    arrival = time.monotonic()
    with pytest.raises(Unservable, match="behind 1 other"):
        s.run(arrival, 0.6, 0.3, lambda end: "never")
    refused_at = time.monotonic()
    assert refused_at < arrival + 0.6  # the refusal comes before the deadline, not after
    release.set()
    holder.join(10)
    assert s.refused == 1


def test_when_others_wait_the_starting_request_gets_a_fair_share() -> None:
    s = Scheduler(1)
    release, started = threading.Event(), threading.Event()
    holder = _occupy(s, release, started)
    ends: dict[str, float] = {}
    now = time.monotonic()
    a = threading.Thread(target=s.run, args=(now, 10.0, 0.1, lambda end: ends.setdefault("a", end)))
    b = threading.Thread(target=s.run, args=(now, 12.0, 0.1, lambda end: ends.setdefault("b", end)))
    a.start()
    b.start()
    while s.waiting < 2:
        time.sleep(0.01)
    release.set()
    for t in (holder, a, b):
        t.join(10)
    # a started with b waiting: about half of a's remaining budget, not all of it; b then alone gets all of its own
    assert ends["a"] < now + 10.0 - 3.0
    assert ends["b"] == pytest.approx(now + 12.0)


def test_a_waiter_whose_client_left_leaves_the_queue() -> None:
    s = Scheduler(1)
    release, started = threading.Event(), threading.Event()
    holder = _occupy(s, release, started)
    cancelled, outcome = threading.Event(), []

    def wait_then_run() -> None:
        try:
            s.run(time.monotonic(), 20.0, 0.01, lambda end: outcome.append("ran"), cancelled)
        except Gone as exc:
            outcome.append(str(exc))

    waiter = threading.Thread(target=wait_then_run)
    waiter.start()
    while s.waiting == 0:
        time.sleep(0.005)
    cancelled.set()
    waiter.join(5)
    assert not waiter.is_alive() and outcome == ["the client went away while its request waited"]
    assert s.waiting == 0 and s.refused == 0
    release.set()
    holder.join(5)
    assert s.served == 1
