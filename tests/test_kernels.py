"""latts' CPU kernels against float64 references on the real default model's weights."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from latts.engine.models import kernels

ext = kernels.compiled()
needs_kernels = pytest.mark.skipif(ext is None, reason="latts' CPU kernels cannot be built here")


def test_kernels_build_where_a_compiler_and_avx2_exist() -> None:
    """So a broken build cannot hide behind the skips below."""
    if shutil.which("c++") and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert ext is not None


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


def test_gguf_blocks_pack_exactly(hf_model) -> None:
    layer = hf_model.model.layers[3]
    for w in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight):
        qs, d, m = kernels.pack_q4(w)
        packed = qs.view(w.shape[0], -1, 16)  # byte j of a block: weight j (low nibble), j + 16 (high)
        q = torch.cat([packed & 15, packed >> 4], -1).float()  # [out, blocks, 32]
        rebuilt = d.view(torch.float16).float()[..., None] * q + m.view(torch.float16).float()[..., None]
        assert torch.equal(rebuilt.view_as(w), w)  # bit for bit the GGUF's de-quantized weight
    emb = hf_model.model.embed_tokens.weight  # Q8_0 in the GGUF
    assert kernels.pack_q4(emb) is None
    qs, d = kernels.pack_q8(emb)
    assert torch.equal((d.view(torch.float16).float()[..., None] * qs.view(emb.shape[0], -1, 32).float()).view_as(emb), emb)
    noise = torch.randn(64, 64)
    assert kernels.pack_q4(noise) is None and kernels.pack_q8(noise) is None
    assert kernels.pack_q4(torch.randn(8, 40)) is None  # not a multiple of the block


@needs_kernels
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9])
def test_block_matmuls_are_as_exact_as_fp32(hf_model, rows: int) -> None:
    """q4 (layers) and q8 (the lm_head) against float64 on the real weights: fp32-level error, like a dense matmul."""
    layer = hf_model.model.layers[5]
    cases = [
        (layer.mlp.gate_proj.weight.detach(), "q4"),
        (layer.mlp.down_proj.weight.detach()[:7], "q4"),  # 7 outputs: the tail after groups of four
        (hf_model.model.embed_tokens.weight.detach(), "q8"),
    ]
    gen = torch.Generator().manual_seed(rows)
    for w, kind in cases:
        x = torch.randn(rows, w.shape[1], generator=gen)
        ref = x.double() @ w.double().T
        y = ext.q4_linear(x, *kernels.pack_q4(w)) if kind == "q4" else ext.q8_linear(x, *kernels.pack_q8(w))
        assert y.shape == ref.shape and y.dtype == torch.float32
        dense_err = _rel_err(x @ w.T, ref)
        assert _rel_err(y, ref) <= max(4 * dense_err, 1e-6), (kind, w.shape)


@needs_kernels
@pytest.mark.parametrize(("k", "end"), [(1, 1), (1, 37), (1, 410), (4, 410), (9, 123), (3, 3)])
def test_attend_is_causal_softmax_attention(k: int, end: int) -> None:
    """k new tokens of one branch (positions end-k .. end-1) against its cache, heads folded as the engine does."""
    G, r, hd, capacity = 3, 3, 64, 700
    gen = torch.Generator().manual_seed(end)
    q = torch.randn(G, r * k, hd, generator=gen)
    keys, values = torch.randn(2, G, capacity, hd, generator=gen)  # rows past `end` must be ignored
    visible = torch.arange(end)[None, :] <= (end - k + torch.arange(k))[:, None]  # [k, end]
    mask = torch.zeros(k, end, dtype=torch.float64).masked_fill(~visible, float("-inf")).repeat(r, 1)
    ref = F.scaled_dot_product_attention(
        q.double(), keys[:, :end].double(), values[:, :end].double(), mask, scale=0.125
    )
    out = ext.attend(q, keys, values, k, end, 0.125)
    assert (out.double() - ref).abs().max() < 1e-6


@needs_kernels
def test_rms_norm_matches_torch() -> None:
    x, w = torch.randn(2, 5, 576), torch.randn(576)
    torch.testing.assert_close(ext.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ext.rms_norm(x, None, 1e-6), F.rms_norm(x, (576,), None, 1e-6), rtol=1e-5, atol=1e-6)
