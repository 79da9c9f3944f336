"""Reasoning models with thinking tags on the remote backend: llama.cpp's OpenAI-compatible server (llama-cpp-
python's, on 127.0.0.1) serving a GGUF of the random-weight think-tag model (tests/think_model.py), steered
with a logit bias that the backend passes on as OpenAI's ``logit_bias``. The same budget forcing as the
embedded engine's: an early ``</think>`` is suppressed below ``min_think``, thinking is closed with the tag and
the answer prompt at ``max_think``, and the answer is read after the tag. ``make test`` installs
``llama-cpp-python[server]``."""

from __future__ import annotations

import sys

import pytest

from latts.backends.openai import OpenAIBackend
from latts.config import BudgetForcing, SamplingParams
from latts.engine.engine import Engine
from latts.engine.loading.loader import load
from latts.request import GenerateRequest
from latts.tasks.arith import TASK as ARITH
from latts.tasks.grading import after_thinking
from latts.tasks.math500 import TASK as MATH
from servers import free_port, running
from think_model import THINK_END, build_think_folder, write_gguf

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (make test installs it)")

QUESTION = "What is 3 + 4?"
DISTRACTOR = " So the answer is \\boxed{3}. Wait"
NAME = "think-test"


@pytest.fixture(scope="module")
def think_folder(tmp_path_factory):
    return build_think_folder(tmp_path_factory.mktemp("think") / "model")


@pytest.fixture(scope="module")
def backend(think_folder, tmp_path_factory) -> OpenAIBackend:
    gguf = write_gguf(think_folder, think_folder.parent / "think.gguf")
    port = free_port()
    cmd = [sys.executable, "-m", "latts.engine.models.llamacpp.server", "--model", str(gguf), "--model_alias", NAME, "--host",
           "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2", "--interrupt_requests", "False"]
    with running(cmd, f"http://127.0.0.1:{port}/v1/models", think_folder.parent / "server.log"):
        yield OpenAIBackend(f"http://127.0.0.1:{port}/v1", NAME, tokenizer=str(think_folder), slots=1)


@pytest.fixture(scope="module")
def engine(think_folder) -> Engine:
    return Engine(load(str(think_folder), "float32"))


def _tag(backend) -> int:
    return backend.tokenizer.convert_tokens_to_ids(THINK_END)


def _seven(backend) -> int:
    return backend.tokenizer.encode("7", add_special_tokens=False)[0]


def test_the_server_runs_the_same_model(backend, engine) -> None:
    """The GGUF export is faithful: the server's greedy text is the embedded engine's (fp32, HF folder), once
    llama-cpp-python's default repeat penalty of 1.1 (not part of the OpenAI API) is switched off."""
    ours = engine.generate(GenerateRequest(QUESTION, max_new_tokens=16, sampling=SamplingParams(temperature=0)))
    r = backend._client.completions.create(model=NAME, prompt=backend.prompt_text(QUESTION), max_tokens=16,
                                           temperature=0.0, extra_body={"repeat_penalty": 1.0})
    assert r.choices[0].text == ours.branches[0].text and ours.branches[0].text


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=4)])
def test_an_early_think_end_is_suppressed_below_min_think(backend, sampling) -> None:
    params = SamplingParams(**sampling, logit_bias={_tag(backend): 100.0})
    budget = BudgetForcing(min_think=5, max_think=40, ignore="Wait", answer_tokens=4)
    got = backend.generate(GenerateRequest(QUESTION, branches=2, sampling=params, budget=budget))
    for b in got.branches:
        # five tags dropped for the ignore string, the sixth kept: the branch closed its thinking at min_think
        assert b.ignored == 5 and b.think_tokens == 5 and b.forced is None
        assert b.text.startswith("Wait" * 5 + THINK_END + THINK_END)
        assert b.finish_reason == "length" and after_thinking(b.text) == ""


def test_max_think_closes_thinking_with_the_tag_and_the_answer_is_read_after_it(backend) -> None:
    params = SamplingParams(temperature=0.0, logit_bias={_tag(backend): -100.0, _seven(backend): 100.0})
    budget = BudgetForcing(max_think=8, answer_tokens=2)
    got = backend.generate(GenerateRequest(QUESTION, branches=2, sampling=params, budget=budget))
    for b in got.branches:
        assert b.forced == "max_think" and b.think_tokens == 8 and b.finish_reason == "answered"
        assert b.text == "7" * 8 + "</think>\n\nFinal answer: \\boxed{77"
        assert ARITH.extract(b.text) == "77" and MATH.extract(b.text) == "77"


def test_the_thinking_is_never_graded(backend) -> None:
    params = SamplingParams(temperature=0.0, logit_bias={_tag(backend): 100.0})
    budget = BudgetForcing(min_think=1, max_think=40, ignore=DISTRACTOR, answer_tokens=4)
    b = backend.generate(GenerateRequest(QUESTION, sampling=params, budget=budget)).branches[0]
    assert b.ignored == 1 and b.text.startswith(DISTRACTOR + THINK_END)
    assert MATH.extract(b.text) is None and ARITH.extract(b.text) is None


def test_remote_and_embedded_agree_on_forcing(backend, engine) -> None:
    """Same model, same bias, same budget: both backends' branches start with the same forced text."""
    params = SamplingParams(temperature=0.0, logit_bias={_tag(backend): 100.0})
    budget = BudgetForcing(min_think=3, max_think=20, ignore=DISTRACTOR, answer_tokens=4)
    remote = backend.generate(GenerateRequest(QUESTION, sampling=params, budget=budget)).branches[0]
    local = engine.generate(GenerateRequest(QUESTION, sampling=params, budget=budget)).branches[0]
    head = DISTRACTOR + THINK_END
    assert (remote.ignored, remote.think_tokens) == (local.ignored, local.think_tokens) == (1, 11)
    assert remote.text.startswith(head) and local.text.startswith(head)
