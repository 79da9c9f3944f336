"""The fast weight formats (exact int4 for small batches, oneDNN pre-packed dense for large) against fp32 HF."""

from __future__ import annotations

import pytest
import torch

from latts.engine.kv_cache import KVCache
from latts.engine.linear import TUNE_ROWS, Projection, can_int4, exact_int4, set_int4_rows, tune_int4_rows
from latts.models import load

pytestmark = pytest.mark.skipif(not can_int4(), reason="needs torch's CPU int4 kernel")


def test_gguf_q4_1_projections_are_exact_int4(hf_model) -> None:
    layer = hf_model.model.layers[3]
    for w in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight):
        assert exact_int4(w) is not None
    # the embedding was not stored as Q4_1: no lossless int4 form, so it stays dense
    assert exact_int4(hf_model.model.embed_tokens.weight) is None
    # a random matrix is not 4-bit either
    assert exact_int4(torch.randn(64, 64)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_and_packed_paths_match_the_weight(hf_model, dtype: torch.dtype) -> None:
    w = hf_model.model.layers[0].mlp.gate_proj.weight
    proj = Projection(w, None, dtype, fast=True)
    assert proj.int4
    x = torch.randn(2, 3, w.shape[1]).to(dtype)
    ref = x.float() @ w.T
    for path in (proj.forward_int4, proj.forward_dense):
        y = path(x)
        assert y.dtype == dtype and y.shape == (2, 3, w.shape[0])
        assert (y.float() - ref).abs().max() <= 0.02 * ref.abs().max(), path.__name__
    # the row threshold picks the path: 6 rows here
    set_int4_rows([proj], 6)
    assert torch.equal(proj(x), proj.forward_int4(x))
    set_int4_rows([proj], 5)
    assert torch.equal(proj(x), proj.forward_dense(x))


def test_reference_float32_has_no_fast_formats(fp32_model) -> None:
    projections = fp32_model.model.projections() + [fp32_model.model.lm_head]
    assert not any(p.int4 or p.packed for p in projections)
    assert fp32_model.int4_max_rows == 0


@pytest.fixture(scope="module")
def fast_model():
    return load("smollm2-135m-instruct", "auto")


def test_tuning_sets_a_measured_threshold(fast_model) -> None:
    projections = fast_model.model.projections()
    assert all(p.int4 for p in projections)  # every layer projection of the Q4_1 GGUF is exact
    assert fast_model.int4_max_rows in (0, *TUNE_ROWS)
    assert {p.int4_max_rows for p in projections} == {fast_model.int4_max_rows}
    assert not fast_model.model.lm_head.int4  # Q8_0 in the GGUF: no exact int4 form
    got = tune_int4_rows(projections, rows=(1, 2), repeats=1)
    assert got in (0, 1, 2) and {p.int4_max_rows for p in projections} == {got}
    set_int4_rows(projections, fast_model.int4_max_rows)


def test_fast_paths_agree_with_fp32_hf(fast_model, hf_model) -> None:
    """Teacher-forced on HF's own greedy text: the int4 and the dense path each pick HF's top token almost always."""
    m = fast_model.model
    ids = fast_model.encode_chat("Explain why the sky is blue.")
    with torch.no_grad():
        seq = hf_model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False, pad_token_id=0)[0]
        ref = hf_model(seq[None]).logits[0, len(ids) - 1 : -1].argmax(-1)  # [48]
    gen = seq[len(ids):]
    s = m.shape
    agree = {}
    try:
        for path, max_rows in (("int4", 1 << 20), ("dense", 0)):
            set_int4_rows(m.projections(), max_rows)
            rows = 4
            cache = KVCache(s.n_layers, rows, s.n_kv_heads, len(ids), 64, s.head_dim, m.dtype)
            preds = [int(m.prefill(torch.tensor([ids]), cache).argmax(-1))]
            for i in range(len(gen) - 1):
                logits = m.decode(gen[i : i + 1].expand(rows, 1), torch.full((rows,), len(ids) + i), cache)
                assert torch.allclose(logits[0], logits[-1], atol=1e-3)  # identical rows, identical logits
                preds.append(int(logits[0, -1].argmax()))
            agree[path] = sum(int(a == b) for a, b in zip(preds, ref.tolist())) / len(preds)
    finally:
        set_int4_rows(m.projections(), fast_model.int4_max_rows)
    assert agree["int4"] >= 0.9 and agree["dense"] >= 0.9, (agree, fast_model.tokenizer.decode(gen))


def test_lean_single_step_matches_the_general_step_in_fast_formats(fast_model) -> None:
    """The B = 1 lean path over int4 projections (bf16 outputs, upcast by the ops that use them)
    gives bit-identical logits to the general step, which converts explicitly."""
    from test_transformer_archs import _lean_and_general_steps

    m = fast_model.model
    assert fast_model.int4_max_rows >= 1 or not any(p.int4 for p in m.projections())
    ids = torch.tensor([fast_model.encode_chat("What is 12 times 7?") + [28, 29, 30, 31, 32]])
    P = ids.shape[1] - 5
    for lean, general in _lean_and_general_steps(m, ids, P):
        assert torch.equal(lean, general)
