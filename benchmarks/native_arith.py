"""Does the native decode step (8-bit activations) cost accuracy? arith, paired over problems.

For each of --problems generated arith problems, the same plan (16 branches at T=0.7, the same seed)
runs twice on one loaded model: through the native step and through torch's path
(``model.native = None``: bf16 activations, exact block weights). Per problem, the per-sample
accuracy of each; the paired difference's mean and its 95% interval (normal approximation over
problems). Exits 1 when the native step is worse beyond that noise (the interval lies below 0).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

from latts.config import Plan
from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, load
from latts.tasks import get_task
from latts.tts.solver import Solver


def per_sample(solver: Solver, task, problem, plan: Plan) -> float:
    """The fraction of the plan's branches that answer ``problem`` right."""
    answers = solver.solve(problem, plan=plan).branch_answers
    return statistics.fmean(float(task.grade(problem.gold, a)) for a in answers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--branches", type=int, default=16)
    ap.add_argument("--max-think", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    task = get_task("arith")
    loaded = load(DEFAULT_MODEL, "auto")
    model = loaded.model
    native = model.native
    if native is None:
        print("the native step does not run here (no kernels, or weights not in blocks): nothing to compare")
        return 2
    engine = Engine(loaded)
    engine.warmup()
    solver = Solver(engine, task)
    diffs, acc = [], {"native": [], "torch": []}
    for i, problem in enumerate(task.load(limit=args.problems, seed=args.seed)):
        plan = Plan(branches=args.branches, max_think=args.max_think, temperature=0.7, seed=args.seed + i,
                    early_stop=False)
        for path in ("native", "torch"):
            model.native = native if path == "native" else None
            acc[path].append(per_sample(solver, task, problem, plan))
        model.native = native
        diffs.append(acc["native"][-1] - acc["torch"][-1])
        print(f"  {i + 1}: native {acc['native'][-1]:.2f}, torch {acc['torch'][-1]:.2f}", flush=True)
    mean = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    print()
    print(f"arith level {task.level}, {len(diffs)} problems, {args.branches} branches at T=0.7, max_think {args.max_think}")
    print("| path | per-sample accuracy |")
    print("| --- | --- |")
    for path, values in acc.items():
        print(f"| {path} | {statistics.fmean(values):.1%} |")
    print(f"| native - torch, paired | {mean:+.1%} (95% interval {mean - half:+.1%} .. {mean + half:+.1%}) |")
    worse = mean + half < 0
    print(f"target: native not worse beyond noise: {'MISSED' if worse else 'ok'}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
