"""The llama.cpp engine: latts' Engine on llama.cpp's batch API, against llama.cpp's own decoding.

Models: random-weight 2-layer starcoder2 / stablelm / olmo models converted by llama.cpp's converter and
quantized by llama.cpp (tests/gguf_models.py), and the bundled default model's Q4_1 GGUF. The reference
is llama-cpp-python's high-level ``Llama`` decoding one sequence greedily. Both run llama.cpp's flash
attention kernel (the engine's context keeps llama.cpp's default, ``auto``, which picks it here; the
high-level API turns it off by default, so the reference asks for it: see engine/models/llamacpp/model.py).
"""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("llama_cpp")
from latts.engine.models.llamacpp.model import import_llama_cpp  # noqa: E402

llama_cpp = import_llama_cpp()  # the reference's Llama avoids the paths that crash on this CPU, as latts does

import gguf_models  # noqa: E402
from distributions import assert_speculation_samples_like_plain  # noqa: E402
from latts.config import BudgetForcing, SamplingParams  # noqa: E402
from latts.engine.speculation.drafters import DraftModelDrafter, NGramDrafter, check_same_tokenizer  # noqa: E402
from latts.engine.engine import Engine  # noqa: E402
from latts.engine.loading.loader import load_gguf  # noqa: E402
from latts.engine.loading.loader import DEFAULT_MODEL, bundled_path  # noqa: E402
from latts.request import GenerateRequest  # noqa: E402

FAMILIES = tuple(gguf_models.FAMILIES)
PROMPT = "What is 2+2? Explain briefly."
TOKENS = 40


def reference(path, ids: list[int], n: int) -> tuple[list[int], list]:
    """llama.cpp's own single-sequence greedy decode (high-level API): tokens, and its Llama."""
    ref = llama_cpp.Llama(str(path), n_ctx=512, n_threads=torch.get_num_threads(), logits_all=False,
                          flash_attn=True, verbose=False)
    out: list[int] = []
    for tok in ref.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out, ref


def teacher_forced_logits(path, ids: list[int]) -> torch.Tensor:
    """llama.cpp's logits at every position of ``ids`` as one sequence ``[len(ids), V]``."""
    ref = llama_cpp.Llama(str(path), n_ctx=512, n_threads=torch.get_num_threads(), logits_all=True,
                          flash_attn=True, verbose=False)
    ref.eval(ids)
    return torch.from_numpy(ref.scores[: len(ids)].copy())


def near_tie_report(path, ids: list[int], ref: list[int], got: list[int]) -> str:
    """Where a row leaves the reference: the reference's top-2 logit gap there (for the failure message)."""
    j = next(i for i, (a, b) in enumerate(zip(ref, got)) if a != b)
    logits = teacher_forced_logits(path, ids + ref[:j])[-1]
    top = logits.topk(2).values
    return f"first divergence at token {j}: reference top-2 logit gap {float(top[0] - top[1]):.4g}"


@pytest.fixture(scope="module")
def engines():
    """One engine per (family, quant), loaded on first use."""
    cache: dict = {}

    def get(family: str, quant: str) -> Engine:
        if (family, quant) not in cache:
            cache[(family, quant)] = Engine(load_gguf(gguf_models.gguf(family, quant), f"{family}-{quant}"))
        return cache[(family, quant)]

    return get


@pytest.mark.parametrize("quant", gguf_models.QUANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_rows_equal_llamacpp_single_sequence(engines, family, quant) -> None:
    engine = engines(family, quant)
    assert engine.loaded.engine == "llamacpp" and engine.loaded.measured_with().engine.startswith("llamacpp-")
    ids = engine.encode(PROMPT)
    got = engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=TOKENS, ignore_eos=True))
    want, _ = reference(engine.loaded.source, ids, TOKENS)
    assert len(want) == TOKENS and len(set(want)) > 4  # a real sequence, not one token repeated
    for b in got.branches:
        assert b.token_ids == want, near_tie_report(engine.loaded.source, ids, want, b.token_ids)


def test_seeded_sampling_is_reproducible(engines) -> None:
    engine = engines(FAMILIES[0], "Q8_0")

    def run(seed: int) -> list[list[int]]:
        got = engine.generate(GenerateRequest(PROMPT, branches=4, max_new_tokens=24, ignore_eos=True,
                                              sampling=SamplingParams(temperature=1.0, seed=seed)))
        return [b.token_ids for b in got.branches]

    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert len({tuple(r) for r in a}) > 1  # the rows differ from each other


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_rows_have_llamacpp_logprobs(engines, family) -> None:
    """Sampled rows that stop at different steps (compaction moves rows): each row's log-probabilities are
    those llama.cpp gives its tokens as one sequence, so every row's cache state was its own."""
    engine = engines(family, "Q6_K")
    ids = engine.encode(PROMPT)
    got = engine.generate(GenerateRequest(ids, branches=6, max_new_tokens=24, stop=("e",), logprobs=True,
                                          sampling=SamplingParams(temperature=1.0, seed=3)))
    lengths = [len(b.token_ids) for b in got.branches]
    assert len(set(lengths)) > 1, lengths  # rows finished at different steps
    for b in got.branches:
        logits = teacher_forced_logits(engine.loaded.source, ids + b.token_ids[:-1])[len(ids) - 1 :]
        want = torch.log_softmax(logits.double(), -1)[torch.arange(len(b.token_ids)), b.token_ids].sum()
        assert b.logprob_count == len(b.token_ids)
        assert abs(b.logprob_sum - float(want)) < 1e-3 * max(1.0, abs(float(want))), (b.index, b.logprob_sum, want)


