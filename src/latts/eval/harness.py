"""Evaluation harness: a task × a grid of plans × seeds, one JSONL record per finished run.

Records are appended (and flushed to disk) the moment a run ends, so an interrupted evaluation
loses at most the run in flight: a restart reads the file, drops a torn last line, and skips every
(problem, configuration, seed) already recorded. Accuracy-versus-latency curves are read straight
off the records.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from latts.config import Plan
from latts.errors import LattsError
from latts.tts.solver import Solver
from latts.tasks import Problem


@dataclass(frozen=True, slots=True)
class Config:
    """One evaluated configuration: a plan (each run sets its own seed) and the deadline it runs under."""

    plan: Plan
    deadline_s: float | None = None

    def key(self) -> str:
        """A stable string naming the configuration (the resume key, with problem and seed)."""
        p = self.plan
        deadline = "none" if self.deadline_s is None else f"{self.deadline_s:g}"
        drafter = p.drafter if p.gamma else "-"
        # settings added later are named only when not their default, so that older runs still resume
        policy = f"-{p.gamma_policy}" if p.gamma and p.gamma_policy != "cost" else ""
        prune = f"-prune{p.prune:g}" if p.prune else ""
        return (f"B{p.branches}-g{p.gamma}-{drafter}{policy}-think{p.min_think}:{p.max_think}-T{p.temperature:g}"
                f"{prune}-dl{deadline}")

    def seeded(self, seed: int) -> Plan:
        """The solver's plan for one run of this configuration."""
        return replace(self.plan, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view stored in every record."""
        p = self.plan
        return {"B": p.branches, "gamma": p.gamma, "drafter": p.drafter, "gamma_policy": p.gamma_policy,
                "prune": p.prune, "min_think": p.min_think, "max_think": p.max_think, "temperature": p.temperature,
                "deadline_s": self.deadline_s}


def grid(
    branches: Iterable[int],
    gammas: Iterable[int],
    max_thinks: Iterable[int],
    deadlines: Iterable[float | None] = (None,),
    drafter: str = "ngram",
    min_think: int = 0,
    temperature: float = 0.7,
    gamma_policy: str = "cost",
) -> list[Config]:
    """Every combination of the given values, in a stable order (each plan validated as it is made)."""
    return [
        Config(Plan(branches=b, gamma=g, drafter=drafter, min_think=min_think, max_think=L, temperature=temperature,
                    gamma_policy=gamma_policy), d)
        for b, g, L, d in itertools.product(branches, gammas, max_thinks, deadlines)
    ]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of ``path``; a torn last line (the process died mid-write) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    records, good_end = [], 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn write: the last line never got its newline
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LattsError(f"{path}:{len(records) + 1}: not a JSON record ({e.msg}); move the file away to start over")
        good_end += len(line)
    if good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def record_key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    """What identifies a run: task, problem, configuration, seed."""
    return record["task"], record["problem_id"], record["config_key"], record["seed"]


class Recorder:
    """Appends records to a JSONL file, each one flushed and fsync'ed as it arrives."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = read_records(path)
        self.done = {record_key(r) for r in self.records}
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Persist one record (one ``write`` call of a whole line, so a kill leaves at most a torn tail)."""
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)
        self.done.add(record_key(record))

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def run_one(solver: Solver, problem: Problem, config: Config, seed: int) -> dict[str, Any]:
    """Solve one problem with one configuration and seed; the graded record."""
    sampling_seed = problem.sampling_seed(seed)
    sol = solver.solve(problem, plan=config.seeded(sampling_seed), deadline_s=config.deadline_s)
    task = solver.task
    return {
        "task": task.name,
        "problem_id": problem.id,
        "config_key": config.key(),
        "config": config.to_dict(),
        "seed": seed,
        "sampling_seed": sampling_seed,  # the seed the sampler used (Problem.sampling_seed)
        "answer": sol.answer,
        "gold": problem.gold,
        "correct": task.grade(problem.gold, sol.answer),
        "latency_s": round(sol.latency_s, 4),
        "prefill_s": round(sol.prefill_s, 4),
        "tokens": sol.tokens,
        "votes": [[a, c] for a, c in sol.votes],
        "branch_answers": sol.branch_answers,
        "branch_correct": [task.grade(problem.gold, a) if a is not None else False for a in sol.branch_answers],
        "finish_reasons": sol.finish_reasons,
        "early_stopped": sol.early_stopped,
        "steps": sol.steps,
        "spec": sol.spec,  # speculation metrics (α, mean accepted length, ...); None without speculation
    }


def check_concurrency(concurrency: int, backend_concurrent: bool) -> None:
    """Reject a concurrency the backend cannot serve (checked by the CLI before any model loads, too)."""
    if concurrency < 1:
        raise LattsError(f"--concurrency must be >= 1, got {concurrency}")
    if concurrency > 1 and not backend_concurrent:
        raise LattsError("--concurrency > 1 needs --backend openai: the embedded engine runs one request at a time")


def evaluate(
    solver: Solver,
    problems: list[Problem],
    configs: list[Any],
    seeds: list[int],
    out: Path,
    progress: Callable[[int, int, dict[str, Any] | None], None] | None = None,
    runner: Callable[[Solver, Problem, Any, int], dict[str, Any]] = run_one,
    concurrency: int = 1,
) -> list[dict[str, Any]]:
    """Run every (problem, config, seed) not yet in ``out``; all records of this task's grid.

    ``progress(done, total, record)`` is called once at the start (record None) and after each run.
    ``runner(solver, problem, config, seed)`` makes one record (default :func:`run_one`; any config
    with a ``key()`` works, e.g. the accuracy surface's wide runs). ``concurrency`` > 1 runs that many
    problems at once, for backends that serve concurrent requests (a remote server); each record is
    written as it finishes, and when a run fails the ones already under way are still written, so a
    rerun resumes from where the failure left off.
    """
    check_concurrency(concurrency, solver.backend.concurrent)
    recorder = Recorder(out)
    try:
        todo = [
            (p, c, s) for c in configs for s in seeds for p in problems
            if (solver.task.name, p.id, c.key(), s) not in recorder.done
        ]
        total = len(problems) * len(configs) * len(seeds)
        done = total - len(todo)
        if progress is not None:
            progress(done, total, None)

        def finished(record: dict[str, Any]) -> None:
            nonlocal done
            recorder.write(record)
            done += 1
            if progress is not None:
                progress(done, total, record)

        if concurrency == 1:
            for problem, config, seed in todo:
                finished(runner(solver, problem, config, seed))
        else:
            _run_concurrently(solver, todo, runner, concurrency, finished)
        wanted = {(solver.task.name, p.id, c.key(), s) for p in problems for c in configs for s in seeds}
        return [r for r in recorder.records if record_key(r) in wanted]
    finally:
        recorder.close()


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """Accuracy and latency of one configuration: mean ± std over seeds (accuracy) and over runs (latency)."""

    config_key: str
    config: dict[str, Any]
    runs: int
    accuracy: float
    accuracy_std: float
    latency_s: float
    latency_std: float
    per_sample_accuracy: float


def summarize(records: list[dict[str, Any]]) -> list[SummaryRow]:
    """One row per configuration, in first-seen order."""
    by_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_config[r["config_key"]].append(r)
    rows = []
    for key, rs in by_config.items():
        by_seed: dict[int, list[bool]] = defaultdict(list)
        for r in rs:
            by_seed[r["seed"]].append(bool(r["correct"]))
        seed_acc = [sum(v) / len(v) for v in by_seed.values()]
        lat = [r["latency_s"] for r in rs]
        samples = [c for r in rs for c in r.get("branch_correct", [])]
        rows.append(SummaryRow(
            config_key=key, config=rs[0]["config"], runs=len(rs),
            accuracy=statistics.fmean(seed_acc), accuracy_std=statistics.pstdev(seed_acc) if len(seed_acc) > 1 else 0.0,
            latency_s=statistics.fmean(lat), latency_std=statistics.pstdev(lat) if len(lat) > 1 else 0.0,
            per_sample_accuracy=sum(samples) / len(samples) if samples else float("nan"),
        ))
    return rows


@dataclass(frozen=True, slots=True)
class Difference:
    """Accuracy of configuration a minus that of b on the problems both ran, and whether a is worse beyond noise.

    Paired over problems (each problem's accuracy averaged over its seeds), so problem difficulty,
    shared by both, drops out of the noise. ``p_worse`` is the one-sided p-value of a paired
    sign-flip (permutation) test of "a is less accurate than b", estimated from random sign patterns:
    valid under the null hypothesis that the two configurations' runs of a problem are exchangeable
    — true of a plan with and without lossless speculation. A bootstrap interval is too narrow here:
    most problems' differences are exactly zero (measured: it called four -1/3 differences out of 24
    significant; the exact test gives p = 1/16).
    """

    mean: float
    p_worse: float
    problems: int
    # the 95% interval of the mean difference: the shifts δ a two-sided sign-flip test of "differences - δ"
    # does not reject at 5% (the test inverted; assumes differences symmetric about their mean)
    low: float = float("nan")
    high: float = float("nan")

    def worse(self, alpha: float = 0.05) -> bool:
        """Whether a is less accurate than b at significance level ``alpha``."""
        return self.p_worse < alpha

    def gain(self) -> bool:
        """Whether a is more accurate than b beyond noise: the whole 95% interval above zero."""
        return self.low > 0


def accuracy_difference(records: Iterable[dict[str, Any]], key_a: str, key_b: str,
                        resamples: int = 20000, seed: int = 0) -> Difference:
    """How much more accurate configuration ``key_a`` is than ``key_b``, and how likely by chance.

    Two configurations of equal true accuracy differ by several points over a few dozen problems
    by chance; this says whether a measured shortfall is more than that.
    """
    per: dict[str, dict[str, list[bool]]] = {key_a: defaultdict(list), key_b: defaultdict(list)}
    for r in records:
        if r["config_key"] in per:
            per[r["config_key"]][r["problem_id"]].append(bool(r["correct"]))
    common = sorted(set(per[key_a]) & set(per[key_b]))
    if not common:
        raise LattsError(f"no problem was run by both {key_a} and {key_b}")
    diffs = [statistics.fmean(per[key_a][p]) - statistics.fmean(per[key_b][p]) for p in common]
    observed = sum(diffs)
    nonzero = [d for d in diffs if d]
    rng = random.Random(seed)
    # as low or lower than observed, under random signs; +1 on both sides keeps the estimate valid
    hits = sum(sum(d if rng.random() < 0.5 else -d for d in nonzero) <= observed + 1e-12 for _ in range(resamples))
    low, high = _sign_flip_interval(diffs, resamples, seed)
    return Difference(statistics.fmean(diffs), (hits + 1) / (resamples + 1), len(common), low, high)


def _sign_flip_interval(diffs: list[float], resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval of the mean of paired ``diffs`` by inverting a two-sided sign-flip test.

    δ is inside when random sign patterns give a |sum of (diffs - δ)| at least as large as the observed
    one in more than 1 - ``level`` of the patterns; the edges are found by bisection with one fixed set of
    patterns. Accuracy differences lie in [-1, 1], so the interval is clipped there (too few problems
    to reject anything give [-1, 1]).
    """
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    signs = np.where(np.random.default_rng(seed).random((resamples, d.size)) < 0.5, -1.0, 1.0)

    def inside(delta: float) -> bool:
        x = d - delta
        hits = np.count_nonzero(np.abs(signs @ x) >= abs(x.sum()) - 1e-9)
        return (hits + 1) / (resamples + 1) > 1 - level

    def edge(outer: float) -> float:
        inner = float(d.mean())
        if inside(outer):
            return outer
        for _ in range(30):
            mid = (inner + outer) / 2
            inner, outer = (mid, outer) if inside(mid) else (inner, mid)
        # problems with no difference make zero an edge whenever they are many: say so exactly
        return 0.0 if min(inner, outer) < 0 < max(inner, outer) and inside(0.0) else inner

    return edge(-1.0), edge(1.0)


def accuracy_interval(records: Iterable[dict[str, Any]], key: str, level: float = 0.95, resamples: int = 5000,
                      seed: int = 0) -> tuple[float, float]:
    """The ``level`` bootstrap interval of configuration ``key``'s accuracy, resampling problems.

    Problems, not runs: a problem's seeds are correlated (an easy problem is right in every seed), so
    the runs of one problem are resampled together, as its mean over seeds.
    """
    import numpy as np

    per: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        if r["config_key"] == key:
            per[r["problem_id"]].append(bool(r["correct"]))
    if not per:
        raise LattsError(f"no records of {key}")
    means = np.array([statistics.fmean(v) for v in per.values()])
    boots = np.sort(np.random.default_rng(seed).choice(means, (resamples, means.size)).mean(axis=1))
    tail = (1 - level) / 2
    return float(boots[int(tail * (resamples - 1))]), float(boots[int((1 - tail) * (resamples - 1))])


def _run_concurrently(solver: Solver, todo: list[tuple[Problem, Any, int]],
                      runner: Callable[[Solver, Problem, Any, int], dict[str, Any]], concurrency: int,
                      finished: Callable[[dict[str, Any]], None]) -> None:
    """Keep ``concurrency`` runs in flight; hand each record to ``finished`` (on this thread) as it completes.

    The first failure stops new runs from starting; the runs already in flight are awaited and their
    records kept; then the failure is raised.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    queue = list(reversed(todo))
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        running = set()
        while queue or running:
            while queue and failure is None and len(running) < concurrency:
                running.add(pool.submit(runner, solver, *queue.pop()))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                if fut.exception() is not None:
                    failure = failure or fut.exception()
                else:
                    finished(fut.result())
            if failure is not None:
                queue.clear()
    if failure is not None:
        raise failure

