"""Does ``solve(question, deadline_s=T)`` return by T? 30 runs with deadlines from 2 to 20 s.

Half of the runs cannot finish on their own (``min_think`` close to ``max_think``, so every early
stop is suppressed): only the deadline-driven forced answer ends them. The other half use the
default plan. Prints each run's latency / deadline and the overshoot distribution; exits 1 if any
run took longer than the deadline + 5%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace

from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, load
from latts.config import Plan, default_plan
from latts.tts.solver import Solver
from latts.tasks import get_task

TOLERANCE = 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--min-deadline", type=float, default=2.0)
    ap.add_argument("--max-deadline", type=float, default=20.0)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    loaded = load(DEFAULT_MODEL, args.dtype)
    engine = Engine(loaded)
    engine.warmup((1, 4, 8, 16))
    solver = Solver(engine, "arith")
    problems = get_task("arith").load(limit=args.runs, seed=7)
    span = args.max_deadline - args.min_deadline
    rows = []
    for i, problem in enumerate(problems):
        deadline = args.min_deadline + span * i / max(1, args.runs - 1)
        branches = (1, 4, 8, 16)[(i // 2) % 4]  # every B meets both kinds of run
        if i % 2:  # cannot stop by itself: only the deadline ends it
            plan = Plan(branches=branches, max_think=4000, min_think=3990, seed=i)
        else:
            plan = replace(default_plan(deadline), branches=branches, seed=i)
        sol = solver.solve(problem, plan=plan, deadline_s=deadline)
        ratio = sol.latency_s / deadline
        forced = sum(b.forced == "deadline" for b in sol.branches)
        rows.append((deadline, branches, plan.min_think, sol.latency_s, ratio, forced, sol.answer))
        print(f"  {i + 1:2d}/{args.runs} deadline {deadline:5.2f} s B={branches:2d} min_think={plan.min_think:4d}: "
              f"{sol.latency_s:6.2f} s ({ratio:.3f}), {forced} forced by the deadline, answer {sol.answer!r}",
              flush=True)

    print()
    print("| deadline s | B | min_think | latency s | latency / deadline | forced by deadline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for d, b, mt, lat, ratio, forced, _ in rows:
        print(f"| {d:.2f} | {b} | {mt} | {lat:.2f} | {ratio:.3f} | {forced}/{b} |")
    ratios = sorted(r[4] for r in rows)
    print()
    print(f"latency / deadline: min {ratios[0]:.3f}, median {statistics.median(ratios):.3f}, "
          f"p90 {ratios[int(0.9 * (len(ratios) - 1))]:.3f}, max {ratios[-1]:.3f}")
    misses = [r for r in rows if r[4] > 1 + TOLERANCE]
    print(f"target: every run within deadline + {TOLERANCE:.0%}: {len(rows) - len(misses)}/{len(rows)} "
          f"{'ok' if not misses else 'MISSED'}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
