"""Reasoning models with thinking tags on the embedded engine: a random-weight model whose tokenizer has
``<think>`` / ``</think>`` (tests/think_model.py), steered with a logit bias so that the tag comes exactly
when a test needs it. Budget forcing suppresses an early ``</think>``, closes thinking with the tag and the
answer prompt at ``max_think``, and the answer is read after the tag."""

from __future__ import annotations

import pytest
import torch

from latts.config import BudgetForcing, SamplingParams
from latts.engine.budget import branch_text, thinking_tags
from latts.engine.speculation.drafters import NGramDrafter
from latts.engine.engine import Engine
from latts.engine.loading.loader import load
from latts.errors import LattsError
from latts.request import GenerateRequest
from latts.tasks.arith import TASK as ARITH
from latts.tasks.grading import after_thinking
from latts.tasks.math500 import TASK as MATH
from think_model import THINK_END, build_think_folder

QUESTION = "What is 3 + 4?"
DISTRACTOR = " So the answer is \\boxed{3}. Wait"  # an ignore string that leaves an answer inside the thinking


@pytest.fixture(scope="module")
def think_folder(tmp_path_factory):
    return build_think_folder(tmp_path_factory.mktemp("think") / "model")


@pytest.fixture(scope="module", params=[("float32", "torch"), ("auto", "torch"), ("float32", "hf")],
                ids=["torch-fp32", "torch-auto", "hf"])
def engine(request, think_folder) -> Engine:
    """The torch engine's reference path (fp32) and this CPU's fast formats, and the hf engine (transformers'
    own forward). The llama.cpp engine runs these tests in test_thinking_tags_llamacpp.py."""
    dtype, kind = request.param
    return Engine(load(str(think_folder), dtype, engine=kind))


def _ids(engine: Engine, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


def _tag(engine: Engine) -> int:
    return engine.tokenizer.convert_tokens_to_ids(THINK_END)


def test_the_chat_template_opens_thinking(engine) -> None:
    ids = engine.encode(QUESTION)
    assert ids[-2:] == [engine.tokenizer.convert_tokens_to_ids("<think>"), _ids(engine, "\n")[0]]


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=4)])
def test_an_early_think_end_is_suppressed_below_min_think(engine, sampling) -> None:
    tag, wait = _tag(engine), _ids(engine, "Wait")
    assert len(wait) == 1
    # the model tries to close its thinking at every step
    params = SamplingParams(**sampling, logit_bias={tag: 100.0})
    budget = BudgetForcing(min_think=5, max_think=40, ignore="Wait", answer_tokens=4)
    got = engine.generate(GenerateRequest(QUESTION, branches=2, sampling=params, budget=budget))
    for b in got.branches:
        # five tries replaced by the ignore string, then the sixth closes the thinking at min_think
        assert b.ignored == 5 and b.think_tokens == 5 and b.forced is None
        assert b.token_ids[:6] == wait * 5 + [tag]
        assert b.text.startswith("Wait" * 5 + THINK_END)
        # after the tag the branch responds (the bias keeps it writing tags) until its token budget
        assert b.finish_reason == "length"
        assert after_thinking(b.text) == ""


def test_suppression_is_the_same_with_speculation(engine) -> None:
    params = SamplingParams(temperature=0.0, logit_bias={_tag(engine): 100.0})
    budget = BudgetForcing(min_think=5, max_think=40, ignore="Wait", answer_tokens=4)
    plain = engine.generate(GenerateRequest(QUESTION, branches=2, sampling=params, budget=budget))
    spec = engine.generate(GenerateRequest(QUESTION, branches=2, sampling=params, budget=budget, gamma=3, gamma_policy="fixed",
                                           drafter=NGramDrafter()))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]


def test_max_think_closes_thinking_with_the_tag_and_the_answer_is_read_after_it(engine) -> None:
    seven = _ids(engine, "7")
    # the tag is never emitted: thinking ends by forcing; the model writes 7s throughout
    params = SamplingParams(temperature=0.0, logit_bias={_tag(engine): -100.0, seven[0]: 100.0})
    budget = BudgetForcing(max_think=8, answer_tokens=2)
    got = engine.generate(GenerateRequest(QUESTION, branches=2, sampling=params, budget=budget))
    forced = _ids(engine, THINK_END + budget.answer_prompt)
    for b in got.branches:
        assert b.forced == "max_think" and b.think_tokens == 8 and b.finish_reason == "answered"
        assert b.token_ids == seven * 8 + forced + seven * 2
        assert b.text == "7" * 8 + "</think>\n\nFinal answer: \\boxed{77"
        # the graded answer is the text after the tag (the thinking's 77777777 is not an answer)
        assert ARITH.extract(b.text) == "77" and MATH.extract(b.text) == "77"


