"""How much slower the ``hf`` engine (transformers' own forward and cache, the fallback for architectures latts'
torch engine does not have) is than the torch engine, on the default model through latts' Engine.

Per B in --batches: decode tokens/s summed over rows (a fixed --tokens per row, EOS ignored, prefill
excluded: ``Generation.decode_s``), median of --repeats, for

- ``torch auto``: the torch engine as ``--dtype auto`` loads it (latts' kernels / native step where they run);
- ``torch fp32``: the torch engine's reference path (plain torch ops, float32);
- ``hf fp32``: the hf engine, float32 (what the fallback runs by default on a CPU without native bf16).

The ratio column is torch auto / hf. Both engines also decode greedily once and must agree with each other
token for token on the first 16 tokens at B=1 (the same fp32 weights; exit 1 otherwise). There is no speed
target: the fallback exists to run what nothing else here runs. Rows go to benchmarks/results/hf_engine.jsonl.
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
from latts.engine.loading.loader import DEFAULT_MODEL, load
from latts.engine.loading.machine import cpu_name
from latts.request import GenerateRequest

PROMPT = "Explain step by step how to compute 17 * 23, then check the result another way."


def tokens_per_s(engine: Engine, branches: int, tokens: int, repeats: int) -> float:
    """Median decode tokens/s (all rows) of ``repeats`` fixed-length sampled runs."""
    rates = []
    for seed in range(repeats):
        g = engine.generate(GenerateRequest(PROMPT, branches=branches, max_new_tokens=tokens, ignore_eos=True,
                                            sampling=SamplingParams(temperature=0.7, seed=seed)))
        rates.append(sum(b.n_tokens - 1 for b in g.branches) / g.decode_s)  # the first token is the prefill's
    return statistics.median(rates)


def greedy(engine: Engine, n: int) -> list[int]:
    return engine.generate(GenerateRequest(PROMPT, branches=1, max_new_tokens=n, sampling=None,
                                           ignore_eos=True)).branches[0].token_ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    setups = {"torch auto": ("auto", "torch"), "torch fp32": ("float32", "torch"), "hf fp32": ("float32", "hf")}
    engines = {}
    for name, (dtype, kind) in setups.items():
        loaded = load(args.model, dtype, engine=kind)
        engines[name] = Engine(loaded)
        engines[name].warmup((1, max(batches)))
        print(f"{name}: {loaded.report}", file=sys.stderr)
    ok = greedy(engines["torch fp32"], 16) == greedy(engines["hf fp32"], 16)
    rows = []
    for b in batches:
        rate = {name: tokens_per_s(e, b, args.tokens, args.repeats) for name, e in engines.items()}
        rows.append({"B": b, **{k: round(v, 1) for k, v in rate.items()},
                     "torch auto / hf": round(rate["torch auto"] / rate["hf fp32"], 2),
                     "torch fp32 / hf": round(rate["torch fp32"] / rate["hf fp32"], 2)})
    cols = list(rows[0])
    print(f"\ndecode tokens/s (all rows), {args.model}, {args.tokens} tokens per row, {cpu_name()}, "
          f"{torch.get_num_threads()} threads")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"greedy B=1, first 16 tokens: torch fp32 and hf fp32 {'agree' if ok else 'DIFFER'}")
    out = Path(__file__).parent / "results" / "hf_engine.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model, "cpu": cpu_name(),
                            "threads": torch.get_num_threads(), "tokens": args.tokens, "rows": rows,
                            "greedy_agree": ok}) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
