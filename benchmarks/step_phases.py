"""Where a native decode step's time goes: milliseconds per phase for B rows over a shared prompt.

The native step (``engine/models/kernels/step.cpp``) runs the layer stack in phases separated by barriers;
with its phase clock on, the first thread stamps the end of each phase, so a phase's time includes
the wait for the slower thread. For each B a prompt of ``--context`` tokens is prefilled once, then
B rows decode greedily in lock-step (``--warmup`` untimed steps, ``--steps`` timed); the table gives
ms per step in each phase, summed over the layers, and the whole step as Python sees it.

Against this machine's ceilings (``benchmarks/limits.py``: measured here unless ``--limits`` names its JSON):
each B's multiply-adds per second (the projections' and the lm_head's int8 work, T x the model's parameters
in blocks) as a fraction of the two threads' VNNI and AMX peaks, and the bytes per second it reads (the
weight blocks once, the shared prompt's K/V once per layer) as a fraction of the read bandwidth; "python" is
the step as Python sees it less the phases.

The last lines are the cost curve's targets (a B=4 step <= 1.4x a B=1 step, B=8 <= 2x,
at context 512), measured here without llama.cpp in the process; exit 1 when one is missed, 2 when
the native step does not run here (no kernels, or weights not in blocks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latts.engine.loading.loader import DEFAULT_MODEL, load
from latts.engine.models.native import PHASES

TARGETS = {4: 1.4, 8: 2.0}  # B: the most a B-row step may cost, in B=1 steps


def prompt_ids(n: int) -> list[int]:
    """A deterministic prompt of n ordinary token ids."""
    g = torch.Generator().manual_seed(21)
    return torch.randint(100, 40000, (n,), generator=g).tolist()


def measure(model, native, context: int, B: int, warmup: int, steps: int) -> tuple[float, dict[str, float]]:
    """(ms per step, ms per step in each phase) of B greedy rows after a shared ``context``-token prompt."""
    cache = model.new_cache(B, context, warmup + steps + 1)
    logits = model.prefill(torch.tensor([prompt_ids(context)]), cache)
    tokens = logits[0].float().topk(B).indices[:, None]  # row b starts from the b-th likeliest token
    start = torch.full((B,), context)
    for i in range(warmup):
        tokens = model.decode(tokens, start + i, cache)[:, -1].argmax(-1, keepdim=True)
    native.time_phases(True)
    native.phase_seconds()
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        tokens = model.decode(tokens, start + i, cache)[:, -1].argmax(-1, keepdim=True)
    total = (time.perf_counter() - t) / steps * 1e3
    native.time_phases(False)
    return total, {k: v / steps * 1e3 for k, v in native.phase_seconds().items()}


def step_work(model, context: int) -> tuple[float, float]:
    """(int8 multiply-adds per token, bytes a step reads once whatever its rows: weight blocks and the prompt's K/V)."""
    macs = sum(p.in_features * p.out_features for p in model.projections())
    weights = sum(t.numel() * t.element_size() for p in model.projections()
                  for t in (p.blocks.qs, p.blocks.d, p.blocks.m) if t is not None)
    s = model.shape
    kv = 2 * s.n_layers * s.n_kv_heads * context * s.head_dim * model.dtype.itemsize
    return float(macs), float(weights + kv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all B; each cell is the median")
    ap.add_argument("--limits", help="limits.py --json output (default: measure the limits now)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    loaded = load(args.model, "auto")
    model, native = loaded.model, getattr(loaded.model, "native", None)
    if native is None:
        print(f"the native step does not run for {loaded.name} here ({loaded.weights})")
        return 2
    print(f"{loaded.name}: {loaded.weights}, {torch.get_num_threads()} threads, context {args.context}")
    runs: dict[int, list[tuple[float, dict[str, float]]]] = {B: [] for B in batches}
    for _ in range(args.repeats):  # rounds over every B, so that drifts of the machine hit all of them
        for B in batches:
            runs[B].append(measure(model, native, args.context, B, args.warmup, args.steps))

    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    rows = {B: (median([t for t, _ in r]), {p: median([ph[p] for _, ph in r]) for p in PHASES}) for B, r in runs.items()}
    print("\n| phase | " + " | ".join(f"B={B} ms" for B in batches) + " |")
    print("| --- | " + " | ".join("---" for _ in batches) + " |")
    for p in PHASES:
        print(f"| {p} | " + " | ".join(f"{rows[B][1][p]:.2f}" for B in batches) + " |")
    print("| (phases) | " + " | ".join(f"{sum(rows[B][1].values()):.2f}" for B in batches) + " |")
    print("| python (step less phases) | " + " | ".join(f"{rows[B][0] - sum(rows[B][1].values()):.2f}" for B in batches) + " |")
    print("| step, as Python sees it | " + " | ".join(f"{rows[B][0]:.2f}" for B in batches) + " |")
    print_fractions(model, args, batches, {B: rows[B][0] for B in batches})
    missed = 0
    if 1 in rows:
        print()
        for B, most in TARGETS.items():
            if B in rows:
                ratio = rows[B][0] / rows[1][0]
                ok = ratio <= most
                missed += not ok
                print(f"step B={B} / B=1: {ratio:.2f} (target <= {most}) {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


def print_fractions(model, args: argparse.Namespace, batches: list[int], step_ms: dict[int, float]) -> None:
    """Each B's achieved multiply-adds and bytes per second against the machine's measured ceilings."""
    if args.limits:
        limits = json.loads(Path(args.limits).read_text())
    else:
        from limits import measure as measure_limits

        limits = measure_limits()
    top = limits["threads"][str(max(int(t) for t in limits["threads"]))]
    macs, once = step_work(model, args.context)
    print(f"\nceilings ({max(int(t) for t in limits['threads'])} threads): VNNI {top['vnni_gmacs']:.0f} GMAC/s, "
          f"AMX {top['amx_gmacs']:.0f} GMAC/s, AVX2 {top['avx2_gmacs']:.0f} GMAC/s, read {top['read_gbs']:.1f} GB/s")
    print("\n| B | step ms | GMAC/s | of VNNI peak | of AMX peak | of AVX2 peak | GB/s read | of bandwidth |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for B in batches:
        sec = step_ms[B] / 1e3
        rate = B * macs / sec / 1e9
        amx = f"{rate / top['amx_gmacs']:.0%}" if top["amx_gmacs"] else "-"
        vnni = f"{rate / top['vnni_gmacs']:.0%}" if top["vnni_gmacs"] else "-"
        print(f"| {B} | {step_ms[B]:.2f} | {rate:.0f} | {vnni} | {amx} | {rate / top['avx2_gmacs']:.0%} | "
              f"{once / sec / 1e9:.1f} | {once / sec / 1e9 / top['read_gbs']:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
