"""Does the fitted latency model predict configurations it was not fitted on?

Profiles this machine on the default grid (B 1..32, k 1..8, contexts 256 and 1024), fits the
latency model, then measures held-out forwards (B = 3, 12, 24; k = 3, 4, 6; contexts 512 and 1536)
and whole runs through ``Engine.generate`` (with and without speculation, α measured by the run
itself) and compares. Exits 1 unless the median relative error on the held-out forwards and on the
whole runs is <= 15%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from latts.config import SamplingParams
from latts.engine.drafters import NGramDrafter
from latts.engine.engine import Engine
from latts.latency_model import StepSample
from latts.models import DEFAULT_MODEL, load
from latts.profiler import measure_step, profile

TARGET = 0.15
HELD_OUT = [(b, k, c) for b in (3, 12, 24) for k in (1, 3, 4, 6) for c in (512, 1536)]
RUNS = [  # (B, γ, new tokens, context)
    (1, 0, 128, 300), (12, 0, 128, 300), (4, 3, 128, 600), (12, 3, 96, 300), (24, 0, 64, 1200),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--save", type=Path, help="also write the profile here")
    args = ap.parse_args()
    engine = Engine(load(DEFAULT_MODEL, args.dtype))
    prof = profile(engine, progress=lambda msg: print("  " + msg, flush=True))
    if args.save:
        prof.save(args.save)
    model = prof.fit()
    print(f"fitted on {len(prof.steps)} forwards, {len(prof.prefills)} prefills: {model.to_dict()}")
    train_err = model.median_error(prof.steps)

    held = [StepSample(b, k, c, measure_step(engine, b, k, c)) for b, k, c in HELD_OUT]
    print()
    print("| held-out forward | measured ms | predicted ms | error |")
    print("| --- | --- | --- | --- |")
    for s in held:
        pred = model.step(s.branches, s.k, s.context)
        print(f"| B={s.branches} k={s.k} ctx={s.context} | {s.seconds * 1e3:.1f} | {pred * 1e3:.1f} | "
              f"{abs(pred - s.seconds) / s.seconds:.1%} |")
    step_err = model.median_error(held)

    print()
    print("| whole run | α | measured s | predicted s | error |")
    print("| --- | --- | --- | --- | --- |")
    run_errs = []
    for b, gamma, tokens, ctx in RUNS:
        ids = torch.randint(100, 20000, (ctx,), generator=torch.Generator().manual_seed(ctx)).tolist()
        gen = engine.generate(ids, branches=b, max_new_tokens=tokens, sampling=SamplingParams(temperature=0.0),
                              ignore_eos=True, gamma=gamma, drafter=NGramDrafter() if gamma else None)
        alpha = gen.spec.acceptance_rate if gen.spec else 0.0
        # the run decodes `tokens` per row and forces no answer: predict exactly that
        per_round = gen.spec.mean_accepted_length if gen.spec else None
        pred = model.predict(b, gamma, tokens - 1, alpha=alpha, prompt_len=ctx, answer_tokens=0,
                             answer_prompt_tokens=0, tokens_per_round=per_round)
        err = abs(pred - gen.latency_s) / gen.latency_s
        run_errs.append(err)
        print(f"| B={b} γ={gamma} {tokens} tokens ctx={ctx} | {alpha:.2f} | {gen.latency_s:.2f} | {pred:.2f} | {err:.1%} |")
    run_err = statistics.median(run_errs)

    print()
    print(f"median error: fit set {train_err:.1%}, held-out forwards {step_err:.1%}, whole runs {run_err:.1%}")
    ok = step_err <= TARGET and run_err <= TARGET
    print(f"target median held-out error <= {TARGET:.0%}: {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