@pytest.mark.parametrize("gamma", [2, 4])
def test_greedy_draft_model_speculation_is_token_identical(engines, gamma) -> None:
    """A draft model (the same random model in another quant, with its own llama.cpp cache rolled
    back on rejections) changes no token."""
    engine = engines("stablelm", "Q8_0")
    ids = engine.encode(PROMPT)
    plain = engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=TOKENS, ignore_eos=True))
    draft = engines("stablelm", "Q4_K_M").loaded
    check_same_tokenizer(engine.loaded, draft)
    spec = engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=TOKENS, ignore_eos=True, gamma=gamma, gamma_policy="fixed",
                                           drafter=DraftModelDrafter(draft, engine.model.shape.vocab)))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]
    # random weights: quantization noise moves many argmaxes, so drafts are both accepted and rejected
    assert 0 < spec.spec.accepted < spec.spec.proposed


def test_sampled_speculation_matches_plain_distribution(engines) -> None:
    """First two sampled tokens with a draft model (γ=3) vs without: the same joint distribution."""
    engine = engines("olmo", "Q8_0")
    draft = DraftModelDrafter(engines("olmo", "Q4_K_M").loaded, engine.model.shape.vocab)
    assert_speculation_samples_like_plain(engine, engine.encode("Name a colour."), draft, branches=256, seeds=8)


@pytest.fixture(scope="module")
def default_engine() -> Engine:
    """The bundled default model's Q4_1 GGUF on the llama.cpp engine."""
    return Engine(load_gguf(bundled_path(DEFAULT_MODEL), DEFAULT_MODEL))


def test_default_model_runs_on_llamacpp(default_engine, fp32_model) -> None:
    engine = default_engine
    # the GGUF's own tokenizer and chat template give the ids the HF tokenizer gives
    assert engine.loaded.encode_chat(PROMPT) == fp32_model.encode_chat(PROMPT)
    assert engine.tokenizer("Hello world, 12 apples!")["input_ids"] == fp32_model.tokenizer("Hello world, 12 apples!")["input_ids"]
    ids = engine.encode(PROMPT)
    got = engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=TOKENS, ignore_eos=True))
    want, _ = reference(engine.loaded.source, ids, TOKENS)
    for b in got.branches:
        assert b.token_ids == want, near_tie_report(engine.loaded.source, ids, want, b.token_ids)
    assert "2" in got.branches[0].text or "4" in got.branches[0].text  # real text, detokenized


# Run in a child process: where a llama.cpp path crashes (llama.cpp 0.3.36's AMX matmul on Intel CPUs with AMX
# died at any batch of more than a few tokens) the test fails with the signal instead of killing the suite.
LONG_PROMPT_CHILD = """
import json, sys
from latts.engine.engine import Engine
from latts.engine.loading.loader import load_gguf
from latts.engine.loading.loader import DEFAULT_MODEL, bundled_path
from latts.request import GenerateRequest
from test_llamacpp_engine import reference

loaded = load_gguf(bundled_path(DEFAULT_MODEL), DEFAULT_MODEL)
engine = Engine(loaded)
story = " ".join(f"On day {d} the baker sold {3 * d + 7} loaves and {d % 5 + 2} cakes to the village." for d in range(1, 19))
ids = engine.encode(story + " How many loaves did the baker sell on day 12?")
got = engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=24, ignore_eos=True))
want, _ = reference(loaded.source, ids, 24)
print(json.dumps({"prompt_tokens": len(ids), "rows": [b.token_ids for b in got.branches], "want": want,
                  "report": loaded.report}))
"""


