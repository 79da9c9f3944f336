"""The fast weight formats (exact quantized blocks for small batches, oneDNN pre-packed dense for large) against fp32 HF."""

from __future__ import annotations

import pytest
import torch

from latts.engine.models import kernels
from latts.engine.models.linear import TUNE_ROWS, Projection, can_int4, exact_int4, set_quant_rows, tune_quant_rows

pytestmark = pytest.mark.skipif(
    not can_int4() and kernels.compiled() is None, reason="needs latts' kernels or torch's CPU int4 kernel"
)


@pytest.mark.skipif(not can_int4(), reason="needs torch's CPU int4 kernel")
def test_gguf_q4_1_projections_are_exact_int4(hf_model) -> None:
    layer = hf_model.model.layers[3]
    for w in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight):
        assert exact_int4(w) is not None
    # the embedding was not stored as Q4_1: no lossless int4 form, so it stays dense
    assert exact_int4(hf_model.model.embed_tokens.weight) is None
    # a random matrix is not 4-bit either
    assert exact_int4(torch.randn(64, 64)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_and_packed_paths_match_the_weight(hf_model, dtype: torch.dtype) -> None:
    w = hf_model.model.layers[0].mlp.gate_proj.weight
    proj = Projection(w, None, dtype, fast=True)
    assert proj.quant_kind == ("q4" if kernels.compiled() is not None else "int4")
    x = torch.randn(2, 3, w.shape[1]).to(dtype)
    ref = x.float() @ w.T
    for path in (proj.forward_quant, proj.forward_dense):
        y = path(x)
        assert y.dtype == dtype and y.shape == (2, 3, w.shape[0])
        assert (y.float() - ref).abs().max() <= 0.02 * ref.abs().max(), path.__name__
    # the row threshold picks the path: 6 rows here
    set_quant_rows([proj], 6)
    assert torch.equal(proj(x), proj.forward_quant(x))
    set_quant_rows([proj], 5)
    assert torch.equal(proj(x), proj.forward_dense(x))


def test_reference_float32_has_no_fast_formats(fp32_model) -> None:
    projections = fp32_model.model.projections()
    assert not any(p.quant is not None or p.packed for p in projections)
    assert fp32_model.quant_max_rows == 0 and fp32_model.model.kernels is None


def test_tuning_sets_a_measured_threshold(fast_model) -> None:
    projections = [p for p in fast_model.model.projections() if p.quant is not None]
    layers = fast_model.model.projections()[:-1]
    own = kernels.compiled() is not None
    # every layer projection of the Q4_1 GGUF is exact 4-bit; the lm_head (Q8_0) has latts' 8-bit form only
    assert {p.quant_kind for p in layers} == {"q4" if own else "int4"}
    assert fast_model.model.lm_head.quant_kind == ("q8" if own else None)
    assert fast_model.quant_format == ("q4+q8" if own else "int4")
    assert fast_model.quant_max_rows in (0, *TUNE_ROWS)
    assert {p.quant_max_rows for p in projections} == {fast_model.quant_max_rows}
    got = tune_quant_rows(projections, rows=(1, 2), repeats=1)
    assert got in (0, 1, 2) and {p.quant_max_rows for p in projections} == {got}
    set_quant_rows(projections, fast_model.quant_max_rows)


def test_fast_paths_agree_with_fp32_hf(fast_model, hf_model) -> None:
    """Teacher-forced on HF's own greedy text: the native step, and torch's quantized and dense paths, each pick
    HF's top token almost always."""
    m = fast_model.model
    native = m.native
    ids = fast_model.encode_chat("Explain why the sky is blue.")
    with torch.no_grad():
        seq = hf_model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False, pad_token_id=0)[0]
        ref_logits = hf_model(seq[None]).logits[0, len(ids) - 1 : -1]  # [48, V]
        ref = ref_logits.argmax(-1)
    gen = seq[len(ids):]
    agree, worst = {}, {}
    try:
        for path, max_rows in (("native", 0), ("quant", 1 << 20), ("dense", 0)):
            if path == "native" and native is None:
                continue
            m.native = native if path == "native" else None
            set_quant_rows(m.projections(), max_rows)
            rows = 4
            cache = m.new_cache(rows, len(ids), 64)
            preds = [int(m.prefill(torch.tensor([ids]), cache).argmax(-1))]
            for i in range(len(gen) - 1):
                logits = m.decode(gen[i : i + 1].expand(rows, 1), torch.full((rows,), len(ids) + i), cache)
                assert torch.allclose(logits[0], logits[-1], atol=1e-3)  # identical rows, identical logits
                preds.append(int(logits[0, -1].argmax()))
                worst[path] = max(worst.get(path, 0.0), float((logits[0, -1] - ref_logits[i + 1]).abs().max()))
            agree[path] = sum(int(a == b) for a, b in zip(preds, ref.tolist())) / len(preds)
    finally:
        m.native = native
        set_quant_rows(m.projections(), fast_model.quant_max_rows)
    assert min(agree.values()) >= 0.9, (agree, fast_model.tokenizer.decode(gen))
    if fast_model.quant_format == "q4+q8" and fast_model.dtype == torch.float32:
        # latts' kernels compute in fp32: HF's logits to fp32 rounding (bf16 activations round more)
        assert agree["quant"] == 1.0 and worst["quant"] < 1e-3, (agree, worst)


def test_lean_single_step_matches_the_general_step_in_fast_formats(fast_model) -> None:
    """The B = 1 lean path over quantized projections gives the general step's logits: bit for bit over
    torch's int4 (bf16 outputs, upcast by the ops that use them), to fp32 rounding over latts' kernels
    (the lean path's attention is latts' own)."""
    from test_transformer_archs import _lean_and_general_steps

    m = fast_model.model
    assert fast_model.quant_max_rows >= 1 or not any(p.quant is not None for p in m.projections())
    ids = torch.tensor([fast_model.encode_chat("What is 12 times 7?") + [28, 29, 30, 31, 32]])
    P = ids.shape[1] - 5
    native, m.native = m.native, None  # torch's paths (the native step has one path for every row count)
    try:
        for lean, general in _lean_and_general_steps(m, ids, P):
            if m.kernels is None:
                assert torch.equal(lean, general)
            else:
                torch.testing.assert_close(lean, general, rtol=1e-4, atol=1e-4)
    finally:
        m.native = native


def test_a_draft_model_runs_the_same_kind_of_weights_as_its_target(fast_model, fp32_model, draft_folder) -> None:
    """A fast target's draft gets this CPU's fast formats too (quantized copies of its exact 4-bit weights);
    the float32 reference target's draft stays plain ``F.linear``."""
    from latts.engine.speculation.drafters import make_drafter

    fast_draft = make_drafter(f"model:{draft_folder}", fast_model).draft
    assert fast_draft.model.fast and fast_draft.quant_format == fast_model.quant_format
    assert {p.quant_kind for p in fast_draft.model.projections()[:-1]} == {
        p.quant_kind for p in fast_model.model.projections()[:-1]} != {None}
    ref_draft = make_drafter(f"model:{draft_folder}", fp32_model).draft
    assert not ref_draft.model.fast and not any(p.quant is not None for p in ref_draft.model.projections())
