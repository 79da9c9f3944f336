"""This machine's ceilings for a decode step: int8 multiply-adds per second and read bandwidth, on 1 and 2 threads.

Plain loops (``benchmarks/limits.cpp``, built once with torch's extension builder and ``-march=native``): AVX2
``vpmaddubsw`` (every x86 machine here), VNNI ``vpdpbusd`` (AVX-512 or AVX-VNNI), AMX ``tdpbssd`` (Sapphire
Rapids and later; 0 elsewhere), and reading a buffer far larger than the caches. ``step_phases.py`` prints a
step's achieved multiply-adds and bytes per second as fractions of these; ``--json`` writes them for it.

    python benchmarks/limits.py                # the table
    python benchmarks/limits.py --json limits.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from torch.utils import cpp_extension

from latts.engine.loading.machine import cpu_name
from latts.paths import cache_dir

HERE = Path(__file__).parent


@functools.cache
def built():
    """The compiled loops (cached per source and machine under latts' cache)."""
    build = cache_dir("bench-limits")
    build.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(name="latts_limits", sources=[str(HERE / "limits.cpp")], build_directory=str(build),
                              extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])


def measure(threads: tuple[int, ...] = (1, 2), bandwidth_bytes: int = 1 << 31) -> dict:
    """Each limit on each thread count: the best of three runs (GMAC/s, GB/s)."""
    ext = built()
    out = {"cpu": cpu_name(), "threads": {}}
    for t in threads:
        row = {}
        for name, fn, iters in (("avx2", ext.avx2_macs, 20_000_000), ("vnni", ext.vnni_macs, 20_000_000),
                                ("amx", ext.amx_macs, 2_000_000)):
            row[f"{name}_gmacs"] = max(fn(t, iters) for _ in range(3)) / 1e9
        row["read_gbs"] = ext.read_bandwidth(t, bandwidth_bytes, 3) / 1e9
        out["threads"][str(t)] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the limits here")
    args = ap.parse_args()
    limits = measure()
    print(f"machine: {limits['cpu']}")
    print("\n| threads | AVX2 maddubs GMAC/s | VNNI dpbusd GMAC/s | AMX tdpbssd GMAC/s | read GB/s |")
    print("| --- | --- | --- | --- | --- |")
    for t, row in limits["threads"].items():
        amx = f"{row['amx_gmacs']:.0f}" if row["amx_gmacs"] else "- (no AMX)"
        vnni = f"{row['vnni_gmacs']:.0f}" if row["vnni_gmacs"] else "- (no VNNI)"
        print(f"| {t} | {row['avx2_gmacs']:.0f} | {vnni} | {amx} | {row['read_gbs']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(limits, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
