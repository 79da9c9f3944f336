"""Projection weight formats on this CPU: ms per pass over all layers' projections, per row count.

The table behind :mod:`latts.engine.models.linear`'s choice of formats, on the real default model's
weights (GGUF Q4_1 layers, Q8_0 embedding = tied lm_head). Formats: plain fp32 ``F.linear``; fp32
pre-packed by oneDNN (the engine's dense path); torch's int4 kernel (bf16 activations); latts' q4
kernel (fp32 activations); and for the lm_head alone, latts' q8 kernel against the dense fp32 one.
Each cell is the median of ``--repeats`` passes, the formats interleaved within every repeat so
machine drift hits them alike.

Targets (exit 1 when one is missed): latts' q4 kernel is at least as fast as torch's int4 at every
row count up to 8, and the q8 lm_head beats the dense fp32 one at 1 row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from latts.engine.models import kernels
from latts.engine.models.linear import Projection, can_int4, exact_int4, int4_linear
from latts.engine.models.transformer import Transformer
from latts.engine.loading.loader import DEFAULT_MODEL, hf_folder


def main() -> int:
    """Print the table; 1 if a target is missed, 2 if latts' kernels are unavailable here."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8,12,16,32")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    ext = kernels.compiled()
    if ext is None:
        print("latts' CPU kernels cannot be built here; nothing to compare")
        return 2
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_folder(DEFAULT_MODEL), dtype=torch.float32)
    # the engine's projections (q/k/v and gate/up fused), kept as plain fp32 weights
    *weights, head = [p.weight for p in Transformer(hf, torch.float32, fast=False).projections()]
    q4 = [kernels.pack_q4(w) for w in weights]
    if any(p is None for p in q4):
        print("the default model's layers are not all exact 4-bit blocks")
        return 2
    formats = {
        "fp32 F.linear": [lambda x, w=w: F.linear(x, w) for w in weights],
        "fp32 oneDNN pre-packed": [Projection(w, None, torch.float32).forward_dense for w in weights],
        "latts q4, fp32 activations": [lambda x, p=p: ext.q4_linear(x, *p) for p in q4],
    }
    if can_int4():
        formats["torch int4, bf16 activations"] = [lambda x, p=exact_int4(w): int4_linear(x, p) for w in weights]
    q8 = kernels.pack_q8(head)
    head_dense = Projection(head, None, torch.float32).forward_dense
    head_formats = {"lm_head fp32 oneDNN": [head_dense], "lm_head latts q8": [lambda x: ext.q8_linear(x, *q8)]}
    rows = [int(r) for r in args.rows.split(",")]
    table: dict[str, dict[int, float]] = {name: {} for name in [*formats, *head_formats]}
    with torch.inference_mode():
        for m in rows:
            xs = {k: torch.randn(m, k) for k in {w.shape[1] for w in weights}}
            times: dict[str, list[float]] = {name: [] for name in table}
            for rep in range(args.repeats + 1):  # the first pass warms up
                for name, fns in [*formats.items(), *head_formats.items()]:
                    t0 = time.perf_counter()
                    for fn, w in zip(fns, weights if name in formats else [head]):
                        fn(xs[w.shape[1]])
                    if rep:
                        times[name].append(time.perf_counter() - t0)
            for name in table:
                table[name][m] = 1e3 * statistics.median(times[name])
            print(f"  rows={m} done", file=sys.stderr)
    print(f"\n{len(weights)} projections of {DEFAULT_MODEL}, {torch.get_num_threads()} threads, ms per pass\n")
    print("| format | " + " | ".join(str(m) for m in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(f"{cells[m]:.1f}" for m in rows) + " |")
    failed = []
    if "torch int4, bf16 activations" in table:
        for m in (r for r in rows if r <= 8):
            ours, theirs = table["latts q4, fp32 activations"][m], table["torch int4, bf16 activations"][m]
            if ours > theirs:
                failed.append(f"q4 at {m} rows: {ours:.1f} ms > torch int4 {theirs:.1f} ms")
    if 1 in rows and table["lm_head latts q8"][1] >= table["lm_head fp32 oneDNN"][1]:
        failed.append("q8 lm_head at 1 row is not faster than the dense fp32 one")
    for f in failed:
        print("MISSED:", f)
    print("all targets met" if not failed else "FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
