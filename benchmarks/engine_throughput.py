"""Decode throughput of the latts engine against HF ``generate`` (and llama.cpp if installed).

For every B in --batches and every context in --contexts (prompt length in tokens), measures the
median decode step (prefill excluded; median over steps, then over repeats, the same statistic for
every engine) and tokens/s summed over rows, all in one process with the
same threads, plus a bf16 matmul micro-benchmark giving this machine's compute ceiling and the
peak memory of latts at the largest B and context.

Targets (exit 1 when one is missed): latts B=1 >= 3x HF B=1; latts B=16 >= 2x HF B=16 (both at
the first context); at its best B, latts reaches >= 20% of the compute ceiling
(tokens/s x 2 x parameters / matmul FLOP/s), whatever dtype it runs in. The ceiling is the bf16
matmul's where that is the faster one (native bf16); on CPUs without native bf16, emulated bf16
runs at a fraction of a GFLOP/s, so the fp32 matmul is the honest ceiling there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from latts.config import SamplingParams
from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, hf_folder, load, resolve
from latts.request import GenerateRequest

SAMPLING = SamplingParams(temperature=0.7, seed=0)


def matmul_gflops(dtype: torch.dtype, n_max: int = 2048, repeats: int = 5) -> float:
    """Dense n^3 matmul throughput in GFLOP/s (median), n up to ``n_max``.

    n doubles from 256 until one product takes 0.2 s: where ``dtype`` has no native kernels
    (bf16 on an AVX2-only CPU runs at well under 1 GFLOP/s) a 2048^3 product would take a minute.
    """
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t = time.perf_counter()
        torch.mm(a, b)
        if n >= n_max or time.perf_counter() - t >= 0.2:
            break
        n *= 2
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def prompt_ids(n: int) -> list[int]:
    """A deterministic prompt of n ordinary token ids."""
    g = torch.Generator().manual_seed(n)
    return torch.randint(100, 40000, (n,), generator=g).tolist()


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_gib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def peak_rss_gib() -> float:
    """Peak resident memory since the last reset, GiB."""
    return _status_gib("VmHWM")


def latts_step_ms(engine: Engine, ctx: int, B: int, steps: int) -> float:
    """Median decode-step time of one latts run (prefill excluded), the same statistic as :func:`hf_step_ms`."""
    gen = engine.generate(GenerateRequest(prompt_ids(ctx), branches=B, max_new_tokens=steps + 1,
                                          sampling=SAMPLING, ignore_eos=True))
    times = gen.branches[0].token_times  # every row gets a token per step: row 0's stamps are the steps'
    return statistics.median(b - a for a, b in zip(times, times[1:])) * 1e3


class _StepClock:
    """A logits processor that timestamps every HF decode step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def hf_step_ms(hf, ctx: int, B: int, steps: int) -> float:
    """Median decode-step time of HF ``generate`` with num_return_sequences=B (prefill excluded)."""
    from transformers import LogitsProcessorList

    clock = _StepClock()
    ids = torch.tensor([prompt_ids(ctx)])
    with torch.inference_mode():
        hf.generate(
            ids,
            do_sample=True,
            temperature=0.7,
            num_return_sequences=B,
            max_new_tokens=steps + 1,
            min_new_tokens=steps + 1,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([clock]),
        )
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return statistics.median(gaps) * 1e3


_LLAMACPP_PROBE = """
import json, statistics, sys, time
import llama_cpp
gguf, ctx, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(gguf, n_ctx=ctx + steps + 16, n_batch=512, n_threads=threads, verbose=False)
ids = json.loads(sys.stdin.read())
llm.eval(ids)
times = []
for i in range(steps):
    t = time.perf_counter()
    llm.eval([100 + i])
    times.append(time.perf_counter() - t)
print(json.dumps(statistics.median(times) * 1e3))
"""


