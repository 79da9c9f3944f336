"""Latency-optimal plans for a model, a task and this machine: profile + accuracy surface + acceptance.

The pieces: the latency model fitted to a profile (:mod:`latts.latency.profiler`), the accuracy surface of one
wide run (:mod:`latts.eval.surface_run`), and each model-free drafter's acceptance rate α per γ, measured
here on a few of the task's own prompts, with one branch and with a wide batch (α depends on the text,
the drafter, the temperature and, for the group drafter, on the other branches). Every (B, L) of the
surface crossed with every (drafter, γ) gets a predicted latency and the surface's accuracy; the best
plan per deadline is Eq. 1 of the paper (:func:`latts.latency.optimizer.best_plan`), and it names the
drafter it speculates with. :func:`validate` then runs
the chosen plans for real and records them (``source: optimizer``) beside their predictions.
:func:`optimize` is the whole workflow of ``latts optimize``: measure what is missing, then plan and save.

Profiles and plans hold for the engine build and weight format they were measured with
(:class:`~latts.provenance.MeasuredWith`, recorded in both files): a stale one is measured again when it is
latts' own cache, and refused (:class:`~latts.provenance.Stale`) when the user named it.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from latts.backends import Opened, open_backend
from latts.config import SamplingParams, check_deadline
from latts.engine.speculation.drafters import NGramDrafter, check_drafter_spec, is_model_free, make_drafter
from latts.engine.loading.sources import DEFAULT_MODEL
from latts.errors import LattsError
from latts.eval.harness import Config, evaluate, read_records, run_one
from latts.eval.surface_run import expected_thinking, run_wide, surface_from_records, wide_run
from latts.latency.model import LatencyModel, expected_verify_width
from latts.latency.optimizer import Candidate, best_plan, candidates, pareto_frontier
from latts.latency.plans import plans_path, save_plans
from latts.latency.profile import Profile
from latts.latency.profiler import profile as run_profile
from latts.progress import Reporter
from latts.provenance import MeasuredWith, Stale, stale_reason
from latts.request import GenerateRequest
from latts.tts.solver import Solver
from latts.eval.surface import Estimate
from latts.tasks import Problem, get_task
from latts.types import SpecStats

log = logging.getLogger(__name__)
DEFAULT_PROFILE = "profile.json"  # where ``latts profile`` writes and ``latts optimize`` looks by default


class Acceptance(NamedTuple):
    """What speculation with one γ gains on a task, measured: the latency model's inputs for that γ."""

    alpha: float  # accepted drafts over proposed drafts
    tokens_per_round: float  # tokens a row gains per verify, bonus included
    proposal_rate: float = 1.0  # fraction of the γ drafts a row is offered per round


WIDE_BRANCHES = 8  # the batch a drafter's wide acceptance is measured at (beyond NGramDrafter.SMALL_BATCH)


def measure_alpha(solver: Solver, problems: Sequence[Problem], gammas: Sequence[int], temperature: float,
                  tokens: int = 96, seed: int = 0, drafter: str = "ngram", branches: int = 1) -> dict[int, Acceptance]:
    """Per γ (> 0): the acceptance of ``drafter`` (a model-free spelling) on ``problems``' prompts at
    ``temperature``, decoding ``branches`` branches with every draft verified (γ policy ``fixed``).

    All three numbers, because the drafter does not always propose γ tokens: tokens per round is not the
    i.i.d. formula of α, and a round without a proposal verifies a narrower (cheaper) forward. The batch
    matters: past ``NGramDrafter.SMALL_BATCH`` rows the drafters propose after confident matches only,
    and the group drafter drafts from the other branches (see :class:`DrafterAcceptance`)."""
    out = {}
    for g in sorted({g for g in gammas if g > 0}):
        total = SpecStats(drafter, g)  # the counts of every problem's run, pooled
        for p in problems:
            gen = solver.backend.generate(GenerateRequest(
                solver.task.prompt(p), branches=branches, max_new_tokens=tokens,
                sampling=SamplingParams(temperature, seed=seed), gamma=g, drafter=make_drafter(drafter),
                ignore_eos=True, gamma_policy="fixed"))
            total.proposed += gen.spec.proposed
            total.accepted += gen.spec.accepted
            total.rounds += gen.spec.rounds
        out[g] = Acceptance(total.acceptance_rate, total.mean_accepted_length or 1.0, total.proposal_rate)
    return out


