"""A deadline that holds on a busy machine: the prefill reads the clock, a request the time cannot answer
returns at its deadline marked as cut, forwards drop to one thread while other processes hold the cores,
and the solver says the machine was loaded. The busy processes here are real (``while 1: pass``)."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from latts.config import Plan, SamplingParams
from latts.engine.engine import Engine
from latts.engine.models.threads import CoreShare, configured_threads, use_threads
from latts.request import GenerateRequest
from latts.tts.solver import Solver

PROMPT = "Ava has 23 cards. She buys 4 packs with 12 cards in each pack. How many cards does Ava have now?"


@contextmanager
def busy(n: int):
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    try:
        time.sleep(0.3)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
        use_threads(configured_threads())


@pytest.fixture()
def slow_prefill_engine(fast_model, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The real model whose prefill takes 0.1 s a layer (3 s in all): a machine too busy to read the prompt."""
    engine = Engine(fast_model)
    qkv = engine.model._qkv

    def slow(*args, **kwargs):
        if args[1].shape[1] > 1:  # the prompt's tokens, not a decode step's
            time.sleep(0.1)
        return qkv(*args, **kwargs)

    monkeypatch.setattr(engine.model, "_qkv", slow)
    return engine


def test_a_prefill_past_the_deadline_returns_at_it_cut(slow_prefill_engine: Engine) -> None:
    t0 = time.monotonic()
    gen = slow_prefill_engine.generate(GenerateRequest(PROMPT, branches=3, deadline=t0 + 0.3,
                                                       sampling=SamplingParams(temperature=0.7, seed=0)))
    took = time.monotonic() - t0
    assert [b.finish_reason for b in gen.branches] == ["deadline"] * 3
    assert all(b.n_tokens == 0 for b in gen.branches) and gen.steps == 0
    assert took < 1.5, took  # the whole prefill would have taken 3 s: it stopped at a layer past the deadline
    assert gen.load is not None and gen.load.threads >= 1


def test_the_solver_marks_an_answer_cut_by_the_deadline(slow_prefill_engine: Engine) -> None:
    sol = Solver(slow_prefill_engine, "arith").solve(PROMPT, Plan(branches=2, max_think=64), deadline_s=0.4)
    assert sol.answer is None and sol.cut_by_deadline and sol.latency_s < 1.5
    doc = sol.to_dict()
    assert doc["cut_by_deadline"] is True and doc["load"]["threads"] >= 1


def test_other_processes_holding_the_cores_take_forwards_to_one_thread() -> None:
    share = CoreShare(interval=0.0)
    with busy(2):
        share.update()
        time.sleep(0.25)
        others = share.update()
        assert others >= 1.2, others
        assert share.threads() == 1
        assert share.apply() == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == configured_threads()


def test_a_loaded_machine_is_said(fast_model) -> None:
    engine = Engine(fast_model)
    engine.warmup((1,))
    with busy(2):
        sol = Solver(engine, "arith").solve(PROMPT, Plan(branches=2, max_think=16, seed=1), deadline_s=3.0)
    assert sol.load is not None and sol.load.loaded and sol.load.threads == 1
    assert sol.load.others_cores >= 1.0 and "machine loaded" in sol.load.describe()
    assert sol.to_dict()["load"]["loaded"] is True
