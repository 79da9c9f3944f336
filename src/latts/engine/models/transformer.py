"""A compact decoder-only transformer that runs the decode path of latts.

Why not call the HF model's ``forward``: on a CPU, HF's per-op overhead, ``DynamicCache``
concatenation and ``repeat_kv`` make a decode step cost 4-5x the memory-bandwidth floor (the time to
read every weight once), and that gap grows with the batch and the context.
This module re-packs the HF model's weights (fused q/k/v and gate/up projections) and runs
attention against a preallocated, in-place :class:`~latts.engine.models.kv_cache.KVCache` with grouped
query heads folded into the query length, so K/V are never expanded.

Supported: the Llama family (Llama, Mistral, SmolLM), Qwen2 (q/k/v bias) and Qwen3 (q/k norm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latts.engine.models import kernels
from latts.engine.models import native
from latts.engine.models.catalog import TORCH_ARCHITECTURES as SUPPORTED_ARCHITECTURES
from latts.engine.models.kv_cache import KVCache
from latts.engine.models.linear import Projection
from latts.errors import DeadlineReached, LattsError


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder: what the KV cache and the attention need to know."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    rms_eps: float

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads


class _Layer(nn.Module):
    """One decoder layer with fused q/k/v and gate/up projections."""

    def __init__(self, hf_layer: nn.Module, shape: ModelShape, dtype: torch.dtype, fast: bool) -> None:
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        bias = torch.cat([p.bias for p in qkv]) if qkv[0].bias is not None else None
        # projections are plain callables (see Projection), kept out of the module tree
        self.qkv = Projection(torch.cat([p.weight for p in qkv]), bias, dtype, fast)
        self.o = Projection(attn.o_proj.weight, None, dtype, fast)
        self.gate_up = Projection(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), None, dtype, fast)
        self.down = Projection(mlp.down_proj.weight, None, dtype, fast)
        self.norm_attn = nn.Parameter(hf_layer.input_layernorm.weight.to(dtype), requires_grad=False)
        self.norm_mlp = nn.Parameter(hf_layer.post_attention_layernorm.weight.to(dtype), requires_grad=False)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.qk_norm = (  # [H + G, hd]: per-head weights of q's heads then k's
            nn.Parameter(
                torch.cat([q_norm.weight.expand(shape.n_heads, -1), k_norm.weight.expand(shape.n_kv_heads, -1)])
                .to(dtype)
                .contiguous(),
                requires_grad=False,
            )
            if q_norm is not None
            else None
        )
        self.shape = shape
        self.scale = getattr(attn, "scaling", shape.head_dim**-0.5)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings in HF's rotate-half convention.

    ``rotate_half(x) * sin`` equals ``roll(x, half) * signed_sin`` with the first half of ``sin``
    negated (bit for bit), which takes three elementwise ops instead of six.
    """
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