class DrafterAcceptance(NamedTuple):
    """One drafter's acceptance per γ: with few branches, and with a wide batch (None: the same)."""

    small: dict[int, Acceptance]  # up to NGramDrafter.SMALL_BATCH branches (measured with one)
    wide: dict[int, Acceptance] | None = None  # beyond (measured with WIDE_BRANCHES)


def measure_drafters(solver: Solver, problems: Sequence[Problem], gammas: Sequence[int], temperature: float,
                     drafters: Sequence[str] = ("ngram", "group")) -> dict[str, DrafterAcceptance]:
    """Each drafter's acceptance per γ of ``gammas`` on ``problems``, with one branch and with WIDE_BRANCHES."""
    return {d: DrafterAcceptance(measure_alpha(solver, problems, gammas, temperature, drafter=d),
                                 measure_alpha(solver, problems, gammas, temperature, drafter=d,
                                               branches=WIDE_BRANCHES))
            for d in drafters}


def _as_acceptance(small: Mapping[int, Any], wide: Mapping[int, Any] | None = None) -> DrafterAcceptance:
    """A drafter's tables with every entry an :class:`Acceptance` (plain tuples accepted)."""
    return DrafterAcceptance({g: Acceptance(*a) for g, a in small.items()},
                             None if wide is None else {g: Acceptance(*a) for g, a in wide.items()})


