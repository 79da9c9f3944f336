"""latts' own CPU kernels for what a small-batch decode step spends its time on.

- **The native step** (``step.cpp``, ``Model.step``): a whole decode or verify step of the layer
  stack in one call (see :mod:`latts.engine.models.native`). Its projections quantize the activations to
  8-bit blocks of 32 and multiply them with the GGUF's Q4_0/Q4_1/Q8_0 weight blocks in integers
  (``simd_int8.h``: AVX-512 VNNI where the CPU has it, AVX2 elsewhere), as llama.cpp's CPU backend
  does; ``Int8Linear`` is that projection alone, for tests and measurements.
- **Exact block-quantized matmuls** (``cpu.cpp``): ``q4_linear``/``q8_linear`` multiply fp32
  activations by the blocks as stored: the products are exact, only the order of the sums differs
  from a dense fp32 matmul of the de-quantized weights. torch's path uses them where the native step
  does not run (e.g. a model whose weights are not all blocks).
- **RMS norm and one branch's attention** (``cpu.cpp``) for torch's path: at B = 1 torch's ops for
  them cost 15-90 µs a call here, mostly dispatch and set-up (``rms_norm``, ``attend``).

The extension is compiled once per build (:func:`build_id`: its sources, compile flags, CPU
features and torch version) with torch's C++ extension builder (about a minute on 2 cores; cached
under ``~/.cache/latts/kernels/<build_id>``). Where it cannot be built (no C++ compiler, no
AVX2/FMA/F16C, or ``LATTS_NO_KERNELS=1``), :func:`compiled` returns None and the engine keeps
torch's ops.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from latts.engine.models.cpu_features import cpu_flags_line
from latts.paths import cache_dir

log = logging.getLogger(__name__)

BLOCK = 32
_HERE = Path(__file__).parent
_SOURCES = (_HERE / "cpu.cpp", _HERE / "step.cpp")
_HEADERS = tuple(sorted(_HERE.glob("*.h")))
# -march=native: the integer dot products use AVX-512 VNNI where this CPU has it and AVX2 where it
# does not, chosen at compile time (the build is per machine anyway). LATTS_KERNELS_ISA=avx2 builds
# the AVX2 code on any CPU (how the tests check the path Zen 3 machines run).
_ISA_FLAGS = {"native": ("-march=native", "-mtune=native"), "avx2": ("-mavx2", "-mfma", "-mf16c")}


def _cflags() -> tuple[str, ...]:
    isa = os.environ.get("LATTS_KERNELS_ISA", "native")
    if isa not in _ISA_FLAGS:
        raise ValueError(f"LATTS_KERNELS_ISA={isa!r}: use one of {', '.join(_ISA_FLAGS)}")
    return ("-O3", *_ISA_FLAGS[isa], "-fopenmp")


def _cpu_has_avx2() -> bool:
    """Whether torch's CPU capability includes AVX2 (which implies FMA and F16C on every x86 CPU that has it)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@functools.cache
def build_id() -> str:
    """What the kernels' sources, compile flags, CPU features and torch version make of them, as a short hash.

    Cached measurements (profiles, plans, tuned row counts) record it: a different build (an edited
    kernel, another CPU) means different costs. ``torch-ops`` when latts' kernels are off here.
    """
    if not _wanted():
        return "torch-ops"
    h = hashlib.sha256()
    for path in (*_SOURCES, *_HEADERS):
        h.update(path.read_bytes())
    h.update(" ".join(_cflags()).encode())
    h.update(cpu_flags_line().encode())
    h.update(torch.__version__.encode())
    return "native-" + h.hexdigest()[:12]


def _wanted() -> bool:
    return os.environ.get("LATTS_NO_KERNELS") != "1" and _cpu_has_avx2()


def unavailable_reason() -> str | None:
    """Why :func:`compiled` has no kernels here (None when they are built, or not yet asked for): what the
    CLI tells the user, because torch's ops run the model several times slower."""
    if os.environ.get("LATTS_NO_KERNELS") == "1":
        return "turned off by LATTS_NO_KERNELS=1"
    if not _cpu_has_avx2():
        return "this CPU has no AVX2"
    return _build_error[0]


