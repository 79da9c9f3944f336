"""latts' own CPU kernels (AVX2, fp32) for what a small-batch decode step spends its time on.

- **Block-quantized matmuls.** A small-batch step is bound by reading weights, and the default
  model's GGUF stores its layers as Q4_1 and its embedding (the tied lm_head) as Q8_0 blocks of 32.
  torch's CPU int4 kernel reads the 4-bit layers but only with bf16 activations (≈ 3e-3 relative
  error per projection), and torch has no kernel for 8-bit blocks with per-block scales, so the
  lm_head was read as 113 MB of fp32 a step. ``q4_linear``/``q8_linear`` multiply fp32 activations
  by the blocks as stored: the products are exact, only the order of the sums differs from a dense
  fp32 matmul of the de-quantized weights.
- **RMS norm and one branch's attention.** At B = 1 these are tiny, and torch's ops for them cost
  15-90 µs a call here, mostly dispatch and set-up (``rms_norm``, ``attend``).

The extension (``cpu.cpp``) is compiled once per machine and torch version with torch's C++
extension builder (about a minute on 2 cores; cached under ``~/.cache/latts/kernels``). Where it
cannot be built (no C++ compiler, no AVX2/FMA/F16C, or ``LATTS_NO_KERNELS=1``), :func:`compiled`
returns None and the engine keeps torch's ops.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from latts.paths import cache_dir

log = logging.getLogger(__name__)

BLOCK = 32
_SOURCE = Path(__file__).with_name("cpu.cpp")


def _cpu_has_avx2() -> bool:
    """Whether torch's CPU capability includes AVX2 (which implies FMA and F16C on every x86 CPU that has it)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@functools.cache
def compiled() -> ModuleType | None:
    """The compiled kernels, or None where they cannot be built or run here."""
    if os.environ.get("LATTS_NO_KERNELS") == "1" or not _cpu_has_avx2():
        return None
    from torch.utils import cpp_extension

    venv_bin = str(Path(sys.executable).parent)  # the ``ninja`` wheel's binary, when not on PATH
    if shutil.which("ninja") is None and shutil.which("ninja", path=venv_bin):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    build = cache_dir("kernels", f"torch-{torch.__version__}")
    try:
        build.mkdir(parents=True, exist_ok=True)
        if not any(build.glob("*.so")):
            log.warning("building latts' CPU kernels (once per machine, about a minute)")
        return cpp_extension.load(
            name="latts_cpu_kernels",
            sources=[str(_SOURCE)],
            build_directory=str(build),
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as exc:  # no compiler, no ninja, a failed build: torch's kernels still work
        log.warning("latts' CPU kernels unavailable, using torch's (%s: %s)", type(exc).__name__, exc)
        return None


def _blocks(w: torch.Tensor) -> torch.Tensor | None:
    """``w`` ``[out, in]`` as fp32 blocks ``[out, in / 32, 32]``, or None if ``in`` is not a multiple of 32."""
    out_f, in_f = w.shape
    return None if in_f % BLOCK else w.detach().float().reshape(out_f, in_f // BLOCK, BLOCK)


def pack_q4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(qs, d, m)`` for the q4 kernel if ``w`` is exactly ``d * q + m`` per block (q in 0..15, fp16 d and m), else None.

    Exactly means bit for bit what GGUF's Q4_0/Q4_1 de-quantization produces (``fp32(d) * q + fp32(m)``).
    """
    blocks = _blocks(w)
    if blocks is None:
        return None
    lo, hi = blocks.amin(-1), blocks.amax(-1)
    d, m = ((hi - lo) / 15).half(), lo.half()
    q = _levels(blocks - m.float()[..., None], d).clamp(0, 15)
    if not torch.equal(d.float()[..., None] * q + m.float()[..., None], blocks):
        return None
    q = q.to(torch.uint8)
    qs = (q[..., :16] | (q[..., 16:] << 4)).reshape(w.shape[0], -1).contiguous()
    return qs, d.view(torch.int16).contiguous(), m.view(torch.int16).contiguous()


def pack_q8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(qs, d)`` for the q8 kernel if ``w`` is exactly ``d * q`` per block (q in -128..127, fp16 d), else None.

    Exactly means bit for bit what GGUF's Q8_0 de-quantization produces (``fp32(d) * q``).
    """
    blocks = _blocks(w)
    if blocks is None:
        return None
    d = (blocks.abs().amax(-1) / 127).half()
    q = _levels(blocks, d).clamp(-128, 127)
    if not torch.equal(d.float()[..., None] * q, blocks):
        return None
    return q.to(torch.int8).reshape(w.shape[0], -1).contiguous(), d.view(torch.int16).contiguous()


def _levels(values: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``values / d`` rounded per block (0 where a block's scale is 0)."""
    scale = d.float()[..., None]
    return torch.where(scale > 0, values / scale.clamp(min=torch.finfo(torch.float16).tiny), 0).round()
