"""Projection weights in the fastest format for each batch shape, chosen by measurement.

Decoding is memory-bound at small batches and compute-bound at large ones, and no single weight
format wins both: a quantized weight reads the fewest bytes and wins at a few rows, a dense pre-packed
one wins once the matmul is compute-bound (the per-format timings behind this, on the machines of this
project, are in ``docs/measurement-history.md``; ``benchmarks/weight_formats.py`` measures them again).

So a fast :class:`Projection` keeps a dense weight pre-packed by oneDNN in the activation dtype
(bf16 where the CPU has native bf16, else fp32: the weight is not re-packed on every call, and
the small-M shapes that plain MKL handles badly stay fast) and, where it is **exact**, a quantized
copy used up to :attr:`Projection.quant_max_rows` rows. The crossover moves by a factor of 4 between
CPUs and kernels, so :func:`tune_quant_rows` measures it at load (cached per CPU).

Weights that came from a GGUF's Q4_0/Q4_1 (or Q8_0) tensors are ``d * q + m`` (``d * q``) per block
of 32, which the blocks represent without loss (checked bit for bit per tensor; anything else keeps
the dense path only). They run through latts' own AVX2 kernels (:mod:`latts.engine.models.kernels`: fp32
activations, as exact as the dense fp32 matmul, and the 8-bit lm_head too) or, where those cannot be
built, torch's int4 kernel (bf16 activations, 4-bit tensors only). The reference format
(``fast=False``) is plain ``F.linear`` in the activation dtype, bit-for-bit what HF computes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from latts.engine.models import kernels

INT4_GROUP = 32
DEFAULT_QUANT_MAX_ROWS = 4  # until measured: quantized wins below 4-8 rows on every CPU measured so far
TUNE_ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
_EXACT_RTOL = 1e-5
_int4_mm = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)


def can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pre-pack weights of ``dtype`` here (bf16 needs native bf16: AVX512-BF16 or AMX)."""
    mkldnn = torch.ops.mkldnn
    if not (hasattr(mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()):
        return False
    if dtype == torch.bfloat16:
        return bool(mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def can_int4() -> bool:
    """Whether this torch has the CPU int4 weight-only matmul."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


def exact_int4(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(packed, scales_and_zeros)`` if ``w`` ``[out, in]`` is exactly 4-bit per group of ``group``, else None."""
    out_f, in_f = w.shape
    if in_f % group or out_f % 8:
        return None
    w = w.float()
    blocks = w.view(out_f, in_f // group, group)
    lo, hi = blocks.amin(-1), blocks.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-30)
    q = ((blocks - lo[..., None]) / scale[..., None]).round().clamp(0, 15)
    if ((q * scale[..., None] + lo[..., None]) - blocks).abs().max() > _EXACT_RTOL * w.abs().max():
        return None
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).view(out_f, in_f), 8)
    # the kernel computes (q - 8) * scale + zero, so zero = lo + 8 * scale
    scales_zeros = torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous()
    return packed, scales_zeros.to(torch.bfloat16)


