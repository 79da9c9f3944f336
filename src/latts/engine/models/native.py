"""The native decode step: a whole decode or verify step of the layer stack in one call into latts' kernels.

At a few rows a step is a few milliseconds of arithmetic spread over hundreds of small operations;
as torch ops their dispatch and set-up cost more than the arithmetic (17.5 ms for a B=1 step of the
default model with no context, against a ≈ 3 ms weight-read floor). :class:`NativeStep` hands the
whole step to ``step.cpp``: 8-bit activations times the GGUF's own weight blocks in integers (VNNI
where the CPU has it), attention against the shared prompt and each row's slots, both cores in one
parallel region. Python keeps rows, sampling, drafting and budget forcing.

It runs where every projection (the lm_head included) is held as exact Q4/Q8 blocks and latts'
kernels are built; elsewhere the engine keeps its torch path. The prompt's prefill stays on that
torch path too (dense, compute-bound, where oneDNN's matmuls are strong).
"""

from __future__ import annotations

import torch

from latts.engine.models import kernels
from latts.engine.models.linear import Projection

_KINDS = {"q4": 0, "q8": 1}
# the phases of a step, in the order step.cpp's PhaseClock counts them (per layer, then the model's end)
PHASES = ("norm", "qkv", "rope+kv", "attention", "quantize", "o_proj", "norm_mlp", "gate_up", "silu", "down",
          "final_norm", "lm_head")
_NONE = torch.empty(0)


def _projection_tensors(p: Projection) -> list[torch.Tensor]:
    blocks = p.blocks
    bias = p.bias.float().contiguous() if p.bias is not None else _NONE
    return [blocks.qs, blocks.d, blocks.m if blocks.m is not None else _NONE, bias]


