"""Table 1 and the other markdown tables of a report, from evaluation records (no model, no plotting).

"Faster and Better LLMs via Latency-Aware Test-Time Scaling" (Wang et al., 2025) compares, per
thinking length L, a baseline (one branch, no speculation) with branch-wise parallelism (B > 1),
sequence-wise parallelism (speculation, γ > 0) and the latency-optimal mix of both. This module reads
the JSONL records the eval harness writes (:func:`latts.eval.harness.run_one`), summarises them per
configuration (:func:`latts.eval.harness.summarize`: accuracy mean ± std over seeds, latency mean ± std
over runs) into :class:`ConfigPoint` values, and writes that comparison as markdown. The figures
(:mod:`latts.eval.figures`) plot the same points.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latts.errors import LattsError
from latts.eval.harness import SummaryRow, read_records, summarize
from latts.latency.optimizer import Candidate, pareto_frontier

log = logging.getLogger(__name__)

DASH = "—"
"""What a table cell shows when the configuration it describes is not in the records."""

OPTIMIZER_SOURCE = "optimizer"
"""The ``source`` value that marks a record as a run of the optimizer's latency-optimal choice."""


@dataclass(frozen=True, slots=True)
class ConfigPoint:
    """One configuration's summary with its (B, γ, L) unpacked: what table rows and plot points are made of.

    ``optimizer`` says whether any of its records came from the optimizer (``source == "optimizer"``).
    """

    branches: int
    gamma: int
    think: int
    deadline_s: float | None
    optimizer: bool
    row: SummaryRow

    @property
    def accuracy_pct(self) -> float:
        """Mean accuracy over seeds, in percent."""
        return 100.0 * self.row.accuracy

    @property
    def accuracy_std_pct(self) -> float:
        """Standard deviation of the per-seed accuracy, in percent."""
        return 100.0 * self.row.accuracy_std

    @property
    def latency_s(self) -> float:
        """Mean wall-clock latency over runs, in seconds."""
        return self.row.latency_s


# ----------------------------------------------------------------------------------------------- loading


def load_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """All records of the given JSONL files, concatenated in order.

    A report over a file that does not exist would silently describe nothing, so a missing path is an
    error (:func:`latts.eval.harness.read_records` itself treats a missing file as empty, for resuming).
    """
    records: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise LattsError(f"no such records file: {path}")
        records.extend(read_records(path))
    return records


