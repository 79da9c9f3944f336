"""Paths of llama.cpp that crash on some CPUs, and how latts steers around them.

A llama-cpp-python built natively (``pip install 'latts[llamacpp]'`` or ``make llamacpp`` compile llama.cpp
with ``-march=native``) compiles in every path the build machine's CPU has. One of them is broken:

- **AMX matmul** (Intel Sapphire Rapids and later). llama.cpp 0.3.36 puts the weights it can into its
  ``AMX`` buffer type and multiplies them in ``ggml_backend_amx_mul_mat``, whose tile instructions run on
  compute threads that never loaded a tile configuration of their own; the process dies at the first batch
  of more than a few tokens (SIGILL at ``tileloadd``, or SIGSEGV at ``ldtilecfg``; measured on a 2-core Xeon
  with a 40-token prompt; upstream ggml-org/llama.cpp#26954). Loading the model with
  ``llama_model_params.use_extra_bufts = False`` keeps every weight in plain CPU buffers and runs correctly;
  it also turns off llama.cpp's weight repacking there (``REPACK``), which a build without AMX
  (``CMAKE_ARGS="-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='...'"``)
  keeps. llama.cpp's own ``llama-server`` avoids it with ``--no-repack``.

A hazard is avoided only where all three hold: the CPU has the feature, the installed llama.cpp was built
with the path (its ``llama_print_system_info``), and its llama-cpp-python release is not one that fixes it.
Everywhere else llama.cpp keeps its fastest path. When upstream fixes a hazard, its ``fixed_in`` is the one
thing to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latts.engine.models.cpu_features import cpu_flags


@dataclass(frozen=True)
class Hazard:
    """A llama.cpp code path that crashes on some CPUs, and the model parameters that keep it from running."""

    name: str  # what is avoided, as load reports say it
    why: str  # what goes wrong there
    cost: str  # what avoiding it gives up
    cpu_flag: str  # the /proc/cpuinfo flag of the CPUs where it is reachable
    build_feature: str  # how llama_print_system_info shows a build that has the path
    params: tuple[tuple[str, Any], ...]  # llama_model_params fields that avoid it
    fixed_in: str | None = None  # the first llama-cpp-python release without the bug (None: none yet)

    def affects(self, version: str, system_info: str, flags: frozenset[str]) -> bool:
        """Whether this CPU, this llama.cpp build and this release reach the broken path."""
        fixed = self.fixed_in is not None and _release(version) >= _release(self.fixed_in)
        return not fixed and self.cpu_flag in flags and self.build_feature in system_info

    def describe(self) -> str:
        """One line for load reports: what was avoided, why, and what that costs."""
        return f"avoided {self.name} ({self.why}; {self.cost})"


AMX_MATMUL = Hazard(
    name="llama.cpp's AMX matmul",
    why="it crashes on this CPU: tile instructions on threads without a tile configuration, "
        "upstream ggml-org/llama.cpp#26954",
    cost="its weight repacking is off with it",
    cpu_flag="amx_int8",
    build_feature="AMX_INT8 = 1",
    params=(("use_extra_bufts", False),),
)

HAZARDS: tuple[Hazard, ...] = (AMX_MATMUL,)


def _release(version: str) -> tuple[int, ...]:
    """``'0.3.36'`` -> ``(0, 3, 36)`` (a suffix such as ``rc1`` or ``+local`` ends the number)."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def hazards_here(lib: Any) -> tuple[Hazard, ...]:
    """The hazards the installed llama.cpp (the ``llama_cpp`` module ``lib``) would hit on this CPU."""
    info = lib.llama_print_system_info().decode(errors="replace")
    return tuple(h for h in HAZARDS if h.affects(lib.__version__, info, cpu_flags()))


def safe_model_params(lib: Any) -> Any:
    """llama.cpp's default model parameters with every hazard of this machine avoided."""
    params = _defaults(lib)()
    for hazard in hazards_here(lib):
        for field, value in hazard.params:
            setattr(params, field, value)
    return params


def guard_default_params(lib: Any) -> tuple[Hazard, ...]:
    """Make ``lib.llama_model_default_params`` return :func:`safe_model_params`, so that models loaded through
    llama-cpp-python's own classes in this process (``llama_cpp.Llama``, its OpenAI server) avoid the
    hazards too; the hazards avoided. Idempotent."""
    avoided = hazards_here(lib)
    if avoided and not getattr(lib.llama_model_default_params, "latts_guarded", False):
        defaults = _defaults(lib)

        def guarded() -> Any:
            params = defaults()
            for hazard in avoided:
                for field, value in hazard.params:
                    setattr(params, field, value)
            return params

        guarded.latts_guarded = True  # type: ignore[attr-defined]
        guarded.latts_original = defaults  # type: ignore[attr-defined]
        lib.llama_model_default_params = guarded
        lib.llama_cpp.llama_model_default_params = guarded  # what llama_cpp.Llama calls
    return avoided


def _defaults(lib: Any) -> Any:
    """llama.cpp's own ``llama_model_default_params`` (not a guarded one)."""
    fn = lib.llama_model_default_params
    return getattr(fn, "latts_original", fn)
