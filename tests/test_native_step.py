"""The native decode step (8-bit activations x weight blocks, one call per step) against references.

- The integer projection equals, to fp32 rounding, a float64 emulation of its quantization (so the
  only error is the 8-bit activations', the same as llama.cpp's CPU path).
- Whole steps on tiny models of every supported architecture (weights snapped to Q8_0 / Q4_1 blocks)
  follow HF's fp32 forward within that error, ragged verifies included.
- A token's logits do not depend on which other rows or tokens share its step, bit for bit: what
  keeps greedy speculation token-identical to plain greedy decoding.
- The phase clock (benchmarks/step_phases.py) is off by default and accounts within the step.
"""

from __future__ import annotations

import time

import pytest
import torch

from latts.engine.models import kernels
from latts.engine.models.kv_cache import KVCache
from latts.engine.models.native import PHASES
from latts.engine.models.transformer import Transformer
from test_transformer_archs import tiny

ext = kernels.compiled()
pytestmark = pytest.mark.skipif(ext is None, reason="latts' CPU kernels cannot be built here")


def _emulated(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float64 ``x @ w.T`` with ``x`` quantized as the kernel does: per block of 32, levels round(x * 127 / max|x|)."""
    T, K = x.shape
    xb = x.view(T, K // 32, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    levels = torch.where(amax > 0, xb * (127 / amax), torch.zeros(())).round()
    xq = (levels.double() * (amax.float() / 127).double()).view(T, K)
    return xq @ w.double().T


def _snap_q8(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to Q8_0 blocks (fp16 scale, levels in -127..127), as a GGUF would store it."""
    blocks = w.view(w.shape[0], -1, 32)
    d = (blocks.abs().amax(-1, keepdim=True) / 127).half().float()
    return (d * torch.where(d > 0, blocks / d, 0).round().clamp(-127, 127)).view_as(w)


def _snap_q4_1(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to Q4_1 blocks (fp16 scale and minimum, levels 0..15)."""
    blocks = w.view(w.shape[0], -1, 32)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    d, m = ((hi - lo) / 15).half().float(), lo.half().float()
    return (d * torch.where(d > 0, (blocks - m) / d, 0).round().clamp(0, 15) + m).view_as(w)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 17])
def test_int8_projection_is_its_quantization_exactly(hf_model, rows: int) -> None:
    layer = hf_model.model.layers[5]
    gen = torch.Generator().manual_seed(rows)
    cases = [
        (layer.mlp.gate_proj.weight.detach(), "q4"),  # Q4_1 in the GGUF
        (layer.self_attn.o_proj.weight.detach(), "q4"),
        (hf_model.model.embed_tokens.weight.detach()[:4096], "q8"),  # the tied lm_head: Q8_0
    ]
    for w, kind in cases:
        x = torch.randn(rows, w.shape[1], generator=gen) * 3
        packed = kernels.pack_q4(w) if kind == "q4" else (*kernels.pack_q8(w), torch.empty(0))
        y = ext.Int8Linear(0 if kind == "q4" else 1, *packed)(x)
        ref = _emulated(x, w)
        assert float((y.double() - ref).abs().max() / ref.abs().max()) < 2e-6
        # the 8-bit activations' own error against the exact product: 1-2% on Gaussian inputs (127 levels a block)
        exact = x.double() @ w.double().T
        assert float((y.double() - exact).norm() / exact.norm()) < 5e-2


@pytest.mark.skipif(ext is None or not ext.amx(), reason="no AMX tiles on this CPU (or this build)")
@pytest.mark.parametrize("rows", [16, 17, 31, 32, 40])
def test_amx_tiles_compute_the_vnni_bits(hf_model, rows: int) -> None:
    """Projections of 16 rows and more run on AMX tiles: the same bits as the VNNI tiles (exact int32 block sums,
    the same fp32 scaling), so a token's logits never depend on which path its step took."""
    layer = hf_model.model.layers[3]
    gen = torch.Generator().manual_seed(rows)
    cases = [(layer.mlp.down_proj.weight.detach(), "q4"), (layer.self_attn.q_proj.weight.detach(), "q4"),
             (hf_model.model.embed_tokens.weight.detach()[:2048], "q8")]
    for w, kind in cases:
        x = torch.randn(rows, w.shape[1], generator=gen) * 2
        packed = kernels.pack_q4(w) if kind == "q4" else (*kernels.pack_q8(w), torch.empty(0))
        linear = ext.Int8Linear(0 if kind == "q4" else 1, *packed)
        try:
            ext.use_amx(False)
            vnni = linear(x)
        finally:
            ext.use_amx(True)
        amx = linear(x)
        assert torch.equal(amx, vnni), float((amx - vnni).abs().max())


def test_q4_0_blocks_are_found_and_exact() -> None:
    """GGUF's Q4_0 (``d * (q - 8)``, no offset) is the q4 kernel's ``d * q + m`` with ``m = -8d``."""
    gen = torch.Generator().manual_seed(0)
    d = (torch.rand(16, 4, 1, generator=gen) + 0.1).half().float() * torch.where(torch.rand(16, 4, 1) > 0.5, 1, -1)
    q = torch.randint(0, 16, (16, 4, 32), generator=gen).float()
    q[..., 3] = 0  # ggml's quantizer puts the value of largest magnitude at level 0
    w = (d * (q - 8)).view(16, 128)
    qs, ds, ms = kernels.pack_q4(w)
    assert torch.equal(ms.view(torch.float16).float(), -8 * ds.view(torch.float16).float())
    y = ext.Int8Linear(0, qs, ds, ms)(torch.ones(1, 128))
    torch.testing.assert_close(y[0], w.sum(1), rtol=1e-5, atol=1e-4)


def _quantized_tiny(arch: str, snap) -> torch.nn.Module:
    hf = tiny(arch)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(snap(p))
    return hf


@pytest.mark.parametrize("snap", [_snap_q8, _snap_q4_1])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_native_steps_follow_hf_on_every_architecture(arch: str, snap) -> None:
    hf = _quantized_tiny(arch, snap)
    ours = Transformer(hf, torch.float32, fast=True)
    assert ours.native is not None
    s = ours.shape
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    P, rows = 10, 3
    cache = KVCache(s.n_layers, rows, s.n_kv_heads, P, 32, s.head_dim, torch.float32)
    ours.prefill(ids[:, :P], cache)

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        # two layers of 8-bit activations: ~1% of the logits' spread, never a different shape of output
        assert float((got - want).norm() / want.norm()) < 0.03

    out = ours.decode(ids[:, P : P + 1].expand(rows, 1), torch.full((rows,), P), cache)
    for row in range(rows):
        close(out[row, 0], ref[P])
    out = ours.decode(ids[:, P + 1 : P + 5].expand(rows, 4), torch.full((rows,), P + 1), cache)
    close(out[1], ref[P + 1 : P + 5])
    # ragged verify: rows from different positions, over stale slots, with unequal lengths
    starts, lengths = torch.tensor([P + 2, P + 3, P + 4]), torch.tensor([1, 3, 2])
    toks = torch.stack([ids[0, p : p + 3] for p in starts.tolist()])
    out = ours.decode(toks, starts, cache, lengths)
    for row, (p, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        close(out[row, :n], ref[p : p + n])
        assert not out[row, n:].any()


def test_a_tokens_logits_do_not_depend_on_its_step_mates(fast_model) -> None:
    """Bit for bit: decoded alone or beside other rows and tokens (a verify), a token gets the same logits."""
    m = fast_model.model
    assert m.native is not None
    s = m.shape
    ids = fast_model.encode_chat("What is 7 times 8?")
    P = len(ids)
    # 5 rows x 4 tokens: 20 tokens, so on a CPU with AMX the step's projections run on tiles
    cont = torch.tensor([[28, 29, 30, 31], [40, 41, 42, 43], [50, 51, 52, 53], [60, 61, 62, 63], [70, 71, 72, 73]])
    cache = KVCache(s.n_layers, 5, s.n_kv_heads, P, 16, s.head_dim, m.dtype)
    m.prefill(torch.tensor([ids]), cache)
    together = m.decode(cont, torch.full((5,), P), cache)  # [5, 4, V]
    for row in range(5):
        single = KVCache(s.n_layers, 1, s.n_kv_heads, P, 16, s.head_dim, m.dtype)
        m.prefill(torch.tensor([ids]), single)
        steps = [m.decode(cont[row : row + 1, i : i + 1], torch.tensor([P + i]), single)[0, 0] for i in range(4)]
        assert torch.equal(torch.stack(steps), together[row])


def test_the_phase_clock_accounts_for_the_step_and_is_off_by_default(fast_model) -> None:
    """Timed phases sum to no more than the steps' wall time; untimed steps add nothing."""
    m = fast_model.model
    native = m.native
    ids = fast_model.encode_chat("What is 7 times 8?")
    P = len(ids)
    cache = m.new_cache(4, P, 8)
    m.prefill(torch.tensor([ids]), cache)
    tokens = torch.tensor([[28], [40], [50], [60]])
    native.phase_seconds()  # whatever an earlier user left
    m.decode(tokens, torch.full((4,), P), cache)
    assert sum(native.phase_seconds().values()) == 0.0  # off by default
    native.time_phases(True)
    try:
        t = time.perf_counter()
        for i in range(1, 4):
            m.decode(tokens, torch.full((4,), P + i), cache)
        wall = time.perf_counter() - t
        phases = native.phase_seconds()
    finally:
        native.time_phases(False)
    assert list(phases) == list(PHASES)
    assert all(v >= 0 for v in phases.values())
    assert phases["gate_up"] > 0 and phases["attention"] > 0 and phases["lm_head"] > 0
    assert 0 < sum(phases.values()) <= wall


_ISA_SCRIPT = """
import sys, torch
from latts.engine.models import kernels
from test_native_step import _projection_cases
ext = kernels.compiled()
assert ext is not None, "the AVX2 build failed"
torch.save([ext.Int8Linear(kind, *packed)(x) for kind, packed, x in _projection_cases()], sys.argv[1])
"""


def _projection_cases() -> list[tuple[int, tuple, torch.Tensor]]:
    """Q4_1 and Q8_0 weights and activations, the same in every process."""
    gen = torch.Generator().manual_seed(5)
    d = (torch.rand(64, 6, 1, generator=gen) * 0.02).half().float()
    q4 = torch.randint(0, 16, (64, 6, 32), generator=gen).float()
    q4[..., :2] = torch.tensor([0.0, 15.0])
    m = (-torch.rand(64, 6, 1, generator=gen) * 0.1).half().float()
    q8 = torch.randint(-127, 128, (64, 6, 32), generator=gen).float()
    q8[..., 0] = -127  # the level of largest magnitude, as ggml quantizes
    w4, w8 = (d * q4 + m).view(64, 192), (d * q8).view(64, 192)
    x = torch.randn(11, 192, generator=gen) * 4
    return [(0, kernels.pack_q4(w4), x), (1, (*kernels.pack_q8(w8), torch.empty(0)), x)]


def test_the_avx2_build_computes_what_the_native_build_does(tmp_path) -> None:
    """CPUs without VNNI (Zen 3) run the AVX2 code: built here on purpose, it must give the same projections."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "avx2.pt"
    env = {**os.environ, "LATTS_KERNELS_ISA": "avx2", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(out)], env=env, check=True, timeout=900)
    for got, (kind, packed, x) in zip(torch.load(out), _projection_cases()):
        torch.testing.assert_close(got, ext.Int8Linear(kind, *packed)(x), rtol=1e-6, atol=1e-5)


def test_compacted_rows_continue_bit_for_bit(fast_model) -> None:
    """A finished row's slot taken by the last live row (``move_row``): that row decodes on exactly as before."""
    m = fast_model.model
    ids = fast_model.encode_chat("Name three prime numbers.")
    P = len(ids)
    toks = torch.tensor([[28, 29], [40, 41], [50, 51]])
    caches = [m.new_cache(3, P, 8) for _ in range(2)]
    for cache in caches:
        m.prefill(torch.tensor([ids]), cache)
        m.decode(toks, torch.full((3,), P), cache)
    kept = m.decode(torch.tensor([[60], [61], [62]]), torch.full((3,), P + 2), caches[0])
    caches[1].move_row(2, 0, 2)  # row 0 finished: row 2 moves into its slot
    moved = m.decode(torch.tensor([[62], [61]]), torch.full((2,), P + 2), caches[1])
    assert torch.equal(moved[0], kept[2]) and torch.equal(moved[1], kept[1])


@pytest.mark.parametrize("ragged", [False, True])
def test_greedy_speculation_on_the_native_step_is_token_identical(fast_model, ragged: bool) -> None:
    from latts.engine.speculation.drafters import NGramDrafter
    from latts.engine.engine import Engine
    from latts.request import GenerateRequest
    from test_speculative import PROMPT, _Ragged

    engine = Engine(fast_model)
    assert fast_model.model.native is not None
    plain = engine.generate(GenerateRequest(PROMPT, branches=4, max_new_tokens=80, ignore_eos=True))
    spec = engine.generate(GenerateRequest(PROMPT, branches=4, max_new_tokens=80, ignore_eos=True, gamma=3, gamma_policy="fixed",
                                           drafter=_Ragged() if ragged else NGramDrafter()))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]
    assert spec.spec.proposed > 0 and spec.spec.accepted > 0
    if not ragged:  # (with ragged proposals row 0 never drafts, so it still takes one step a token)
        assert spec.steps < plain.steps


def test_bf16_pair_attention_follows_the_float32_kernels(fast_model) -> None:
    """Attending to a bf16 prompt in bf16 dot products changes the distributions by less than rounding.

    The pair kernels round the queries and softmax weights to bf16 (the keys and values already are);
    a wrong layout or a lost padding key would move whole distributions. Teacher-forced on real text
    behind a prompt of an odd length (partial key blocks and value pairs), two rows of different
    tokens for 26 steps (their own slots in bf16 too: values in pairs from 2 slots, keys sixteen at a
    time from 16) and one verify-like step of three tokens each, against the float32 attention kernels:
    mean KL below half of the whole fast path's bound against HF fp32 (benchmarks/numerics.py: 0.01).
    """
    m = fast_model.model
    native = m.native
    if not ext.Model.pair_attention:
        pytest.skip("this CPU has no AVX512-BF16: the step attends in float32 only")
    assert native.pair_attention and m.dtype == torch.bfloat16
    text = fast_model.tokenizer.encode(
        "Problem: Find the sum of all positive divisors of 36 that are also multiples of 3.\n"
        "Solution: The divisors of 36 are 1, 2, 3, 4, 6, 9, 12, 18 and 36. Those divisible by 3 are 3, 6, 9, "
        "12, 18 and 36, and their sum is 3 + 6 + 9 + 12 + 18 + 36 = 84, so the answer is 84.")
    P = 37  # odd: a partial block of sixteen keys and a half-empty last pair of values
    prompt, rest = torch.tensor([text[:P]]), torch.tensor(text[P:P + 30])
    assert len(rest) == 30
    s = m.shape
    got = {}
    for on in (True, False):
        native.pair_attention = on
        try:
            cache = KVCache(s.n_layers, 2, s.n_kv_heads, P, 32, s.head_dim, m.dtype)
            m.prefill(prompt, cache)
            steps = [m.decode(torch.stack([rest[i : i + 1], rest[i + 1 : i + 2]]), torch.tensor([P + i, P + i]), cache)
                     for i in range(26)]
            steps.append(m.decode(torch.stack([rest[26:29], rest[27:30]]), torch.tensor([P + 26, P + 26]), cache))
            got[on] = torch.cat([x.reshape(-1, x.shape[-1]) for x in steps]).float().log_softmax(-1)
        finally:
            native.pair_attention = True
    kl = (got[False].exp() * (got[False] - got[True])).sum(-1)
    print(f"mean KL {kl.mean().item():.2e}, max {kl.max().item():.2e}")
    assert kl.mean().item() < 0.005, kl
    assert (got[False].argmax(-1) == got[True].argmax(-1)).float().mean().item() >= 0.9
