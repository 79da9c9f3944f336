"""The fast weight formats (exact int4 for small batches, pre-packed bf16 for large) against fp32 HF."""

from __future__ import annotations

import pytest
import torch

from latts.engine.kv_cache import KVCache
from latts.engine.linear import INT4_MAX_ROWS, Projection, can_int4, can_pack_bf16, exact_int4
from latts.models import load

pytestmark = pytest.mark.skipif(not (can_int4() and can_pack_bf16()), reason="needs native bf16 and int4 kernels")


def test_gguf_q4_1_projections_are_exact_int4(hf_model) -> None:
    layer = hf_model.model.layers[3]
    for w in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight):
        assert exact_int4(w) is not None
    # the embedding was not stored as Q4_1: no lossless int4 form, so it stays dense
    assert exact_int4(hf_model.model.embed_tokens.weight) is None
    # a random matrix is not 4-bit either
    assert exact_int4(torch.randn(64, 64)) is None


def test_int4_projection_matches_dense_bf16(hf_model) -> None:
    w = hf_model.model.layers[0].mlp.gate_proj.weight
    proj = Projection(w, None, torch.bfloat16)
    assert proj.int4
    x = torch.randn(1, 3, w.shape[1], dtype=torch.bfloat16)
    small = proj(x)  # 3 rows: int4 kernel
    ref = x.float() @ w.T
    assert (small.float() - ref).abs().max() <= 0.02 * ref.abs().max()
    big = proj(x.expand(8, 3, -1))  # 24 rows: pre-packed bf16
    assert (big[0].float() - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.fixture(scope="module")
def bf16_model():
    return load("smollm2-135m-instruct", "bfloat16")


def test_bf16_paths_agree_with_fp32_hf(bf16_model, hf_model) -> None:
    """Teacher-forced on HF's own greedy text: both batch paths pick HF's top token almost always."""
    tok = bf16_model.tokenizer
    ids = bf16_model.encode_chat("Explain why the sky is blue.")
    with torch.no_grad():
        seq = hf_model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False, pad_token_id=0)[0]
        ref = hf_model(seq[None]).logits[0, len(ids) - 1 : -1].argmax(-1)  # [48]
    gen = seq[len(ids):]
    m = bf16_model.model
    s = m.shape
    agree = {}
    for rows in (1, 16):  # 1 row: int4 kernel; 16 rows: pre-packed bf16
        assert (rows <= INT4_MAX_ROWS) == (rows == 1)
        cache = KVCache(s.n_layers, rows, s.n_kv_heads, len(ids), 64, s.head_dim, m.dtype)
        first = m.prefill(torch.tensor([ids]), cache).argmax(-1)
        preds = [int(first)]
        for i in range(len(gen) - 1):
            logits = m.decode(gen[i : i + 1].expand(rows, 1), torch.full((rows,), len(ids) + i), cache)
            preds.append(int(logits[0, -1].argmax()))
        agree[rows] = sum(int(a == b) for a, b in zip(preds, ref.tolist())) / len(preds)
    assert agree[1] >= 0.9 and agree[16] >= 0.9, (agree, tok.decode(gen))