_build_error: list[str | None] = [None]  # why the last build failed (None: it did not)


@functools.cache
def compiled() -> ModuleType | None:
    """The compiled kernels, or None where they cannot be built or run here (:func:`unavailable_reason`)."""
    if not _wanted():
        return None
    from torch.utils import cpp_extension

    venv_bin = str(Path(sys.executable).parent)  # the ``ninja`` wheel's binary, when not on PATH
    if shutil.which("ninja") is None and shutil.which("ninja", path=venv_bin):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    # one folder per build: checkouts and CPUs never overwrite each other's library
    build = cache_dir("kernels", build_id())
    try:
        build.mkdir(parents=True, exist_ok=True)
        with _build_lock(build):
            if not any(build.glob("*.so")):
                log.warning("building latts' CPU kernels (once per machine, about a minute)")
            return cpp_extension.load(
                name="latts_cpu_kernels",
                sources=[str(s) for s in _SOURCES],
                extra_include_paths=[str(_HERE)],
                build_directory=str(build),
                extra_cflags=list(_cflags()),
                extra_ldflags=["-fopenmp"],
            )
    except Exception as exc:  # no compiler, no ninja, a failed build: torch's kernels still work
        _build_error[0] = f"the build failed: {_build_failure(str(exc)) or type(exc).__name__}"
        # the whole compiler output for whoever debugs it; the CLI says the reason once, in one line
        log.info("latts' CPU kernels unavailable, using torch's (%s: %s)", type(exc).__name__, exc)
        return None


def _build_failure(message: str) -> str:
    """The line of a failed build that says why: the compiler's ``error:``, a missing program, else the first."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for marker in ("error:", "not found", "No such file"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[0][:300]
    return lines[0][:300] if lines else ""


@contextlib.contextmanager
def _build_lock(build: Path) -> Iterator[None]:
    """Hold the build folder for this process: an OS lock that dies with it, unlike torch's lock file.

    torch's builder marks a build in progress with a ``lock`` file and waits while one exists; a
    process killed mid-build leaves it behind and every later load then waits forever. Under this
    lock no other latts process is building here, so a leftover ``lock`` is stale and removed.
    """
    with open(build / "latts.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Blocks(NamedTuple):
    """A weight as GGUF-style blocks of 32 along its input dimension: what the native step multiplies.

    ``kind`` 'q4': ``d * q + m`` per block, q in 0..15 packed two per byte (``qs`` ``[out, in / 2]``);
    'q8': ``d * q``, q in -128..127 (``qs`` ``[out, in]`` int8, ``m`` None). ``d``/``m`` ``[out, in / 32]``
    hold fp16 bits as int16.
    """

    kind: str
    qs: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None


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
    found = _q4_levels(blocks, ((hi - lo) / 15).half(), lo.half())  # Q4_1: m is the block's least value
    if found is None:  # Q4_0: d * (q - 8), and the value of largest magnitude is level 0, i.e. -8d
        extreme = torch.where(hi.abs() > lo.abs(), hi, lo)
        found = _q4_levels(blocks, (-extreme / 8).half(), extreme.half())
    if found is None:
        return None
    q, d, m = found
    q = q.to(torch.uint8)
    qs = (q[..., :16] | (q[..., 16:] << 4)).reshape(w.shape[0], -1).contiguous()
    return qs, d.view(torch.int16).contiguous(), m.view(torch.int16).contiguous()


def _q4_levels(
    blocks: torch.Tensor, d: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(q, d, m)`` if every block is exactly ``d * q + m`` with q in 0..15 for the given fp16 ``d``, ``m``."""
    q = _levels(blocks - m.float()[..., None], d).clamp(0, 15)
    if not torch.equal(d.float()[..., None] * q + m.float()[..., None], blocks):
        return None
    return q, d, m


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
    nonzero = scale != 0  # Q4_0's scale is negative when the block's extreme value is positive
    return torch.where(nonzero, values / torch.where(nonzero, scale, 1.0), 0).round()