def plan_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of evaluated plans (one (B, γ, L) each), without other kinds such as accuracy-surface runs.

    Why: a records file may also hold ``kind: "surface"`` runs (one wide run scored at several L), which
    have no single γ or L and must not be averaged with plan runs.
    """
    keep = [r for r in records if r.get("kind") is None
            and {"B", "gamma", "max_think"} <= set(r.get("config") or {})]
    if len(keep) < len(records):
        log.info("skipping %d records that are not plan runs (e.g. accuracy-surface runs)",
                 len(records) - len(keep))
    return keep


def config_points(records: list[dict[str, Any]]) -> list[ConfigPoint]:
    """Every configuration in ``records`` with its summary, in first-seen order.

    One point per configuration key: configurations that differ only in drafter, temperature or deadline
    are separate points with the same (B, γ, L). Records that are not plan runs are left out.
    """
    records = plan_records(records)
    optimizer_keys = {r["config_key"] for r in records if r.get("source") == OPTIMIZER_SOURCE}
    points = []
    for row in summarize(records):
        c = row.config
        points.append(ConfigPoint(
            branches=int(c["B"]), gamma=int(c["gamma"]), think=int(c["max_think"]),
            deadline_s=c.get("deadline_s"), optimizer=row.config_key in optimizer_keys, row=row,
        ))
    return points


def representatives(points: Sequence[ConfigPoint]) -> dict[tuple[int, int, int], ConfigPoint]:
    """One point per (B, γ, L) for plotting: the configuration with the most runs (first seen on ties)."""
    best: dict[tuple[int, int, int], ConfigPoint] = {}
    for p in points:
        key = (p.branches, p.gamma, p.think)
        if key not in best or p.row.runs > best[key].row.runs:
            best[key] = p
    return best


def _acc_key(p: ConfigPoint) -> tuple[float, float]:
    """Sort key: more accurate first, then faster (accuracy rounded so float noise does not break ties)."""
    return -round(p.row.accuracy, 12), p.latency_s


# ---------------------------------------------------------------------------------------------- Table 1


@dataclass(frozen=True, slots=True)
class Table1Block:
    """The rows of Table 1 for one thinking length L; a None entry means no such configuration was run."""

    think: int
    baseline: ConfigPoint | None
    branch_wise: ConfigPoint | None
    seq_wise: ConfigPoint | None
    latency_optimal: ConfigPoint | None


def table1_blocks(records: list[dict[str, Any]]) -> list[Table1Block]:
    """The configurations Table 1 shows for each thinking length L, by increasing L.

    Baseline: B=1, γ=0 (the one with most runs if several differ in deadline or temperature).
    Branch-wise: the most accurate γ=0, B>1 configuration (ties: lower latency).
    Seq-wise: the fastest B=1, γ>0 configuration.
    Latency-optimal: the most accurate configuration no slower than the baseline (ties: lower latency), or
    if none is (no baseline), the most accurate overall; chosen among the optimizer's choices (records with
    ``source == "optimizer"``) when there are any at this L, else among all configurations.
    """
    by_think: dict[int, list[ConfigPoint]] = defaultdict(list)
    for p in config_points(records):
        by_think[p.think].append(p)
    blocks = []
    for think in sorted(by_think):
        pts = by_think[think]
        baselines = [p for p in pts if p.branches == 1 and p.gamma == 0]
        baseline = max(baselines, key=lambda p: p.row.runs) if baselines else None  # max keeps the first seen
        branch = sorted((p for p in pts if p.gamma == 0 and p.branches > 1), key=_acc_key)
        seq = sorted((p for p in pts if p.branches == 1 and p.gamma > 0), key=lambda p: p.latency_s)
        pool = [p for p in pts if p.optimizer] or pts
        chosen = []
        if baseline is not None:
            chosen = sorted((p for p in pool if p.latency_s <= baseline.latency_s), key=_acc_key)
        if not chosen:
            chosen = sorted(pool, key=_acc_key)
        blocks.append(Table1Block(think, baseline, branch[0] if branch else None, seq[0] if seq else None,
                                  chosen[0] if chosen else None))
    return blocks


def _label(name: str, p: ConfigPoint | None) -> str:
    """Row label: the method's name, with the configuration's B and γ (and deadline) when it exists."""
    if p is None:
        return name
    deadline = "" if p.deadline_s is None else f", deadline {p.deadline_s:g} s"
    return f"{name} (B={p.branches}, γ={p.gamma}{deadline})"


def _cells(p: ConfigPoint | None) -> list[str]:
    """Latency, accuracy and runs cells of one configuration; dashes when it is missing."""
    if p is None:
        return [DASH, DASH, DASH]
    return [f"{p.latency_s:.2f} ± {p.row.latency_std:.2f}",
            f"{p.accuracy_pct:.1f} ± {p.accuracy_std_pct:.1f}", str(p.row.runs)]


def _improve_cells(base: ConfigPoint | None, best: ConfigPoint | None) -> list[str]:
    """Speedup (baseline latency / optimal latency) and accuracy gain in points; dashes if not comparable."""
    if base is None or best is None:
        return [DASH, DASH, ""]
    speedup = f"{base.latency_s / best.latency_s:.2f}x" if best.latency_s > 0 else DASH
    return [speedup, f"{best.accuracy_pct - base.accuracy_pct:+.1f}", ""]


def table1(records: list[dict[str, Any]]) -> str:
    """Table 1 of the paper as markdown: per thinking length L, baseline vs branch-, seq-wise and optimal.

    Why: it is the paper's headline comparison (is the latency-optimal mix both faster and more accurate
    than one plain branch?). Rows are chosen as in :func:`table1_blocks`; a configuration that was never
    run shows "—" cells. The Improve row gives the latency-optimal row's speedup over the baseline and its
    accuracy gain in percentage points.
    """
    lines = ["| L | method | latency (s) mean ± std | accuracy (%) mean ± std | runs |",
             "| --- | --- | --- | --- | --- |"]
    for b in table1_blocks(records):
        rows = [(_label("Baseline", b.baseline), _cells(b.baseline)),
                (_label("Branch-wise", b.branch_wise), _cells(b.branch_wise)),
                (_label("Seq-wise", b.seq_wise), _cells(b.seq_wise)),
                (_label("Latency-optimal", b.latency_optimal), _cells(b.latency_optimal)),
                ("Improve", _improve_cells(b.baseline, b.latency_optimal))]
        for label, cells in rows:
            lines.append("| " + " | ".join([str(b.think), label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def summary_table(records: list[dict[str, Any]]) -> str:
    """Markdown table of every configuration (by L, B, γ): runs, accuracy ± std and latency ± std.

    Why: Table 1 shows only the selected rows; this one shows everything they were selected from.
    """
    points = sorted(config_points(records), key=lambda p: (p.think, p.branches, p.gamma, p.row.config_key))
    lines = ["| configuration | runs | accuracy (%) mean ± std | latency (s) mean ± std | source |",
             "| --- | --- | --- | --- | --- |"]
    for p in points:
        source = OPTIMIZER_SOURCE if p.optimizer else ""
        lines.append(f"| {p.row.config_key} | {p.row.runs} | {p.accuracy_pct:.1f} ± {p.accuracy_std_pct:.1f} "
                     f"| {p.latency_s:.2f} ± {p.row.latency_std:.2f} | {source} |")
    return "\n".join(lines) + "\n"


def frontier_table(records: list[dict[str, Any]]) -> str:
    """Markdown table of the latency-optimal frontier (the green curve of Fig. 7), by increasing latency.

    Why: the figure shows the frontier's shape; this names the configuration behind each of its points.
    """
    lines = ["| B | γ | L | latency (s) mean ± std | accuracy (%) mean ± std | configuration |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in frontier_points(list(representatives(config_points(records)).values())):
        lines.append(f"| {p.branches} | {p.gamma} | {p.think} | {p.latency_s:.2f} ± {p.row.latency_std:.2f} "
                     f"| {p.accuracy_pct:.1f} ± {p.accuracy_std_pct:.1f} | {p.row.config_key} |")
    return "\n".join(lines) + "\n"


def frontier_points(points: Sequence[ConfigPoint]) -> list[ConfigPoint]:
    """The Pareto frontier (higher accuracy, lower latency) of ``points``, by increasing latency.

    Why: the latency-optimal frontier of Fig. 7 — for any latency budget, the best accuracy reachable.
    """
    by_cand = {Candidate.of(p.branches, p.gamma, p.think, p.row.accuracy, p.latency_s): p for p in points}
    return [by_cand[c] for c in pareto_frontier(list(by_cand))]


def report_markdown(records: list[dict[str, Any]], sources: Sequence[Path]) -> str:
    """The text of ``table1.md``: a header (tasks, record count, ``sources``), Table 1, the frontier, every
    configuration.

    Each table comes once per task when the records mix tasks, since accuracies of different tasks do
    not compare.
    """
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[str(r.get("task", "?"))].append(r)
    parts = ["# latts report", "",
             f"Task(s): {', '.join(sorted(by_task))}; {len(records)} records from "
             f"{', '.join(str(p) for p in sources)}.", "",
             "Accuracy: mean ± std over seeds (each seed's accuracy over the problems). "
             "Latency: mean ± std over runs.", ""]
    sections = (("Table 1", table1), ("Latency-optimal frontier", frontier_table),
                ("Every configuration", summary_table))
    for title, make in sections:
        for task in sorted(by_task):
            parts += [f"## {title} — {task}" if len(by_task) > 1 else f"## {title}", "", make(by_task[task])]
    return "\n".join(parts)