def test_long_prompt_at_four_rows_runs_on_this_cpu(tmp_path) -> None:
    """A 300+-token prompt at B = 4 on the llama.cpp engine: rows equal llama.cpp's single-sequence decode, and
    the load report names the engine build and every path avoided on this CPU."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from latts.engine.models.llamacpp.hazards import hazards_here

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", LONG_PROMPT_CHILD], capture_output=True, text=True, timeout=600,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"the child died (status {proc.returncode}):\n{proc.stderr[-2000:]}"
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["prompt_tokens"] >= 300
    assert all(row == doc["want"] for row in doc["rows"]), doc
    assert "llamacpp engine llamacpp-" in doc["report"]
    for hazard in hazards_here(llama_cpp):  # on an Intel CPU with AMX: the AMX matmul
        assert hazard.describe() in doc["report"]


def test_checkpoint_probes_answer_like_runs_with_that_budget(default_engine) -> None:
    """Budget forcing and probes forked from live rows (move_row) on llama.cpp, as on the torch engine."""
    from dataclasses import replace

    engine = default_engine
    prompt = "Explain in detail why the sky is blue."
    budget = BudgetForcing(max_think=30, answer_tokens=6)
    wide = engine.generate(GenerateRequest(prompt, branches=2, budget=budget, checkpoints=(1, 12)))
    assert sorted((p.parent, p.checkpoint) for p in wide.probes) == [(b, L) for b in (0, 1) for L in (1, 12)]
    for L in (1, 12):
        direct = engine.generate(GenerateRequest(prompt, branches=1, budget=replace(budget, max_think=L))).branches[0]
        for p in (p for p in wide.probes if p.checkpoint == L):
            assert p.forced == "checkpoint" and p.think_tokens == L
            assert p.token_ids == direct.token_ids, (L, p.text, direct.text)
    # the branches went on, untouched by their probes -- up to llama.cpp's rounding: its attention sums a
    # row's cells in cache order, and probes forked and freed leave the parents' later cells elsewhere in
    # the cache. Measured here: row 0's logits in the wide run and in a run without probes, position by
    # position while their tokens agree; a divergence must be a near-tie within that difference.
    wide_logits, full_logits = {}, {}
    logged = _logging_decode(engine.model, wide_logits)
    wide = engine.generate(GenerateRequest(prompt, branches=2, budget=budget, checkpoints=(1, 12)))
    logged.target = full_logits
    full = engine.generate(GenerateRequest(prompt, branches=2, budget=budget))
    logged.undo()
    w, f = wide.branches[0].token_ids, full.branches[0].token_ids
    agree = next((j for j, (a, b) in enumerate(zip(w, f)) if a != b), len(f))
    p0 = len(engine.encode(prompt)) - 1  # the position whose logits chose token 0
    rounding = max(float((wide_logits[p0 + j] - full_logits[p0 + j]).abs().max()) for j in range(1, agree))
    assert all(b.forced == "max_think" for b in wide.branches)
    if agree < len(f):  # the full run's top-2 gap where the wide run chose otherwise
        top = full_logits[p0 + agree].topk(2).values
        assert float(top[0] - top[1]) <= rounding, (agree, float(top[0] - top[1]), rounding)


class _logging_decode:
    """Record row 0's logits at the position of its last real token, for every decode of ``model``."""

    def __init__(self, model, target: dict) -> None:
        self.model, self.target, self.orig = model, target, model.decode
        model.decode = self

    def __call__(self, tokens, start, cache, lengths=None):
        out = self.orig(tokens, start, cache, lengths)
        n = tokens.shape[1] if lengths is None else int(lengths[0])
        self.target[int(start[0]) + n - 1] = out[0, n - 1].clone()
        return out

    def undo(self) -> None:
        del self.model.decode


@pytest.mark.parametrize("gamma", [2, 4])
def test_greedy_ngram_speculation_is_token_identical(default_engine, gamma) -> None:
    """n-gram drafts (the default model repeats itself, so they are proposed and accepted) change no token."""
    prompt = "Explain step by step how to compute 17 * 23."
    plain = default_engine.generate(GenerateRequest(prompt, branches=4, max_new_tokens=48, ignore_eos=True))
    spec = default_engine.generate(GenerateRequest(prompt, branches=4, max_new_tokens=48, ignore_eos=True,
                                                   gamma=gamma, gamma_policy="fixed", drafter=NGramDrafter(min_n=1)))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]
    assert spec.spec.accepted > 0 and spec.spec.proposed > spec.spec.accepted  # accepted and rejected drafts


def test_the_profiler_times_ragged_verifies_on_llamacpp(default_engine) -> None:
    """``latts profile`` on this engine: a verify of k tokens over rows a round left at different lengths is
    timed as it runs, whatever order the shapes come in (llama.cpp's rows must continue their positions)."""
    from latts.latency.profiler import measure_steps

    shapes = [(4, 3, 64), (4, 1, 64), (4, 2, 64), (1, 3, 64), (4, 1, 64, 40)]  # the last: 40 own tokens a row
    samples = measure_steps(default_engine, shapes, repeats=1, passes=2)
    assert sorted((s.branches, s.k, s.context, s.own) for s in samples) == sorted((*x[:3], x[3] if len(x) > 3 else 0)
                                                                                  for x in shapes)
    assert all(0 < s.seconds < 5 for s in samples)


def test_a_prefill_past_its_deadline_stops_and_the_request_is_cut(default_engine) -> None:
    import time

    from latts.errors import DeadlineReached

    ids = default_engine.encode(PROMPT)
    cache = default_engine.model.new_cache(2, len(ids), 8)
    with pytest.raises(DeadlineReached):
        default_engine.model.prefill(torch.tensor([ids]), cache, deadline=time.monotonic() - 0.01)
    gen = default_engine.generate(GenerateRequest(ids, branches=2, deadline=time.monotonic() + 1e-4))
    assert [b.finish_reason for b in gen.branches] == ["deadline"] * 2