def int4_linear(x: torch.Tensor, int4: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``x`` ``[rows, in]`` times the weight ``exact_int4`` packed, through torch's int4 kernel (bf16 in and out)."""
    packed, scales_zeros = int4
    return _int4_mm(x.to(torch.bfloat16), packed, INT4_GROUP, scales_zeros)


class Projection:
    """``x @ W.T (+ b)`` with ``W`` held in the fastest formats for this CPU (``fast``) or as plain dense.

    A plain callable rather than an ``nn.Module``: it is called 121 times per decode step, and the
    module call machinery alone cost ≈ 1.5 ms of a ≈ 40 ms step at B=1 here. Nothing trains it.

    With ``fast``, a weight that is exactly block-quantized (a GGUF's Q4_0/Q4_1 or Q8_0 tensor) is
    also kept as its blocks and read through latts' kernels (fp32 activations,
    :mod:`latts.engine.models.kernels`) or, where those cannot be built, torch's int4 kernel (bf16
    activations) for forwards of up to :attr:`quant_max_rows` rows.

    Args:
        weight: ``[out, in]`` (any float dtype; kept in ``dtype``).
        bias: ``[out]`` or None.
        dtype: the activation dtype: inputs arrive and outputs leave in it.
        fast: pre-pack the dense weight for oneDNN and keep an exact quantized copy for small row
            counts; False keeps the reference ``F.linear`` path only.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, fast: bool = True) -> None:
        self.out_features, self.in_features = weight.shape
        self.packed = fast and can_pack(dtype)
        dense = weight.detach().to(dtype).contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(dense, 16) if self.packed else dense
        self.bias = bias.detach().to(dtype) if bias is not None else None
        # quant_kind: 'q4' / 'q8' (latts' kernels, fp32 activations), 'int4' (torch's, bf16 activations)
        self.quant_kind, self.quant, self.blocks = _quantized(weight) if fast else (None, None, None)
        self.quant_max_rows = DEFAULT_QUANT_MAX_ROWS if self.quant is not None else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` ``[..., in]`` to ``[..., out]``."""
        if x.numel() <= self.quant_max_rows * self.in_features:
            return self.forward_quant(x)
        return self.forward_dense(x)

    def native(self, x: torch.Tensor) -> torch.Tensor:
        """Project a 2-D ``x`` ``[rows, in]``, the output left in the kernel's dtype (bf16 from torch's int4).

        For callers that feed the result into an op that upcasts anyway (a residual add, rotary
        embeddings): the same values as :meth:`__call__`, one conversion fewer.
        """
        if x.shape[0] > self.quant_max_rows:
            return self.forward_dense(x)  # bias included
        return self._quant_2d(x)

    def _quant_2d(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized kernel on ``[rows, in]``, output in the kernel's dtype (or the bias's, with a bias)."""
        y = self.quant(x)
        return y + self.bias if self.bias is not None else y

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense weight: oneDNN pre-packed when ``packed``, else plain ``F.linear``."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def forward_quant(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized copy (``x``'s dtype in and out); needs ``self.quant``."""
        y = self._quant_2d(x.reshape(-1, self.in_features))
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


def _quantized(
    weight: torch.Tensor,
) -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor] | None, kernels.Blocks | None]:
    """``(kind, x2d -> x2d @ weight.T, blocks)`` through an exact block-quantized copy of ``weight``; Nones if none.

    latts' own kernels first (fp32 activations: as exact as the dense fp32 matmul; the blocks are
    also what the native decode step reads); else torch's int4 kernel, whose bf16 activations cost
    ≈ 3e-3 relative error.
    """
    ext = kernels.compiled()
    if ext is not None:  # fp32 inside; x's dtype out
        if (q4 := kernels.pack_q4(weight)) is not None:
            return "q4", lambda x: ext.q4_linear(x.float(), *q4).to(x.dtype), kernels.Blocks("q4", *q4)
        if (q8 := kernels.pack_q8(weight)) is not None:
            return "q8", lambda x: ext.q8_linear(x.float(), *q8).to(x.dtype), kernels.Blocks("q8", *q8, None)
    if can_int4() and (int4 := exact_int4(weight)) is not None:
        return "int4", lambda x: int4_linear(x, int4), None  # bf16 out
    return None, None, None


def tune_quant_rows(projections: Sequence[Projection], rows: Sequence[int] = TUNE_ROWS, repeats: int = 5) -> int:
    """Measure up to how many rows the quantized copies beat the dense path on ``projections``; set and return it.

    Times one pass over all the projections per format and row count (median of ``repeats``, the two
    formats interleaved so machine drift hits both), and takes the largest row count below the
    first one where dense wins. 0 means the quantized copies never pay here.
    """
    projs = [p for p in projections if p.quant is not None]
    if not projs:
        return 0
    dtype = projs[0].weight.dtype
    inputs = {p.in_features: None for p in projs}
    best = 0
    for m in rows:
        for f in inputs:
            inputs[f] = torch.randn(m, f).to(dtype)
        quant_t, dense_t = [], []
        with torch.inference_mode():
            for p in projs:  # warm both paths at this shape
                p.forward_quant(inputs[p.in_features])
                p.forward_dense(inputs[p.in_features])
            for _ in range(repeats):
                t0 = time.perf_counter()
                for p in projs:
                    p.forward_quant(inputs[p.in_features])
                t1 = time.perf_counter()
                for p in projs:
                    p.forward_dense(inputs[p.in_features])
                t2 = time.perf_counter()
                quant_t.append(t1 - t0)
                dense_t.append(t2 - t1)
        if statistics.median(quant_t) >= statistics.median(dense_t):
            break
        best = m
    set_quant_rows(projections, best)
    return best


def set_quant_rows(projections: Sequence[Projection], max_rows: int) -> None:
    """Use the quantized copies up to ``max_rows`` rows on every projection that has one."""
    for p in projections:
        if p.quant is not None:
            p.quant_max_rows = max_rows



def quant_formats(projections: Sequence[Projection]) -> str:
    """The quantized formats in use among ``projections``, for reports and cache keys: e.g. ``q4+q8``, ``int4``."""
    return "+".join(sorted({p.quant_kind for p in projections if p.quant_kind}))
