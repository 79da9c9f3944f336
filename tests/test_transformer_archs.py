"""latts' transformer against HF's own forward for every supported architecture (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from latts.engine.models import kernels
from latts.engine.models.kv_cache import KVCache
from latts.engine.models.transformer import Transformer
from latts.errors import LattsError

COMMON = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
)


def tiny(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    config = {
        "llama": lambda: tf.LlamaConfig(**COMMON),
        "mistral": lambda: tf.MistralConfig(**COMMON, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**COMMON),
        "qwen3": lambda: tf.Qwen3Config(**COMMON, head_dim=16),
    }[arch]()
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random biases / norms so that every weight matters
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("rows", [1, 3])  # 1: prompt and tokens in one buffer; 3: shared prefix + rows
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_prefill_and_ragged_decode_match_hf(arch: str, rows: int) -> None:
    hf = tiny(arch)
    ours = Transformer(hf, torch.float32)
    s = ours.shape
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]  # [24, V]
    P = 10
    cache = KVCache(s.n_layers, rows, s.n_kv_heads, P, 32, s.head_dim, torch.float32)
    torch.testing.assert_close(ours.prefill(ids[:, :P], cache)[0], ref[P - 1], atol=1e-4, rtol=1e-4)
    # the rows decode the same tokens in lockstep, one then several at a time
    out = ours.decode(ids[:, P : P + 1].expand(rows, 1), torch.full((rows,), P), cache)
    for row in range(rows):
        torch.testing.assert_close(out[row, 0], ref[P], atol=1e-4, rtol=1e-4)
    out = ours.decode(ids[:, P + 1 : P + 5].expand(rows, 4), torch.full((rows,), P + 1), cache)
    torch.testing.assert_close(out[-1], ref[P + 1 : P + 5], atol=1e-4, rtol=1e-4)
    if rows == 1:  # a rejected draft: re-decode from an earlier position over stale slots
        out = ours.decode(ids[:, P + 2 : P + 4], torch.tensor([P + 2]), cache)
        torch.testing.assert_close(out[0], ref[P + 2 : P + 4], atol=1e-4, rtol=1e-4)
        return
    # ragged: rows re-decode from different positions (as after rejected drafts); stale slots ignored
    starts = torch.tensor([P + 2, P + 3, P + 4])
    toks = torch.stack([ids[0, p : p + 3] for p in starts.tolist()])
    out = ours.decode(toks, starts, cache)
    for row, p in enumerate(starts.tolist()):
        torch.testing.assert_close(out[row], ref[p : p + 3], atol=1e-4, rtol=1e-4)
    # ragged lengths (a verify of unequal proposals): row r computes only its first lengths[r] tokens
    lengths = torch.tensor([1, 3, 2])
    out = ours.decode(toks, starts, cache, lengths)
    for row, (p, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
        torch.testing.assert_close(out[row, :n], ref[p : p + n], atol=1e-4, rtol=1e-4)
        assert not out[row, n:].any()  # padding is not computed: zero logits


def test_unsupported_architecture_is_refused() -> None:
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    with pytest.raises(LattsError, match="unsupported architecture 'gpt2'"):
        Transformer(gpt2)


def test_never_written_slots_cannot_poison_attention() -> None:
    """Uninitialised cache memory holding NaN must not leak into a ragged batch's outputs."""
    hf = tiny("llama")
    ours = Transformer(hf, torch.float32)
    s = ours.shape
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    cache = KVCache(s.n_layers, 2, s.n_kv_heads, 8, 16, s.head_dim, torch.float32)
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    ours.prefill(ids[:, :8], cache)
    out = ours.decode(torch.stack([ids[0, 8:10], ids[0, 8:10]]), torch.tensor([8, 11]), cache)
    assert torch.isfinite(out[0]).all()


def _lean_and_general_steps(model: Transformer, ids: torch.Tensor, P: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Logits of the same single-branch decode run by the lean path and by the general step.

    Each run decodes one token, then a 3-token verify, then one token back at a rejected position.
    """
    s = model.shape
    outs = []
    for lean in (True, False):
        model.lean_single_step = lean
        cache = KVCache(s.n_layers, 1, s.n_kv_heads, P, 16, s.head_dim, model.dtype)
        model.prefill(ids[:, :P], cache)
        run = [model.decode(ids[:, P : P + 1], torch.tensor([P]), cache)]
        run.append(model.decode(ids[:, P + 1 : P + 4], torch.tensor([P + 1]), cache))
        run.append(model.decode(ids[:, P + 2 : P + 3], torch.tensor([P + 2]), cache))
        run.append(model.decode(ids[:, P + 3 : P + 4], torch.tensor([P + 3]), cache))
        outs.append(run)
    model.lean_single_step = True
    return list(zip(*outs))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_lean_single_step_is_the_general_step_bit_for_bit(arch: str, fast: bool) -> None:
    """One branch's decode and verify steps take a lean path; it must compute exactly what the general decode does.

    Bit for bit with torch's ops; with latts' CPU kernels (fast formats) its attention is another
    kernel than the general step's, so equal to fp32 rounding.
    """
    ours = Transformer(tiny(arch), torch.float32, fast=fast)
    assert (ours.kernels is not None) == (fast and kernels.compiled() is not None)
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(3))
    for lean, general in _lean_and_general_steps(ours, ids, P=10):
        assert lean.shape == general.shape
        if ours.kernels is None:
            assert torch.equal(lean, general)
        else:
            torch.testing.assert_close(lean, general, rtol=1e-5, atol=1e-5)