class Transformer(nn.Module):
    """The target (or draft) model as latts runs it: logits for new tokens given a KV cache.

    ``fast`` picks the fastest weight formats of this CPU (see :mod:`latts.engine.models.linear`); without
    it every projection is a plain ``F.linear`` in ``dtype``, as HF computes it.
    """

    def __init__(self, hf_model: nn.Module, dtype: torch.dtype = torch.float32, fast: bool = False) -> None:
        super().__init__()
        config = hf_model.config
        arch = getattr(config, "model_type", "?")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise LattsError(
                f"unsupported architecture '{arch}': the latts engine runs {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.shape = ModelShape(
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            n_kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            hidden=config.hidden_size,
            vocab=config.vocab_size,
            rms_eps=config.rms_norm_eps,
        )
        self.dtype = dtype
        self.fast = fast
        base = hf_model.model
        self.embed = nn.Parameter(base.embed_tokens.weight.to(dtype).contiguous(), requires_grad=False)
        self.layers = nn.ModuleList(_Layer(layer, self.shape, dtype, fast) for layer in base.layers)
        self.norm = nn.Parameter(base.norm.weight.to(dtype), requires_grad=False)
        self.lm_head = Projection(hf_model.get_output_embeddings().weight, None, dtype, fast)
        # latts' fp32 CPU kernels for RMS norm and one branch's attention (fast formats only: the
        # reference path keeps torch's ops, bit for bit what HF computes)
        fits = dtype == torch.float32 and self.shape.hidden % 8 == 0 and head_dim % 8 == 0
        self.kernels = kernels.compiled() if fast and fits else None
        self.n_params = sum(p.numel() for p in hf_model.parameters())  # tied embeddings counted once
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 20))
        window = getattr(config, "sliding_window", None)
        if window and (arch == "mistral" or getattr(config, "use_sliding_window", False)):
            # this engine attends to the whole context: refuse contexts where the model would not
            self.max_positions = min(self.max_positions, int(window))
        rotary = base.rotary_emb
        self.register_buffer("inv_freq", rotary.inv_freq.float().clone(), persistent=False)
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self._rope_cos = torch.empty(0)
        self._rope_sin = torch.empty(0)
        # one branch: the lean path; False runs the general one, the reference tests compare it with
        self.lean_single_step = True
        # decode steps in one native call where the weights are blocks latts' kernels multiply
        # (None: torch's ops; setting it to None switches a model back to them)
        self.native = native.build(self) if fast else None

    def new_cache(self, rows: int, prompt_len: int, max_suffix: int) -> KVCache:
        """A KV cache for ``rows`` branches of one prompt, ``max_suffix`` generated tokens each.

        In the model dtype: the native step reads bf16 keys and values too, and there half the bytes
        beat the conversion (a B=4 step at context 512 took 7.7 ms on a bf16 cache, 9.4 ms on fp32).
        """
        s = self.shape
        return KVCache(s.n_layers, rows, s.n_kv_heads, prompt_len, max_suffix, s.head_dim, self.dtype)

    def projections(self) -> list[Projection]:
        """Every projection, the lm_head included: what weight-format tuning measures and switches."""
        layers = [p for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return [*layers, self.lm_head]

    def rope_tables(self, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables ``[n_positions, head_dim]`` in the model dtype, grown on demand."""
        if self._rope_cos.shape[0] < n_positions:
            # grow geometrically: decoding asks for one more position every step
            n_positions = max(n_positions, 2 * self._rope_cos.shape[0], 256)
            cos, sin = native.rotary_tables(self.inv_freq, self.rope_scaling, n_positions)
            self._rope_cos, self._rope_sin = cos.to(self.dtype), sin.to(self.dtype)
        return self._rope_cos, self._rope_sin

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.rms_norm(x, weight, self.shape.rms_eps)
        return F.rms_norm(x, (x.shape[-1],), weight, self.shape.rms_eps)

    def _qkv(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Project ``x`` ``[B, t, D]`` to rotated q ``[B, t, H, hd]`` and k, v ``[B, t, G, hd]``.

        q and k heads are normalised (Qwen3) and rotated together, as one ``[B, t, H+G, hd]`` tensor.
        """
        s = self.shape
        B, t, _ = x.shape
        H, G, hd = s.n_heads, s.n_kv_heads, s.head_dim
        qkv = layer.qkv(self._rms(x, layer.norm_attn))
        qk = qkv[..., : (H + G) * hd].view(B, t, H + G, hd)
        v = qkv[..., (H + G) * hd :].view(B, t, G, hd)
        if layer.qk_norm is not None:
            qk = F.rms_norm(qk, (hd,), None, s.rms_eps) * layer.qk_norm
        qk = _rotate(qk, cos, sin)
        return qk[:, :, :H], qk[:, :, H:], v

    def _mlp_and_out(self, layer: _Layer, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output, then the gated MLP block."""
        x = x + layer.o(attn_out)
        gate, up = layer.gate_up(self._rms(x, layer.norm_mlp)).chunk(2, dim=-1)
        return x + layer.down(F.silu(gate) * up)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._rms(x, self.norm))

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, cache: KVCache, deadline: float | None = None) -> torch.Tensor:
        """Run the prompt ``tokens`` ``[1, P]`` once, store its K/V as the shared prefix; last logits ``[1, V]``.

        With a ``deadline`` (``time.monotonic()``), the clock is read before every layer and
        :class:`~latts.errors.DeadlineReached` raised once it has passed: a prompt that cannot be read in time
        gives no answer, and the request must end at its deadline rather than seconds later."""
        s = self.shape
        _, P = tokens.shape
        cos_t, sin_t = self.rope_tables(P)
        cos, sin = cos_t[:P, None, :], sin_t[:P, None, :]  # [P, 1, hd]
        x = self.embed[tokens]
        for i, layer in enumerate(self.layers):
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineReached(f"the deadline passed in the prefill, at layer {i} of {len(self.layers)}")
            q, k, v = self._qkv(layer, x, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            cache.write_prefix(i, k, v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.scale, enable_gqa=True)
            x = self._mlp_and_out(layer, x, o.transpose(1, 2).reshape(1, P, s.n_heads * s.head_dim))
        return self._logits(x[:, -1])

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, start: torch.Tensor, cache: KVCache, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run ``tokens`` ``[B, k]`` at positions ``start[b] + 0..k-1`` for cache rows ``0..B-1``; logits ``[B, k, V]``.

        Positions count from the start of the prompt (``start >= prompt_len``). Their K/V are written
        into the rows' suffix slots; each query sees the shared prompt and its row's slots up to its own
        position. The two attention parts are merged exactly through their log-sum-exps.

        ``lengths`` ``[B]`` (ragged rows, e.g. a verify where rows proposed different numbers of drafts):
        only row ``b``'s first ``lengths[b]`` tokens are real. The projections, norms, lm_head and the
        prompt part of attention then run on the real tokens only — in the compute-bound regime of a
        wide verify, padding would cost as much as a real token (each row's own part of attention
        still runs on the padded layout). With several rows, padded positions get zero logits (one
        row has no padding to skip); their K/V slots lie past the row's real tokens, so no real query
        attends to them until real tokens overwrite them.
        """
        if self.native is not None:
            return self.native(tokens, start, cache, lengths)
        s = self.shape
        B, k = tokens.shape
        if cache.single and self.lean_single_step:
            return self._decode_single(tokens[0], int(start[0]), cache)
        real = None  # flat indices of the real tokens in [B * k], when some are padding
        if lengths is not None and not cache.single and int(lengths.sum()) < B * k:
            real = (torch.arange(k)[None, :] < lengths[:, None]).flatten().nonzero().squeeze(1)
        G, r, hd = s.n_kv_heads, s.group, s.head_dim
        positions = start[:, None] + torch.arange(k)  # [B, k]
        cos_t, sin_t = self.rope_tables(int(positions.max()) + 1)
        cos, sin = cos_t[positions][:, :, None, :], sin_t[positions][:, :, None, :]  # [B, k, 1, hd]
        slots = positions - cache.prompt_len
        n_slots = int(slots.max()) + 1
        uniform = bool((start == start[0]).all())
        mask = None
        if k > 1 or not uniform:  # query r_i*k + i sees slots <= its own
            mask = self._additive_mask(torch.arange(n_slots)[None, None, :] <= slots[:, :, None])

        cache.reserve(n_slots)
        joint_mask = None
        if cache.single and mask is not None:  # the prompt is visible to every query
            joint_mask = torch.cat([mask.new_zeros(mask.shape[:-1] + (cache.prompt_len,)), mask], -1)
        x = self.embed[tokens]  # [B, k, D]
        if real is not None:  # from here on x holds the real tokens only, as one row: [1, T, D]
            x, cos, sin = (t.flatten(0, 1)[real][None] for t in (x, cos, sin))
        for i, layer in enumerate(self.layers):
            q, kk, v = self._qkv(layer, x, cos, sin)
            if real is not None:
                # the shared prompt's attention needs no row layout: it runs on the real queries only
                q_real = q[0]  # [T, H, hd]
                # each row's own part works on the padded [B, k] layout
                q, kk, v = (_unflatten(t[0], real, B, k) for t in (q, kk, v))
            keys, values = cache.write(i, kk, v, slots, uniform, n_slots)  # [B, G, S, hd]
            # Fold the r query heads of each KV head into the query length: [B, G, r*k, hd].
            q = q.view(B, k, G, r, hd).permute(0, 2, 3, 1, 4).reshape(B, G, r * k, hd)
            if cache.single:  # one branch: prompt and own tokens are contiguous, one attention call
                keys, values = cache.joint(i, n_slots)
                # no log-sum-exp needed here, and SDPA's own dispatch is ~2x faster than the
                # flash kernel called directly for a handful of queries (measured, bf16)
                o = F.scaled_dot_product_attention(q, keys, values, joint_mask, scale=layer.scale)
                o = o.view(B, G, r, k, hd).permute(0, 3, 1, 2, 4).reshape(B, k, s.n_heads * hd)
                x = self._mlp_and_out(layer, x, o)
                continue
            pk, pv = cache.prefix(i)
            if real is not None:
                x = self._mlp_and_out(layer, x, self._ragged_attention(q_real, q, keys, values, mask, pk, pv,
                                                                       real, layer.scale))
                continue
            # Prompt part: every row's queries against the one shared prefix, as one GEMM.
            q_all = q.transpose(0, 1).reshape(1, G, B * r * k, hd)
            o1, lse1 = _attention(q_all, pk, pv, None, layer.scale)
            o1 = o1.view(G, B, r * k, hd).transpose(0, 1)
            lse1 = lse1.view(G, B, r * k).transpose(0, 1)
            # Own part: each row's generated tokens.
            o2, lse2 = _attention(q, keys, values, mask, layer.scale)
            o = _merge(o1, lse1, o2, lse2)
            o = o.view(B, G, r, k, hd).permute(0, 3, 1, 2, 4).reshape(B, k, s.n_heads * hd)
            x = self._mlp_and_out(layer, x, o)
        if real is not None:
            return _unflatten(self._logits(x)[0], real, B, k)
        return self._logits(x)

    def _ragged_attention(
        self,
        q_real: torch.Tensor,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
        pk: torch.Tensor,
        pv: torch.Tensor,
        real: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Attention of ragged rows' real queries: ``[1, T, H * hd]``.

        The shared prompt part runs on the ``T`` real queries ``q_real`` ``[T, H, hd]`` alone; only the
        rows' own part needs the padded ``[B, G, r*k, hd]`` layout ``q`` (with the causal ``mask``).
        Padding would otherwise multiply the prompt attention by ``k`` for every row (a verify where
        one of 8 rows proposes 2 drafts paid 3x the prompt attention of a plain step).
        """
        s = self.shape
        G, r, hd = s.n_kv_heads, s.group, s.head_dim
        B, T, k = q.shape[0], q_real.shape[0], q.shape[2] // s.group
        o1, lse1 = _attention(q_real.view(T, G, r, hd).permute(1, 0, 2, 3).reshape(1, G, T * r, hd), pk, pv,
                              None, scale)
        o1, lse1 = o1.view(G, T, r, hd).transpose(0, 1), lse1.view(G, T, r).transpose(0, 1)  # [T, G, r, ...]
        o2, lse2 = _attention(q, keys, values, mask, scale)  # [B, G, r*k, hd], [B, G, r*k]
        o2 = o2.view(B, G, r, k, hd).permute(0, 3, 1, 2, 4).flatten(0, 1)[real]  # [T, G, r, hd]
        lse2 = lse2.view(B, G, r, k).permute(0, 3, 1, 2).flatten(0, 1)[real]  # [T, G, r]
        return _merge(o1, lse1, o2, lse2).reshape(1, T, s.n_heads * hd)

    def _additive_mask(self, visible: torch.Tensor) -> torch.Tensor:
        """``visible`` ``[B, k, S]`` (query token, key) as an additive mask ``[B, 1, r*k, S]`` over folded heads."""
        B, k, S = visible.shape
        mask = torch.zeros(visible.shape, dtype=self.dtype).masked_fill_(~visible, float("-inf"))
        return mask[:, None].expand(B, self.shape.group, k, S).reshape(B, 1, self.shape.group * k, S)

    def _decode_single(self, tokens: torch.Tensor, position: int, cache: KVCache) -> torch.Tensor:
        """``k`` consecutive tokens ``[k]`` of one branch from ``position`` on: B = 1 decoding and verifying.

        The same arithmetic as :meth:`decode` (bit for bit over torch's ops; with latts' kernels its
        attention is their ``attend``, equal to fp32 rounding), minus what a single row does not need:
        no per-row position tensors or per-layer host syncs, 2-D activations, no dtype round trips
        around torch's int4 kernel, and no mask for one token. At this shape a step is a few dozen small
        ops per layer, each costing microseconds of dispatch: 6-13% of a B=1 step on a 2-core Zen 3
        (measured).
        """
        s = self.shape
        H, G, r, hd = s.n_heads, s.n_kv_heads, s.group, s.head_dim
        k = tokens.shape[0]
        end = position + k
        cache.reserve(end - cache.prompt_len)
        cos_t, sin_t = self.rope_tables(end)
        cos, sin = cos_t[position:end, None], sin_t[position:end, None]  # [k, 1, hd]
        mask = None
        if k > 1 and self.kernels is None:  # query r_i*k + i sees positions up to position + i
            own = torch.arange(position, end)
            mask = self._additive_mask(torch.arange(end)[None, None, :] <= own[None, :, None])
        half, qk_end = hd // 2, (H + G) * hd
        x = self.embed[tokens]  # [k, D]
        for i, layer in enumerate(self.layers):
            # projections return their kernel's dtype (bf16 from torch's int4); the mixed-dtype ops below
            # upcast exactly, as the general path's explicit conversions do, one op fewer each
            qkv = layer.qkv.native(self._rms(x, layer.norm_attn))  # [k, (H + 2G) hd]
            qk = qkv[:, :qk_end].view(k, H + G, hd)
            if layer.qk_norm is not None:
                qk = F.rms_norm(qk.to(self.dtype), (hd,), None, s.rms_eps) * layer.qk_norm
            qk = qk * cos + qk.roll(half, -1) * sin
            keys, values = cache.full_k[i], cache.full_v[i]  # [1, G, P + suffix, hd]
            keys[0, :, position:end] = qk[:, H:].transpose(0, 1)
            values[0, :, position:end] = qkv[:, qk_end:].view(k, G, hd).transpose(0, 1)
            q = qk[:, :H].view(k, G, r, hd).permute(1, 2, 0, 3).reshape(1, G, r * k, hd)
            if self.kernels is not None:
                o = self.kernels.attend(q[0], keys[0], values[0], k, end, layer.scale)
            else:
                keys, values = keys[:, :, :end], values[:, :, :end]
                o = F.scaled_dot_product_attention(q, keys, values, mask, scale=layer.scale)
            x = x + layer.o.native(o.view(G, r, k, hd).permute(2, 0, 1, 3).reshape(k, H * hd))
            gate, up = layer.gate_up.native(self._rms(x, layer.norm_mlp)).chunk(2, dim=-1)
            x = x + layer.down.native(F.silu(gate.to(self.dtype)) * up)
        return self._logits(x).view(1, k, -1)


def _unflatten(t: torch.Tensor, real: torch.Tensor, B: int, k: int) -> torch.Tensor:
    """Real-token rows ``t`` ``[T, ...]`` back into the padded ``[B, k, ...]`` layout, zeros at the padding."""
    out = t.new_zeros((B * k,) + t.shape[1:])
    out[real] = t
    return out.view((B, k) + t.shape[1:])


def _merge(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """Exact softmax attention over two disjoint key sets from each part's output and log-sum-exp."""
    return torch.lerp(o2, o1, torch.sigmoid(lse1 - lse2).unsqueeze(-1).to(o2.dtype))


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention returning the output and its log-sum-exp (for merging partial attentions)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, attn_mask=mask, scale=scale
    )
    return out, lse