def llamacpp_step_ms(gguf: str, ctx: int, steps: int) -> float | None:
    """Median decode step of llama.cpp (llama-cpp-python, B=1) on the same GGUF, in a subprocess.

    None when llama_cpp is not installed (it is not a latts dependency). Its high-level API decodes
    one sequence, so only B=1 is measured; a crash in the native library cannot take this script down.
    """
    import importlib.util
    import subprocess

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    proc = subprocess.run(
        [sys.executable, "-c", _LLAMACPP_PROBE, gguf, str(ctx), str(steps), str(torch.get_num_threads())],
        input=json.dumps(prompt_ids(ctx)), capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        print(f"  llama.cpp ctx={ctx} failed: {why[0]}")
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--steps", type=int, default=24, help="decode steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--hf-max-tokens", type=int, default=64 * 2048,
                    help="skip HF where B x context exceeds this (its prefill expands the prompt B times)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]

    bf16_gflops = matmul_gflops(torch.bfloat16)
    fp32_gflops = matmul_gflops(torch.float32)
    loaded = load(DEFAULT_MODEL, args.dtype)
    engine = Engine(loaded)
    warm = engine.warmup()
    n_params = loaded.model.n_params
    print(f"model {loaded.name}: {n_params / 1e6:.1f} M parameters, latts weights "
          f"{loaded.weights}, load {loaded.load_s:.1f} s (latts' kernels {loaded.kernels_s:.1f} s of it), "
          f"warm-up {warm:.1f} s, {torch.get_num_threads()} threads")
    ceiling_name, ceiling = max(("bf16", bf16_gflops), ("fp32", fp32_gflops), key=lambda c: c[1])
    print(f"matmul ceiling: bf16 {bf16_gflops:.1f} GFLOP/s, fp32 {fp32_gflops:.1f} GFLOP/s "
          f"-> compute ceiling {ceiling_name} {ceiling:.1f} GFLOP/s")

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_folder(DEFAULT_MODEL), dtype=torch.float32).eval()
    rows: dict[tuple[int, int], dict] = {}
    peak = None
    for ctx in contexts:
        for B in batches:
            last = ctx == contexts[-1] and B == batches[-1]
            if last:
                peak_rss_reset()
                before = _status_gib("VmRSS")
            # latts and HF alternate, so that drifts in machine speed (these are shared, noisy
            # machines) hit both sides of a ratio alike; each side reports its median over repeats
            with_hf = B * ctx <= args.hf_max_tokens
            repeats = args.repeats if B <= 4 else 1
            latts_runs, hf_runs = [], []
            for _ in range(repeats):
                latts_runs.append(latts_step_ms(engine, ctx, B, args.steps))
                if last and peak is None:  # before HF runs in this process
                    peak = peak_rss_gib()
                    peak_added = peak - before
                if with_hf:
                    hf_runs.append(hf_step_ms(hf, ctx, B, max(8, args.steps // 2)))
            ms = statistics.median(latts_runs)
            row = rows[(ctx, B)] = {"ctx": ctx, "B": B, "latts_ms": ms, "latts_tps": B / ms * 1e3}
            line = f"  ctx={ctx} B={B}: latts {ms:.1f} ms/step"
            if with_hf:
                hf_ms = statistics.median(hf_runs)
                row.update(hf_ms=hf_ms, hf_tps=B / hf_ms * 1e3)
                line += f", HF {hf_ms:.1f} ms/step"
            print(line, flush=True)
    del hf
    gguf = str(resolve(DEFAULT_MODEL))
    for ctx in contexts:
        ms = llamacpp_step_ms(gguf, ctx, args.steps)
        if ms is not None and (ctx, 1) in rows:
            rows[(ctx, 1)].update(llamacpp_ms=ms, llamacpp_tps=1e3 / ms)
            print(f"  llama.cpp ctx={ctx} B=1: {ms:.1f} ms/step", flush=True)

    has_cpp = any("llamacpp_ms" in r for r in rows.values())
    head = "| context | B | latts ms/step | latts tok/s | HF ms/step | HF tok/s | latts / HF |"
    head += " llama.cpp B=1 ms/step | llama.cpp tok/s |" if has_cpp else ""
    print()
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for row in rows.values():
        hf_ms = row.get("hf_ms")
        cells = [str(row["ctx"]), str(row["B"]), f"{row['latts_ms']:.1f}", f"{row['latts_tps']:.1f}",
                 f"{hf_ms:.1f}" if hf_ms else "—", f"{row['hf_tps']:.1f}" if hf_ms else "—",
                 f"{hf_ms / row['latts_ms']:.2f}x" if hf_ms else "—"]
        if has_cpp:
            cells += [f"{row['llamacpp_ms']:.1f}", f"{row['llamacpp_tps']:.1f}"] if "llamacpp_ms" in row else ["—"] * 2
        print("| " + " | ".join(cells) + " |")

    ctx0 = contexts[0]
    best = max((r for r in rows.values()), key=lambda r: r["latts_tps"])
    util = best["latts_tps"] * 2 * n_params / (ceiling * 1e9)
    print()
    print(f"best latts: B={best['B']} ctx={best['ctx']} {best['latts_tps']:.0f} tok/s = "
          f"{util:.1%} of the {ceiling_name} compute ceiling")
    if peak is not None:
        print(f"peak RSS during latts B={batches[-1]} ctx={contexts[-1]}: {peak:.2f} GiB for the process "
              f"(both models loaded), {peak_added:.2f} GiB of it added by that run (KV cache, activations)")

    failures = []
    checks = [(1, 3.0), (16, 2.0)]
    for B, need in checks:
        r = rows.get((ctx0, B))
        if r is None or "hf_ms" not in r:
            failures.append(f"B={B} ctx={ctx0} was not measured against HF")
            continue
        ratio = r["hf_ms"] / r["latts_ms"]
        status = "ok" if ratio >= need else "MISSED"
        print(f"target latts B={B} >= {need:.0f}x HF: {ratio:.2f}x {status}")
        if ratio < need:
            failures.append(f"latts B={B} is {ratio:.2f}x HF, target {need}x")
    print(f"target >= 20% of the compute ceiling ({ceiling_name}): {util:.1%} {'ok' if util >= 0.2 else 'MISSED'}")
    if util < 0.2:
        failures.append(f"best B reaches {util:.1%} of the {ceiling_name} compute ceiling, target 20%")
    if args.json:
        args.json.write_text(json.dumps({"rows": list(rows.values()), "bf16_gflops": bf16_gflops,
                                         "fp32_gflops": fp32_gflops, "peak_rss_gib": peak}, indent=2))
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