def test_the_thinking_is_never_graded(engine) -> None:
    """A branch that closed its thinking by itself (after one suppressed try that left a boxed 3 in it) and
    then answered nothing has no answer: the thinking's box does not count."""
    params = SamplingParams(temperature=0.0, logit_bias={_tag(engine): 100.0})
    budget = BudgetForcing(min_think=1, max_think=40, ignore=DISTRACTOR, answer_tokens=4)
    b = engine.generate(GenerateRequest(QUESTION, sampling=params, budget=budget)).branches[0]
    assert b.ignored == 1 and b.text.startswith(DISTRACTOR + THINK_END)
    assert MATH.extract(b.text.split(THINK_END)[0]) == "3"  # what reading the whole text would have taken
    assert MATH.extract(b.text) is None and ARITH.extract(b.text) is None


def test_logit_bias_steers_plain_generation_and_is_checked(engine) -> None:
    seven = _ids(engine, "7")[0]
    got = engine.generate(GenerateRequest(QUESTION, max_new_tokens=6,
                                          sampling=SamplingParams(temperature=0.8, seed=1, logit_bias={seven: 100})))
    assert got.branches[0].token_ids == [seven] * 6
    with pytest.raises(LattsError, match="logit bias token ids must be in"):
        engine.generate(GenerateRequest(QUESTION, max_new_tokens=2,
                                        sampling=SamplingParams(logit_bias={10**6: 1.0})))


def test_tags_the_tokenizer_marks_special_stay_in_the_text(think_folder) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(think_folder)
    assert thinking_tags(tok) == set()  # added as Qwen3 and R1 add them: plain text when decoded
    tok.add_special_tokens({"additional_special_tokens": ["<think>", THINK_END]})
    ids = tok.encode("<think>I think 3.</think> It is 4.", add_special_tokens=False)
    tags = thinking_tags(tok)
    assert len(tags) == 2 and THINK_END not in tok.decode(ids, skip_special_tokens=True)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert branch_text(tok, ids + [eos], tags) == "<think>I think 3.</think> It is 4."


def test_after_thinking() -> None:
    assert after_thinking("no tags, \\boxed{2}") == "no tags, \\boxed{2}"
    assert after_thinking("\\boxed{1}</think>\\boxed{2}") == "\\boxed{2}"
    assert after_thinking("a</think>b</think>c") == "c"
    assert MATH.extract("The answer is \\boxed{5}. Wait</think>\n\nThe answer is 6.") == "6"


def test_logit_bias_in_the_sampler() -> None:
    from latts.engine.speculation.sampler import greedy_accept, probabilities, sample

    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    params = SamplingParams(temperature=1.0, logit_bias={0: 3.0, 2: -1.0})
    want = torch.softmax(logits + torch.tensor([3.0, 0.0, -1.0, 0.0]), -1)
    torch.testing.assert_close(probabilities(logits, params), want)
    greedy = SamplingParams(temperature=0.0, logit_bias={3: 10.0})
    assert sample(logits, greedy, torch.Generator()).tolist() == [3]
    accepted, nxt = greedy_accept(torch.tensor([[3]]), torch.tensor([1]), logits[:, None].expand(1, 2, 4), greedy)
    assert accepted.tolist() == [1] and nxt.tolist() == [3]
    # frozen and hashable as before: the mapping is kept as sorted pairs
    assert params.logit_bias == ((0, 3.0), (2, -1.0))
    assert hash(params) == hash(SamplingParams(temperature=1.0, logit_bias={2: -1, 0: 3}))
    with pytest.raises(LattsError, match="logit bias"):
        SamplingParams(logit_bias={-1: 1.0})
    with pytest.raises(LattsError, match="logit bias"):
        SamplingParams(logit_bias={"x": 1.0})