def check_plan_drafters(drafters: Sequence[str]) -> None:
    """Refuse a drafter the optimizer cannot plan with: it measures model-free drafters only."""
    if not drafters:
        raise LattsError("--drafter: name at least one drafter (ngram, group)")
    for d in drafters:
        check_drafter_spec(d)
        if not is_model_free(d):
            raise LattsError(f"drafter '{d}': latts optimize plans with model-free drafters only (ngram, group)")


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The best candidate for one deadline (None when no plan is predicted to fit)."""

    deadline_s: float
    best: Candidate | None
    low: float | None = None  # the surface's confidence interval of the plan's accuracy
    high: float | None = None


@dataclass(slots=True)
class Planner:
    """Predicted latency and estimated accuracy of every (B, γ, L); best plans and the Pareto frontier."""

    latency: LatencyModel
    surface: list[Estimate]
    # per drafter, its acceptance per γ > 0 (plain (α, tokens per round) tuples are accepted too)
    drafters: dict[str, DrafterAcceptance]
    prompt_len: int
    answer_tokens: int = 16
    answer_prompt_tokens: int = 8
    # (B, L) -> (expected thinking steps, P[forced answer]) from the wide runs; None: every branch thinks L
    thinking: Callable[[int, int], tuple[float, float]] | None = None
    # speculation is a candidate only when predicted this much faster than plain decoding of the same
    # (B, L): a smaller predicted gain is inside the latency model's whole-run error (≈ 10% here), and on
    # the Zen 3 a γ=1 plan predicted 3-7% faster measured 1-23% slower
    spec_margin: float = 0.10

    def __post_init__(self) -> None:
        self.drafters = {d: _as_acceptance(*tables) for d, tables in self.drafters.items()}

    def acceptance(self, branches: int, gamma: int, drafter: str = "ngram") -> Acceptance:
        """What speculation with ``gamma`` drafts of ``drafter`` gains at ``branches`` (none measured: no
        acceptance, one token a round)."""
        measured = self.drafters.get(drafter)
        if measured is None:
            return Acceptance(0.0, 1.0)
        table = measured.small
        if measured.wide is not None and branches > NGramDrafter.SMALL_BATCH:
            table = measured.wide
        return table.get(gamma, Acceptance(0.0, 1.0))

    def predict_latency(self, branches: int, gamma: int, think: int, drafter: str = "ngram") -> float:
        """Seconds for a run of B branches, γ drafts of ``drafter``, L thinking tokens (the latency model,
        the drafter's α at this γ and batch)."""
        acc = self.acceptance(branches, gamma, drafter)
        steps, forced = self.thinking(branches, think) if self.thinking else (float(think), 1.0)
        return self.latency.predict(branches, gamma, steps, alpha=acc.alpha, prompt_len=self.prompt_len,
                                    answer_tokens=self.answer_tokens, answer_prompt_tokens=self.answer_prompt_tokens,
                                    tokens_per_round=acc.tokens_per_round, forced_share=forced,
                                    verify_width=expected_verify_width(gamma, acc.proposal_rate))

    def candidates(self) -> list[Candidate]:
        """Every (B, L) of the surface with γ = 0, and with every (drafter, γ) measured that is predicted to save
        more than ``spec_margin`` of the plain run's time."""
        acc = {(e.branches, e.think): e.accuracy for e in self.surface}
        plain = candidates(acc, self.predict_latency, [0])
        base = {(c.plan.branches, c.plan.max_think): c.latency_s for c in plain}
        spec = [Candidate.of(b, g, L, a, self.predict_latency(b, g, L, d), drafter=d)
                for d, measured in self.drafters.items() for g in sorted({*measured.small, *(measured.wide or {})})
                for (b, L), a in acc.items()]
        return plain + [c for c in spec if c.latency_s < base[(c.plan.branches, c.plan.max_think)] * (1 - self.spec_margin)]

    def recommend(self, deadlines: Sequence[float]) -> list[Recommendation]:
        """The latency-optimal plan per deadline (Eq. 1), with the surface's interval for its accuracy."""
        cands = self.candidates()
        ci = {(e.branches, e.think): (e.low, e.high) for e in self.surface}
        out = []
        for d in deadlines:
            best = best_plan(cands, d)
            low, high = ci[(best.plan.branches, best.plan.max_think)] if best else (None, None)
            out.append(Recommendation(d, best, low, high))
        return out

    def frontier(self) -> list[Candidate]:
        """Plans no other plan beats on both accuracy and predicted latency."""
        return pareto_frontier(self.candidates())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the latency model, each drafter's acceptance per γ (for small and wide batches) and the
        frontier (what ``solve`` needs to pick a plan)."""
        def table(t: dict[int, Acceptance] | None) -> dict[str, Any] | None:
            return None if t is None else {str(g): a._asdict() for g, a in t.items()}

        return {"latency_model": self.latency.to_dict(),
                "acceptance": {d: {"small": table(a.small), "wide": table(a.wide)} for d, a in self.drafters.items()},
                "prompt_len": self.prompt_len, "answer_tokens": self.answer_tokens,
                "frontier": [c.to_dict() for c in self.frontier()]}


def validate(solver: Solver, problems: Sequence[Problem], recs: Sequence[Recommendation], seeds: Sequence[int],
             out: Path, temperature: float,
             progress: Callable[[int, int, dict[str, Any] | None], None] | None = None) -> list[dict[str, Any]]:
    """Run each recommended plan for real on ``problems`` × ``seeds`` (resumable JSONL, ``source: optimizer``).

    The run gets the plan's own B, γ and L and no deadline, so the measured latency is comparable
    with the prediction (a deadline would cut the run at the deadline instead).
    """
    configs = {}
    for r in recs:
        if r.best is not None:
            c = Config(replace(r.best.plan, min_think=0, temperature=temperature))
            configs[c.key()] = c
    return evaluate(solver, list(problems), list(configs.values()), list(seeds), out, progress,
                    runner=run_as_optimizer)


def run_as_optimizer(solver: Solver, problem: Problem, config: Config, seed: int) -> dict[str, Any]:
    """:func:`latts.eval.harness.run_one`, its record marked ``source: optimizer`` (the report's latency-optimal row)."""
    return run_one(solver, problem, config, seed) | {"source": "optimizer"}


def prompt_length(solver: Solver, problems: Sequence[Problem]) -> int:
    """Median prompt length in tokens of the task's prompts for ``problems``."""
    return int(statistics.median(solver.backend.count_prompt_tokens(solver.task.prompt(p)) for p in problems))


@dataclass(frozen=True, slots=True)
class Optimized:
    """What :func:`optimize` found and saved, for the caller to show or use."""

    task: str
    acceptance: dict[str, DrafterAcceptance]  # each drafter's acceptance per γ > 0, measured on this task
    recommendations: list[Recommendation]  # the best plan per deadline, in the order asked
    frontier: list[Candidate]  # the Pareto frontier of predicted latency and surface accuracy
    plans_file: Path  # where the plans were saved (``latts solve`` and ``latts serve`` read them)
    validated: list[dict[str, Any]]  # the records of the validation runs ([] without validation)


def optimize(task: str = "arith", deadlines: Sequence[float] = (2.0, 5.0, 10.0, 20.0), *,
             profile: str | os.PathLike[str] | None = None,
             surface: str | os.PathLike[str] = "runs/surface.jsonl",
             thinks: Sequence[int] = (16, 32, 64, 128), surface_problems: int = 30,
             branches: Sequence[int] = (1, 2, 4, 8, 16), gammas: Sequence[int] = (0, 1, 2, 3, 4),
             drafters: Sequence[str] = ("ngram", "group"), validate_problems: int = 0, seeds: Sequence[int] = (1,),
             validate_out: str | os.PathLike[str] = "runs/validate.jsonl",
             data: str | os.PathLike[str] | None = None, plans: str | os.PathLike[str] | None = None,
             model: str = DEFAULT_MODEL, dtype: str = "auto",
             reporter: Reporter | None = None, engine: str = "auto") -> Optimized:
    """The latency-optimal (B, γ, L) of ``model`` on ``task`` per deadline, saved where ``solve`` finds them.

    What is missing is measured first: the accuracy surface (one wide run of max(``branches``) branches with
    budgets ``thinks`` on ``surface_problems`` problems, resumable in ``surface``) when ``surface`` holds no
    records of the task, and this machine's profile when ``profile`` is not a file; the acceptance of each of
    ``drafters`` per γ of ``gammas`` is always measured, and plans may speculate with any of them. ``profile`` None is latts' default file (:data:`DEFAULT_PROFILE`),
    measured again when it is stale (another engine build or weight format); a stale profile named here is
    refused, before anything long runs. With ``validate_problems`` > 0 the chosen plans are then run for
    real on that many problems × ``seeds`` (records in ``validate_out``). ``plans`` defaults to this
    machine's cache (:func:`plans_path`). The arguments, the dataset and ``surface`` are read and checked before
    the model loads.
    """
    reporter = reporter or Reporter()
    the_task = get_task(task)
    for d in deadlines:
        check_deadline(d)
    if min(gammas) < 0:
        raise LattsError("--gamma values must be >= 0")
    check_plan_drafters(drafters)
    wide = wide_run(max(branches), thinks)
    problems = the_task.load(data=Path(data) if data else None)
    records = [r for r in read_records(Path(surface)) if r["task"] == task and r.get("kind") == "surface"]
    opened = open_backend("embedded", model, dtype, engine=engine)
    reporter.opened(opened)
    current = opened.measured_with()
    prof = _profile(profile, opened, current, reporter)
    solver = Solver(opened.backend, the_task)
    if not records:
        reporter.note(f"no {task} surface records in {surface}: one wide run of B={wide.plan.branches} per problem on "
                      f"{surface_problems} problems")
        with reporter.progress(f"surface {task}") as progress:
            records = evaluate(solver, problems[:surface_problems], [wide], [100], Path(surface), progress,
                               runner=run_wide)
    b_max = max(r["config"]["B"] for r in records)
    estimates = surface_from_records(records, the_task, [b for b in branches if b <= b_max] or [1])
    temperature = records[0]["config"]["temperature"]
    acceptance = measure_drafters(solver, problems[:2], gammas, temperature, drafters)
    planner = Planner(prof.fit(), estimates, acceptance, prompt_length(solver, problems[:16]),
                      thinking=lambda b, L: expected_thinking(records, b, L))
    recs = planner.recommend(deadlines)
    plans_file = Path(plans) if plans else plans_path(opened.name, task)
    save_plans(planner, plans_file, opened.name, task, current)
    validated: list[dict[str, Any]] = []
    if validate_problems > 0:
        with reporter.progress(f"validate {task}") as progress:
            validated = validate(solver, problems[:validate_problems], recs, seeds, Path(validate_out), temperature,
                                 progress)
    return Optimized(task, acceptance, recs, planner.frontier(), plans_file, validated)


def _profile(path: str | os.PathLike[str] | None, opened: Opened, current: MeasuredWith,
             reporter: Reporter) -> Profile:
    """The profile at ``path`` (default :data:`DEFAULT_PROFILE`), of ``opened``'s model and measured with
    ``current``; or one measured now and saved there when there is none, or when the default file is stale.
    A stale profile the user named raises :class:`~latts.provenance.Stale`: it may be kept on purpose."""
    file = Path(path if path is not None else DEFAULT_PROFILE)
    if not file.is_file():
        reporter.note(f"no profile at {file}: measuring this machine (a few minutes)")
    else:
        prof = Profile.load(file)
        if prof.model != opened.name:
            raise LattsError(f"{file} profiles {prof.model}, not {opened.name}")
        reason = stale_reason(prof.measured_with, current)
        if reason is None:
            return prof
        if path is not None:
            raise Stale(f"profile {file} {reason}: re-run `latts profile --out {file}`")
        reporter.note(f"profile {file} {reason}: measuring this machine again (a few minutes)")
    prof = run_profile(opened.backend, progress=reporter.note)
    prof.save(file)
    return prof
