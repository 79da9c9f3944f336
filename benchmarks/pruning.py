"""Online confidence pruning (``Plan.prune``): tokens and latency saved at equal accuracy, paired over problems.

For each of --problems problems of --task (arith, or a shipped maths task such as math500), each B in
--batches and each seed in --seeds, the same question is solved twice with the same seed, once without
pruning and once with ``prune`` = --prune (a thinking branch whose sliding-window confidence falls under
that quantile of the group's stops and abstains; see ``latts.engine.pruning``), in alternating order.
Both arms keep the solver's default "vote decided" early stop. No deadline: the comparison is of work
and accuracy at a fixed thinking budget --max-think.

Prints, per B: accuracy of each arm with 95% intervals, the paired accuracy difference with its interval
and McNemar's exact p, and tokens and latency per problem with the mean saving, its 95% interval and a
paired t-test's p. Exits 1 when, at some B, pruning does not save tokens (interval not above 0) or
loses accuracy beyond noise (McNemar p < 0.05 with fewer correct). One JSON line per solved pair goes
to --jsonl as it finishes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from scipy.stats import binomtest, ttest_rel

from latts.config import Plan
from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, load
from latts.tasks import get_task
from latts.tts.solver import Solver


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    m = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, half


def main() -> int:
    """Run both arms paired, print the tables, return 1 when pruning costs accuracy or saves nothing."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arith")
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--prune", type=float, default=0.3)
    ap.add_argument("--max-think", type=int, default=256)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--jsonl", type=Path)
    args = ap.parse_args()

    task = get_task(args.task)
    engine = Engine(load(DEFAULT_MODEL, args.dtype))
    engine.warmup()
    solver = Solver(engine, task)
    problems = task.load(limit=args.problems)
    batches = [int(b) for b in args.batches.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sink = args.jsonl.open("a") if args.jsonl else None
    pairs: dict[int, list[dict]] = {b: [] for b in batches}
    for B in batches:
        for i, problem in enumerate(problems):
            for seed in seeds:
                arms = {}
                order = ("plain", "pruned") if (i + seed) % 2 == 0 else ("pruned", "plain")
                for arm in order:
                    plan = Plan(branches=B, max_think=args.max_think, temperature=0.7, seed=seed,
                                prune=args.prune if arm == "pruned" else 0.0)
                    sol = solver.solve(problem, plan=plan)
                    arms[arm] = {"correct": bool(task.grade(problem.gold, sol.answer)), "tokens": sol.tokens,
                                 "latency_s": sol.latency_s,
                                 "pruned": sum(r == "pruned" for r in sol.finish_reasons)}
                row = {"task": args.task, "B": B, "problem": problem.id, "seed": seed, "prune": args.prune, **arms}
                pairs[B].append(row)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
            print(f"  B={B}: {i + 1}/{len(problems)} problems", flush=True)

    failures = []
    print()
    print(f"{args.task}, {len(problems)} problems x {len(seeds)} seeds, max_think {args.max_think}, prune {args.prune}")
    print("| B | accuracy plain | accuracy pruned | difference (pruned - plain) | McNemar p | tokens plain | "
          "tokens pruned | tokens saved | t-test p | latency plain s | latency pruned s | latency saved | "
          "branches pruned |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for B, rows in pairs.items():
        a = [float(r["plain"]["correct"]) for r in rows]
        b = [float(r["pruned"]["correct"]) for r in rows]
        (ma, ha), (mb, hb) = interval(a), interval(b)
        md, hd = interval([y - x for x, y in zip(a, b)])
        gained = sum(1 for x, y in zip(a, b) if y > x)
        lost = sum(1 for x, y in zip(a, b) if x > y)
        p_mc = binomtest(gained, gained + lost).pvalue if gained + lost else 1.0
        tok_a, tok_b = [r["plain"]["tokens"] for r in rows], [r["pruned"]["tokens"] for r in rows]
        lat_a, lat_b = [r["plain"]["latency_s"] for r in rows], [r["pruned"]["latency_s"] for r in rows]
        ms, hs = interval([1 - y / x for x, y in zip(tok_a, tok_b)])
        ml, hl = interval([1 - y / x for x, y in zip(lat_a, lat_b)])
        p_tok = ttest_rel(tok_a, tok_b).pvalue
        p_lat = ttest_rel(lat_a, lat_b).pvalue
        n_pruned = statistics.fmean(r["pruned"]["pruned"] for r in rows)
        print(f"| {B} | {ma:.1%} ± {ha:.1%} | {mb:.1%} ± {hb:.1%} | {md:+.1%} ± {hd:.1%} | {p_mc:.2f} | "
              f"{statistics.fmean(tok_a):.0f} | {statistics.fmean(tok_b):.0f} | {ms:.1%} ± {hs:.1%} | {p_tok:.2g} | "
              f"{statistics.fmean(lat_a):.2f} | {statistics.fmean(lat_b):.2f} | {ml:.1%} ± {hl:.1%} (p {p_lat:.2g}) | "
              f"{n_pruned:.1f} of {B} |")
        if not ms - hs > 0:
            failures.append(f"B={B}: tokens saved {ms:.1%} ± {hs:.1%} is not above 0")
        if lost > gained and p_mc < 0.05:
            failures.append(f"B={B}: pruning lost accuracy ({md:+.1%}, McNemar p {p_mc:.2f})")
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
