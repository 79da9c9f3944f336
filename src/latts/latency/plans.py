"""The plans ``latts optimize`` saved, and the plan ``latts solve`` and ``latts serve`` run for a deadline.

The store: one JSON file per (model, task) in this machine's cache (or a file the user names), holding the
latency-optimal frontier and what its latencies were measured with. The choice: for a deadline, the saved
plan predicted to fit it (Eq. 1 of the paper, :func:`latts.latency.optimizer.best_plan`), else the default
plan; options the user gave apply last. Both commands pick their plan here, so they agree.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from latts.config import Plan, default_plan
from latts.errors import LattsError
from latts.latency.optimizer import Candidate, best_plan
from latts.paths import cache_dir
from latts.provenance import MeasuredWith, Stale, check_current

log = logging.getLogger(__name__)


class PlansDoc(Protocol):
    """What a plans file is written from (``latts.planning.Planner``): its JSON form, frontier included."""

    def to_dict(self) -> dict[str, Any]: ...


def plans_path(model: str, task: str) -> Path:
    """Where the plans of ``model`` on ``task`` for this machine are kept (beside the model cache)."""
    return cache_dir("plans") / f"{model}--{task}.json"


def save_plans(planner: PlansDoc, path: Path, model: str, task: str, measured_with: MeasuredWith) -> None:
    """Write the frontier for ``model`` and ``task`` where :func:`saved_frontier` finds it, with what its
    latencies were measured with (``measured_with``), so that another engine never follows them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "task": task, "measured_with": measured_with.to_dict(),
                                **planner.to_dict()}, indent=1))


def load_frontier(path: Path, current: MeasuredWith) -> list[Candidate] | None:
    """The saved frontier of ``latts optimize`` (None without a plans file), if measured with ``current``.

    Plans of another engine build, weight format or machine predict latencies that do not hold here:
    they raise :class:`~latts.provenance.Stale`, naming what differs.
    """
    try:
        doc = json.loads(path.read_text())
        frontier = [Candidate.from_dict(c) for c in doc["frontier"]]
        recorded = MeasuredWith.from_dict(doc.get("measured_with"))
        task = doc.get("task", "TASK")
    except OSError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, LattsError) as e:
        raise LattsError(f"{path} is not a latts plans file ({e})") from None
    check_current(f"plans file {path}", recorded, current, f"re-run `latts optimize --task {task}`")
    return frontier


def saved_frontier(plans: str | os.PathLike[str] | None, model: str, task: str, current: MeasuredWith,
                   note: Callable[[str], None] = log.warning) -> list[Candidate] | None:
    """The frontier ``solve`` and ``serve`` plan with: of the file ``plans``, or of this machine's cache for
    ``model`` and ``task`` (None without one).

    A stale file the user named is refused (:class:`~latts.provenance.Stale`); a stale cache is left
    unused, with a ``note`` saying why, and the default plan applies until ``latts optimize`` runs again.
    """
    if plans:
        return load_frontier(Path(plans), current)
    try:
        return load_frontier(plans_path(model, task), current)
    except Stale as e:
        note(f"{e}; until then the default plan applies")
        return None


PLAN_SHAPE = frozenset({"branches", "gamma", "max_think"})  # what a saved latency-optimal plan is chosen by
PLAN_CHOICES = ("branches", "gamma", "max_think", "drafter", "gamma_policy", "prune")  # what it then sets


def choose_plan(deadline_s: float | None,
                frontier: Sequence[Candidate] | Callable[[], Sequence[Candidate] | None] | None,
                overrides: Mapping[str, Any] | None = None, base: Plan | None = None) -> tuple[Plan, Candidate | None]:
    """The plan to run for ``deadline_s``, and the saved candidate it follows (None if it follows none).

    With a deadline and none of B, γ, L among ``overrides``, the frontier's best plan predicted to fit the
    deadline (Eq. 1) sets them, with its drafter, γ policy and pruning; otherwise they come from ``base`` (default: :func:`default_plan`). The
    ``overrides`` (None values ignored) apply last. ``frontier``: the candidates of ``latts optimize``, or
    a function reading them (e.g. :func:`saved_frontier`), called only when the saved plan is wanted (None,
    or a function returning None: the default plan).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    plan = base if base is not None else default_plan(deadline_s)
    chosen = None
    if deadline_s is not None and frontier is not None and not PLAN_SHAPE & overrides.keys():
        cands = frontier() if callable(frontier) else frontier
        chosen = best_plan(cands, deadline_s) if cands else None
        if chosen is not None:
            plan = replace(plan, **{k: getattr(chosen.plan, k) for k in PLAN_CHOICES})
    return replace(plan, **overrides), chosen
