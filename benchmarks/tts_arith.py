"""Parallel test-time scaling on ``arith``: per-sample accuracy, maj@4 and maj@16 of the default model.

For each of --problems generated problems, 16 branches are sampled at temperature 0.7 in one batch
(no early stopping, so all 16 answers exist). per-sample accuracy = mean over branches; maj@k =
the majority vote of k branches (maj@4 averages the four disjoint groups of four). Exits 1 unless
per-sample accuracy is in [15%, 70%] and maj@16 - maj@1 >= 10 points (maj@1 = per-sample).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, load
from latts.config import Plan
from latts.tts.solver import Solver
from latts.tasks import get_task
from latts.tts.voting import vote


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--max-think", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0, help="problem-generation and sampling seed")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--jsonl", type=Path, help="also write one record per problem here")
    args = ap.parse_args()

    task = get_task("arith")
    loaded = load(DEFAULT_MODEL, args.dtype)
    engine = Engine(loaded)
    engine.warmup()
    solver = Solver(engine, task)
    problems = task.load(limit=args.problems, seed=args.seed)
    per_sample, maj1, maj4, maj16, latency = [], [], [], [], []
    sink = args.jsonl.open("w") if args.jsonl else None
    t0 = time.monotonic()
    for i, p in enumerate(problems):
        plan = Plan(branches=16, max_think=args.max_think, temperature=args.temperature, seed=args.seed + i,
                    early_stop=False)
        sol = solver.solve(p, plan=plan)
        answers = sol.branch_answers
        correct = [task.grade(p.gold, a) for a in answers]
        per_sample.append(sum(correct) / len(correct))
        maj1.append(float(correct[0]))
        groups = [answers[j : j + 4] for j in range(0, 16, 4)]
        maj4.append(statistics.fmean(float(task.grade(p.gold, vote(g, task.same).answer)) for g in groups))
        maj16.append(float(task.grade(p.gold, vote(answers, task.same).answer)))
        latency.append(sol.latency_s)
        if sink:
            sink.write(json.dumps({"id": p.id, "gold": p.gold, "answers": answers, "correct": correct,
                                   "latency_s": sol.latency_s}) + "\n")
            sink.flush()
        elapsed = time.monotonic() - t0
        print(f"  {i + 1}/{len(problems)} {p.id}: {sum(correct)}/16 correct, maj@16 {'✓' if maj16[-1] else '✗'} "
              f"(running: per-sample {statistics.fmean(per_sample):.1%}, maj@16 {statistics.fmean(maj16):.1%}; "
              f"ETA {elapsed / (i + 1) * (len(problems) - i - 1):.0f} s)", flush=True)

    acc = statistics.fmean(per_sample)
    rows = [("per-sample (maj@1 expected)", acc), ("maj@1 (branch 0)", statistics.fmean(maj1)),
            ("maj@4", statistics.fmean(maj4)), ("maj@16", statistics.fmean(maj16))]
    print()
    print(f"arith level {task.level}, {len(problems)} problems, T={args.temperature}, max_think={args.max_think}, "
          f"B=16 in one batch, mean latency {statistics.fmean(latency):.1f} s per problem")
    print("| metric | accuracy |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value:.1%} |")
    gain = statistics.fmean(maj16) - acc
    ok_band = 0.15 <= acc <= 0.70
    ok_gain = gain >= 0.10
    print()
    print(f"target per-sample accuracy in [15%, 70%]: {acc:.1%} {'ok' if ok_band else 'MISSED'}")
    print(f"target maj@16 - maj@1 >= 10 points: {gain * 100:+.1f} points {'ok' if ok_gain else 'MISSED'}")
    return 0 if ok_band and ok_gain else 1


if __name__ == "__main__":
    sys.exit(main())