def rotary_tables(inv_freq: torch.Tensor, scaling: float, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos and signed sin tables ``[n_positions, head_dim]`` for positions ``0..n_positions-1``.

    The sin table's first half is negated, as :func:`_rotate` and the native step's rotation expect.
    """
    freqs = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, : sin.shape[1] // 2].neg_()
    return (emb.cos() * scaling).contiguous(), (sin * scaling).contiguous()


class NativeStep:
    """Decode/verify steps of a :class:`~latts.engine.models.transformer.Transformer` through ``step.cpp``.

    Same contract as ``Transformer.decode``: logits ``[B, k, V]`` for tokens ``[B, k]`` at positions
    ``start[b] + i``, ragged rows (``lengths``) with zero logits at the padding.
    """

    def __init__(self, model: "Transformer", ext) -> None:  # noqa: F821 - circular import
        s = model.shape
        tensors: list[torch.Tensor] = []
        kinds: list[int] = []
        for layer in model.layers:
            for p in (layer.qkv, layer.o, layer.gate_up, layer.down):
                tensors += _projection_tensors(p)
                kinds.append(_KINDS[p.blocks.kind])
            qk_norm = layer.qk_norm.float().contiguous() if layer.qk_norm is not None else _NONE
            tensors += [layer.norm_attn.float().contiguous(), layer.norm_mlp.float().contiguous(), qk_norm]
        tensors += [model.embed, model.norm.float().contiguous(), *_projection_tensors(model.lm_head)]
        kinds.append(_KINDS[model.lm_head.blocks.kind])
        intermediate = model.layers[0].down.in_features
        dims = [s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim, s.hidden, intermediate, s.vocab]
        scales = [float(layer.scale) for layer in model.layers]
        self._model = ext.Model(tensors, kinds, dims, [float(s.rms_eps), *scales])
        # attend to a bf16 prompt in bf16 dot products where the build has them (AVX512-BF16); tests
        # switch it off to compare with the float32 kernels
        self.pair_attention: bool = bool(ext.Model.pair_attention)
        self._inv_freq = model.inv_freq
        self._rope_scaling = model.rope_scaling
        self._cos = torch.empty(0, s.head_dim)
        self._sin = torch.empty(0, s.head_dim)

    @staticmethod
    def supports(model: "Transformer") -> bool:  # noqa: F821
        """Whether every projection of ``model`` is held as blocks the native step multiplies (in groups of 8 outputs)."""
        s = model.shape
        return (
            all(p.blocks is not None and p.out_features % 8 == 0 for p in model.projections())
            and model.embed.dtype in (torch.float32, torch.bfloat16)
            and s.head_dim % 16 == 0
            and s.head_dim <= 512
            and s.hidden % 32 == 0
            and (s.n_heads * s.head_dim) % 32 == 0
        )

    def time_phases(self, on: bool = True) -> None:
        """Stamp the phases of later steps (a clock read per phase; off by default), for :meth:`phase_seconds`."""
        self._model.time_phases(on)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds spent in each phase (:data:`PHASES`) of the steps since the last call, while timed."""
        return dict(zip(PHASES, self._model.phase_seconds(), strict=True))

    def _rope(self, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos and signed-sin tables (as ``Transformer.rope_tables``), grown geometrically."""
        if self._cos.shape[0] < n_positions:
            n = max(n_positions, 2 * self._cos.shape[0], 256)
            self._cos, self._sin = rotary_tables(self._inv_freq, self._rope_scaling, n)
        return self._cos, self._sin

    def __call__(
        self, tokens: torch.Tensor, start: torch.Tensor, cache, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[B, k, V]`` of one step (see ``Transformer.decode``)."""
        B, k = tokens.shape
        start = start.to(torch.long).contiguous()
        lengths = (torch.full((B,), k) if lengths is None else lengths.to(torch.long)).contiguous()
        cos, sin = self._rope(int((start + lengths).max()))
        if self.pair_attention and cache.prefix_k.dtype == torch.bfloat16:
            keys_t, pairs = _NONE, _prompt_pairs(cache)
        else:
            keys_t, pairs = _prompt_keys_transposed(cache), (_NONE, _NONE)
        logits = self._model.step(tokens.to(torch.long).contiguous(), start, lengths, keys_t, cache.prefix_v,
                                  cache.k, cache.v, cos, sin, *pairs)
        if logits.shape[0] == B * k:
            return logits.view(B, k, -1)
        out = logits.new_zeros(B * k, logits.shape[1])
        out[(torch.arange(k)[None, :] < lengths[:, None]).flatten()] = logits
        return out.view(B, k, -1)


def _prompt_keys_transposed(cache) -> torch.Tensor:
    """The cache's prompt keys in transposed blocks of eight, ``[L, 1, G, ceil(P / 8), hd, 8]``, made once per cache.

    The native step computes all rows' scores against the shared prompt together, eight keys to a
    vector: in this layout those eight keys' feature c are contiguous, and each block of eight keys
    is one contiguous run of memory. Padding keys are zeros (and never scored).
    """
    if cache.prompt_keys_t is None:
        k = cache.prefix_k  # [L, 1, G, P, hd]
        L, _, G, P, hd = k.shape
        pad = -P % 8
        if pad:
            k = torch.nn.functional.pad(k, (0, 0, 0, pad))
        cache.prompt_keys_t = k.view(L, 1, G, (P + pad) // 8, 8, hd).transpose(-1, -2).contiguous()
    return cache.prompt_keys_t


def _prompt_pairs(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache's prompt keys ``[L, 1, G, ceil(P / 16), hd / 2, 16, 2]`` and values ``[L, 1, G, 16 ceil(P / 32), hd, 2]``
    paired for bf16 dot products, made once per cache.

    A bf16 dot product multiplies adjacent pairs and sums each pair into one float32 lane. For the
    scores the pairs run along the features (sixteen keys' features c and c + 1 make one vector),
    for the weighted values along the keys (two keys' feature c side by side). Padding is zeros.
    """
    if cache.prompt_pairs is None:
        k, v = cache.prefix_k, cache.prefix_v  # [L, 1, G, P, hd]
        L, _, G, P, hd = k.shape
        k = torch.nn.functional.pad(k, (0, 0, 0, -P % 16))
        kp = k.reshape(L, 1, G, -1, 16, hd // 2, 2).transpose(4, 5).contiguous()
        v = torch.nn.functional.pad(v, (0, 0, 0, -P % 32))  # whole chunks of 32 keys for the AMX tiles
        vp = v.reshape(L, 1, G, -1, 2, hd).transpose(4, 5).contiguous()
        cache.prompt_pairs = (kp, vp)
    return cache.prompt_pairs


def build(model: "Transformer") -> NativeStep | None:  # noqa: F821
    """The native step for ``model``, or None where it cannot run (no kernels, weights not in blocks)."""
    ext = kernels.compiled()
    if ext is None or not hasattr(ext, "Model") or not NativeStep.supports(model):
        return None
    return NativeStep(model, ext)
