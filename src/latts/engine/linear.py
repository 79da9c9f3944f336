"""Projection weights in the fastest format for each batch shape, measured on these CPUs.

Decoding is memory-bound at small batches and compute-bound at large ones, and no single weight
format wins both (2-core Xeon with AMX, all 30 layers' projections of SmolLM2-135M, ms):

| rows M = B x tokens | 1 | 4 | 8 | 16 | 32 |
| --- | --- | --- | --- | --- | --- |
| fp32 ``F.linear`` | 22 | 40 | 46 | 57 | 77 |
| bf16, oneDNN pre-packed | 21 | 21 | 20 | 23 | 30 |
| int4 g32 (``_weight_int4pack_mm_for_cpu``), bf16 activations | 7 | 10 | 17 | 35 | 69 |

So a :class:`Projection` keeps a dense weight (fp32, or bf16 pre-packed for oneDNN so the weight is
not re-packed on every call) and, in bf16 mode, an int4 copy used for ``M <= INT4_MAX_ROWS``.
The int4 copy is made only when it is **exact**: weights that came from a Q4_0/Q4_1 GGUF are
``d * q + m`` per block of 32 with ``q`` in 0..15, which the int4 kernel's per-group scale and zero
represent without loss (checked per tensor; anything else keeps the dense path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT4_GROUP = 32
INT4_MAX_ROWS = 8  # int4 beats pre-packed bf16 below about 8 rows (table above)
_EXACT_RTOL = 1e-5


def can_pack_bf16() -> bool:
    """Whether oneDNN can pre-pack bf16 weights here (needs native bf16: AVX512-BF16 or AMX)."""
    mkldnn = torch.ops.mkldnn
    return (
        hasattr(mkldnn, "_reorder_linear_weight")
        and torch.backends.mkldnn.is_available()
        and bool(mkldnn._is_mkldnn_bf16_supported())
    )


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


class Projection(nn.Module):
    """``x @ W.T (+ b)`` with the weight held as dense (fp32 or pre-packed bf16) and, if exact, int4."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = dtype == torch.bfloat16 and can_pack_bf16()
        dense = weight.detach().to(dtype).contiguous()
        if self.packed:
            dense = torch.ops.mkldnn._reorder_linear_weight(dense, 16)
        self.weight = nn.Parameter(dense, requires_grad=False)
        self.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False) if bias is not None else None
        q4 = exact_int4(weight) if dtype == torch.bfloat16 and can_int4() else None
        self.int4 = q4 is not None
        if q4 is not None:
            self.register_buffer("q4_weight", q4[0], persistent=False)
            self.register_buffer("q4_scales", q4[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` ``[..., in]`` to ``[..., out]``."""
        rows = x.numel() // self.in_features
        if self.int4 and rows <= INT4_MAX_ROWS:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.reshape(rows, self.in_features), self.q4_weight, INT4_GROUP, self.q4_scales
            ).view(*x.shape[:-1], self.out_features)
            return y + self.bias if self.bias is not None else y
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
