"""This machine, as the engine sees it: which CPU it is, which dtype it computes fastest, which build of
latts' kernels runs, and up to how many rows its quantized weights pay (measured once per CPU and kernel
build, and cached beside the converted models)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from latts.engine.models import kernels
from latts.engine.models.cpu_features import cpu_flags
from latts.paths import cache_dir
from latts.engine.models.threads import configured_threads

log = logging.getLogger(__name__)


def default_dtype() -> torch.dtype:
    """bf16 where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), else fp32: with native bf16 its wide
    steps run about twice as fast; without, the conversions make fp32 the faster choice
    (``docs/measurement-history.md``, "Source-comment figures")."""
    return torch.bfloat16 if cpu_flags() & {"avx512_bf16", "amx_bf16"} else torch.float32


def cpu_name() -> str:
    """The CPU's model name and generation: tuned weight formats, profiles and benchmark rows hold for one CPU.

    Cloud CPUs often report only a brand ("AMD EPYC") for several generations with different
    vector units (AVX2 only vs AVX-512 with bf16), so the family/model numbers are appended.
    """
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        info = ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "model name" in fields:
        gen = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
        return f"{fields['model name']} ({', '.join(gen)})" if gen else fields["model name"]
    import platform

    return platform.processor() or platform.machine()


def engine_build(fast: bool) -> str:
    """Which code computes a model's forwards, as cached measurements record it: ``kernels.build_id()`` when a
    fast model runs on latts' kernels, ``torch-ops`` when it runs on torch's ops (the fp32 reference path,
    or kernels off or not buildable here). Measurements taken with one build do not hold for another."""
    return kernels.build_id() if fast and kernels.compiled() is not None else "torch-ops"


def tuned_quant_rows(transformer: "Transformer") -> int:  # noqa: F821 - imported lazily
    """Measure (once per CPU, torch, kernel build, weight format and layer shape; cached on disk) up to how many
    rows the quantized copies pay. A tuning of another kernel build is never reused: the build is in the key."""
    from latts.engine.models.linear import quant_formats, set_quant_rows, tune_quant_rows

    projections = transformer.projections()
    if not any(p.quant is not None for p in projections):
        return 0
    s = transformer.shape
    key = "|".join([cpu_name(), torch.__version__, engine_build(transformer.fast), str(configured_threads()),
                    str(transformer.dtype), quant_formats(projections),
                    f"{s.n_layers}x{s.hidden}x{s.n_heads}x{s.n_kv_heads}"])
    path = cache_dir("models") / "quant-rows.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        set_quant_rows(projections, int(table[key]))
        return int(table[key])
    rows = tune_quant_rows(projections)
    log.info("quantized weights pay up to %d rows here (measured)", rows)
    table[key] = rows
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the measurement next time
    return rows
