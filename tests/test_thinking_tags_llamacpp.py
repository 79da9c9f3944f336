"""The thinking-tag tests of test_thinking_tags.py on the llama.cpp engine: the same random-weight think-tag
model exported as a GGUF (tests/think_model.py), its tokenizer and chat template read from the GGUF itself.
Budget forcing, the logit-bias steering and reading the answer after ``</think>`` must behave exactly as on
the torch and hf engines. Needs llama-cpp-python (``make test`` builds it; this module runs after the build)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make test builds it)")

from latts.engine.engine import Engine  # noqa: E402
from latts.engine.loading.loader import load  # noqa: E402
from test_thinking_tags import (think_folder, test_an_early_think_end_is_suppressed_below_min_think,  # noqa: E402,F401
                                test_logit_bias_steers_plain_generation_and_is_checked,
                                test_max_think_closes_thinking_with_the_tag_and_the_answer_is_read_after_it,
                                test_suppression_is_the_same_with_speculation, test_the_chat_template_opens_thinking,
                                test_the_thinking_is_never_graded)
from think_model import write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def engine(think_folder) -> Engine:  # noqa: F811 (this module's engine for the tests imported above)
    """The think-tag model as an F32 GGUF on the llama.cpp engine."""
    gguf = write_gguf(think_folder, think_folder.parent / "think.gguf")
    e = Engine(load(str(gguf), engine="llamacpp"))
    assert e.loaded.engine == "llamacpp"
    return e
