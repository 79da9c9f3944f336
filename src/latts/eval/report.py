"""Tables and figures from evaluation records: Table 1 and Figs. 3, 6, 7 and 14 of Wang et al. (2025).

"Faster and Better LLMs via Latency-Aware Test-Time Scaling" compares, per thinking length L, a
baseline (one branch, no speculation) with branch-wise parallelism (B > 1), sequence-wise
parallelism (speculation, γ > 0) and the latency-optimal mix of both. This module reads the JSONL
records the eval harness writes (:func:`latts.eval.harness.run_one`), summarises them per configuration
(:func:`latts.eval.harness.summarize`: accuracy mean ± std over seeds, latency mean ± std over runs), and
writes that comparison as markdown plus the figures as PNGs.

Nothing here runs a model. The plots use matplotlib's object-oriented API on bare ``Figure`` objects
(rendered by Agg), so no pyplot state or GUI backend is involved; matplotlib is imported only when a
figure is drawn. A figure with no data is not written at all (the function returns None and logs why),
so a report never contains an empty plot.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latts.errors import LattsError
from latts.eval.harness import SummaryRow, read_records, summarize
from latts.latency.optimizer import Candidate, pareto_frontier

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DASH = "—"
"""What a table cell shows when the configuration it describes is not in the records."""

OPTIMIZER_SOURCE = "optimizer"
"""The ``source`` value that marks a record as a run of the optimizer's latency-optimal choice."""

SEQUENTIAL_COLOR = "tab:red"
PARALLEL_COLOR = "tab:blue"
FRONTIER_COLOR = "tab:green"


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


def _representatives(points: Sequence[ConfigPoint]) -> dict[tuple[int, int, int], ConfigPoint]:
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
    for p in frontier_points(list(_representatives(config_points(records)).values())):
        lines.append(f"| {p.branches} | {p.gamma} | {p.think} | {p.latency_s:.2f} ± {p.row.latency_std:.2f} "
                     f"| {p.accuracy_pct:.1f} ± {p.accuracy_std_pct:.1f} | {p.row.config_key} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots


def _new_figure(width: float = 7.0, height: float = 4.8) -> Figure:
    """A bare matplotlib figure (no pyplot, no GUI backend: PNGs are rendered by Agg)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LattsError("plots need matplotlib: pip install matplotlib") from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as a PNG to ``out`` (creating its folder) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    log.info("wrote %s", out)
    return out


def _skip(out: Path, why: str) -> None:
    """Log that the plot ``out`` is not written, and why."""
    log.info("not writing %s: %s", Path(out).name, why)


def frontier_points(points: Sequence[ConfigPoint]) -> list[ConfigPoint]:
    """The Pareto frontier (higher accuracy, lower latency) of ``points``, by increasing latency.

    Why: the latency-optimal frontier of Fig. 7 — for any latency budget, the best accuracy reachable.
    """
    by_cand = {Candidate.of(p.branches, p.gamma, p.think, p.row.accuracy, p.latency_s): p for p in points}
    return [by_cand[c] for c in pareto_frontier(list(by_cand))]


def plot_accuracy_vs_latency(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Fig. 7: accuracy (%) vs mean latency (s) of sequential and parallel scaling and the optimal frontier.

    Sequential scaling (red) is B=1, γ=0 joined in order of L; parallel scaling (blue) is γ=0 joined in
    order of B, one line per L; the latency-optimal frontier (green) is the Pareto frontier over every
    configuration. Error bars are the accuracy's std over seeds. Returns None (nothing written) without data.
    """
    all_points = config_points(records)
    if not all_points:
        _skip(out, "no records")
        return None
    reps = _representatives(all_points)
    sequential = sorted((p for p in reps.values() if p.branches == 1 and p.gamma == 0), key=lambda p: p.think)
    parallel: dict[int, list[ConfigPoint]] = defaultdict(list)
    for p in reps.values():
        if p.gamma == 0:
            parallel[p.think].append(p)
    # a "varying B" line needs two B values: a lone B=1 point is the red line's already
    parallel = {L: pts for L, pts in parallel.items() if len({p.branches for p in pts}) >= 2}
    frontier = frontier_points(list(reps.values()))

    fig = _new_figure()
    ax = fig.add_subplot()
    if sequential:
        ax.errorbar([p.latency_s for p in sequential], [p.accuracy_pct for p in sequential],
                    yerr=[p.accuracy_std_pct for p in sequential], color=SEQUENTIAL_COLOR, marker="o",
                    capsize=3, label="sequential scaling (B=1, γ=0, varying L)", zorder=3)
        for p in sequential:
            ax.annotate(f"L={p.think}", (p.latency_s, p.accuracy_pct), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=SEQUENTIAL_COLOR)
    thinks = sorted(parallel)
    markers = ["s", "^", "D", "v", "P", "X"]
    styles = ["-", "--", "-.", ":"]
    # B labels on every line when there are few points; else on the longest L's line only (on all of
    # them they pile up at low latency)
    label_all = sum(p.branches > 1 for pts in parallel.values() for p in pts) <= 8
    for i, think in enumerate(thinks):
        pts = sorted(parallel[think], key=lambda p: p.branches)
        label = "parallel scaling (γ=0, varying B)" + (f", L={think}" if len(thinks) > 1 else "")
        ax.errorbar([p.latency_s for p in pts], [p.accuracy_pct for p in pts],
                    yerr=[p.accuracy_std_pct for p in pts], color=PARALLEL_COLOR,
                    alpha=1.0 if len(thinks) == 1 else 0.45 + 0.55 * (i + 1) / len(thinks),
                    marker=markers[i % len(markers)], linestyle=styles[i % len(styles)], capsize=3,
                    label=label, zorder=2)
        if label_all or think == thinks[-1]:
            for p in pts:
                if p.branches == 1 and sequential:
                    continue  # that point is on the red line, labelled with its L
                ax.annotate(f"B={p.branches}", (p.latency_s, p.accuracy_pct), textcoords="offset points",
                            xytext=(5, -3), fontsize=7, color=PARALLEL_COLOR)
    ax.plot([p.latency_s for p in frontier], [p.accuracy_pct for p in frontier], color=FRONTIER_COLOR,
            drawstyle="steps-post", marker="*", markersize=11, linewidth=2, alpha=0.8,
            label="latency-optimal frontier", zorder=4)
    ax.margins(x=0.08, y=0.06)  # room for the point labels at the edges
    ax.set_xlabel("mean latency per question (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy vs latency — {_tasks_label(records)}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out)


def plot_tokens_per_s_vs_batch(profile: dict[str, Any], out: Path) -> Path | None:
    """Fig. 3: decode throughput (tokens/s = B·k / step seconds) vs batch size B at k=1, a line per context.

    Why: branch-wise parallelism is cheap exactly as long as this curve rises (memory-bound decoding), so
    the profile's shape shows how many branches this machine runs almost for free. Returns None (nothing
    written) if the profile has no k=1 decode measurement.
    """
    by_context: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for s in profile.get("steps", []):
        if int(s["k"]) == 1 and float(s["seconds"]) > 0:
            b = int(s["branches"])
            by_context[int(s["context"])].append((b, b / float(s["seconds"])))
    if not by_context:
        _skip(out, "the profile has no one-token (k=1) decode steps")
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    batches: set[int] = set()
    for context in sorted(by_context):
        pts = sorted(by_context[context])
        batches.update(b for b, _ in pts)
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", label=f"context {context} tokens")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(batches), [str(b) for b in sorted(batches)])
    ax.set_xlabel("batch size B (branches, log₂ scale)")
    ax.set_ylabel("decode throughput (tokens/s)")
    model = str(profile.get("model", "?")).rsplit("/", 1)[-1]
    cpu = str(profile.get("machine", {}).get("cpu") or "unknown CPU")
    ax.set_title(f"Decode throughput vs batch size (k=1)\n{model} ({profile.get('dtype', '?')}) on {cpu}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(by_context) > 1:
        ax.legend(fontsize=8)
    return _save(fig, out)


def speedup_curves(records: list[dict[str, Any]]) -> tuple[int, dict[int, list[tuple[int, float]]]] | None:
    """Speedup of speculation over plain decoding, per B: latency(B, γ=0, L) / latency(B, γ, L) for each γ.

    Taken at the largest L that has γ>0 data; returns (L, {B: [(γ, speedup), ...] by increasing γ,
    starting with (0, 1.0)}), or None if no B has both a γ=0 and a γ>0 configuration there.
    """
    reps = _representatives(config_points(records))
    spec_thinks = [L for (_, g, L) in reps if g > 0]
    if not spec_thinks:
        return None
    think = max(spec_thinks)
    curves: dict[int, list[tuple[int, float]]] = {}
    for b in sorted({B for (B, _, L) in reps if L == think}):
        base = reps.get((b, 0, think))
        spec = sorted((g, p) for (B, g, L), p in reps.items() if B == b and L == think and g > 0)
        if base is None or not spec or base.latency_s <= 0:
            continue
        curves[b] = [(0, 1.0)] + [(g, base.latency_s / p.latency_s) for g, p in spec if p.latency_s > 0]
    return (think, curves) if curves else None


def plot_speedup_vs_gamma(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Fig. 6: speedup of speculative decoding vs draft length γ, one line per B, with a dashed line at 1×.

    Why: shows how much sequence-wise parallelism buys at each batch size (it shrinks as B grows and the
    forward becomes compute-bound). Returns None (nothing written) without γ>0 runs that have a γ=0 partner.
    """
    found = speedup_curves(records)
    if found is None:
        _skip(out, "no B has both a γ=0 and a γ>0 configuration at the same L")
        return None
    think, curves = found
    fig = _new_figure()
    ax = fig.add_subplot()
    gammas: set[int] = set()
    for b, pts in curves.items():
        gammas.update(g for g, _ in pts)
        ax.plot([g for g, _ in pts], [s for _, s in pts], marker="o", label=f"B={b}")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="no speedup (1.0×)")
    ax.set_xticks(sorted(gammas))
    ax.set_xlabel("draft length γ (tokens)")
    ax.set_ylabel("speedup over γ=0 (×, latency ratio)")
    ax.set_title(f"Speculative decoding speedup vs γ (L={think}) — {_tasks_label(records)}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def accuracy_grid(
    records: list[dict[str, Any]],
) -> tuple[int, list[int], list[int], list[list[float]]] | None:
    """Accuracy (%) over the (B, γ) grid at the largest L: (L, Bs, γs, acc[B index][γ index]); NaN: not run.

    None if there are no records.
    """
    reps = _representatives(config_points(records))
    if not reps:
        return None
    think = max(L for (_, _, L) in reps)
    bs = sorted({b for (b, _, L) in reps if L == think})
    gs = sorted({g for (_, g, L) in reps if L == think})
    acc = [[reps[(b, g, think)].accuracy_pct if (b, g, think) in reps else math.nan for g in gs] for b in bs]
    return think, bs, gs, acc


def plot_accuracy_heatmap(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Fig. 14: accuracy (%) heatmap over B (y) and γ (x) at the largest L, cells annotated with B·(γ+1).

    Why: B·(γ+1) is the tokens each forward processes (the concurrency); the map shows which mix of
    branches and draft length pays off in accuracy. Configurations not run stay blank. Returns None
    (nothing written) without records.
    """
    found = accuracy_grid(records)
    if found is None:
        _skip(out, "no records")
        return None
    think, bs, gs, acc = found
    import numpy as np

    data = np.array(acc, dtype=float)
    fig = _new_figure(max(5.0, 1.2 * len(gs) + 2.5), max(3.5, 0.75 * len(bs) + 1.8))
    ax = fig.add_subplot()
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 5.0, hi + 5.0
    cmap = _cmap("viridis")
    im = ax.imshow(np.ma.masked_invalid(data), origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
    for i, b in enumerate(bs):
        for j, g in enumerate(gs):
            if math.isnan(acc[i][j]):
                continue
            shade = (acc[i][j] - lo) / (hi - lo)
            ax.text(j, i, f"{acc[i][j]:.1f}%\nB·(γ+1)={b * (g + 1)}", ha="center", va="center", fontsize=7,
                    color="black" if shade > 0.55 else "white")
    ax.set_xticks(range(len(gs)), [str(g) for g in gs])
    ax.set_yticks(range(len(bs)), [str(b) for b in bs])
    ax.set_xlabel("draft length γ (tokens)")
    ax.set_ylabel("branches B")
    blank = " (blank: not run)" if bool(np.isnan(data).any()) else ""
    ax.set_title(f"Accuracy over (B, γ) at L={think} — {_tasks_label(records)}{blank}", fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, out)


def _cmap(name: str) -> Any:
    """A copy of a matplotlib colormap whose masked (not run) cells are drawn white."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="white")


def _tasks_label(records: list[dict[str, Any]]) -> str:
    """The task name(s) of ``records``, for titles."""
    tasks = sorted({str(r.get("task", "?")) for r in records})
    return ", ".join(tasks) if tasks else "no task"


# ----------------------------------------------------------------------------------------------- report


def _load_profile(path: Path) -> dict[str, Any]:
    """A profile JSON (as written by ``latts profile``) as a dict, or a one-line LattsError."""
    try:
        profile = json.loads(Path(path).read_text())
    except OSError as e:
        raise LattsError(f"cannot read profile {path}: {e.strerror}") from None
    except ValueError as e:
        raise LattsError(f"{path} is not a latts profile ({e})") from None
    if not isinstance(profile, dict) or not isinstance(profile.get("steps"), list):
        raise LattsError(f"{path} is not a latts profile (no list of steps)")
    return profile


def write_report(record_paths: Sequence[Path], out_dir: Path, profile_path: Path | None = None) -> list[Path]:
    """Write ``table1.md`` and every figure that has data into ``out_dir``; the written paths, table first.

    ``table1.md`` holds a header (tasks, record count, files), Table 1 (one per task when the records
    mix tasks, since accuracies of different tasks do not compare), the configurations on the
    latency-optimal frontier, and a summary of every configuration.
    Figures: accuracy_vs_latency.png, speedup_vs_gamma.png, accuracy_heatmap.png, and with a profile
    tokens_per_s_vs_batch.png. Raises LattsError if the files hold no records.
    """
    paths = [Path(p) for p in record_paths]
    loaded = load_records(paths)
    records = plan_records(loaded)
    if not records:
        skipped = f" (only {len(loaded)} accuracy-surface or other non-plan records)" if loaded else ""
        raise LattsError(f"no records in {', '.join(str(p) for p in paths) or '(no files given)'}{skipped}")
    profile = _load_profile(profile_path) if profile_path is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[str(r.get("task", "?"))].append(r)
    parts = ["# latts report", "",
             f"Task(s): {', '.join(sorted(by_task))}; {len(records)} records from "
             f"{', '.join(str(p) for p in paths)}.", "",
             "Accuracy: mean ± std over seeds (each seed's accuracy over the problems). "
             "Latency: mean ± std over runs.", ""]
    for task in sorted(by_task):
        parts += [f"## Table 1 — {task}" if len(by_task) > 1 else "## Table 1", "", table1(by_task[task])]
    for task in sorted(by_task):
        title = f"## Latency-optimal frontier — {task}" if len(by_task) > 1 else "## Latency-optimal frontier"
        parts += [title, "", frontier_table(by_task[task])]
    for task in sorted(by_task):
        parts += [f"## Every configuration — {task}" if len(by_task) > 1 else "## Every configuration", "",
                  summary_table(by_task[task])]
    table_path = out_dir / "table1.md"
    table_path.write_text("\n".join(parts))
    log.info("wrote %s", table_path)
    written = [table_path]

    if len(by_task) > 1:
        log.warning("records mix tasks (%s): the figures pool them", ", ".join(sorted(by_task)))
    plots = [plot_accuracy_vs_latency(records, out_dir / "accuracy_vs_latency.png")]
    if profile is not None:
        plots.append(plot_tokens_per_s_vs_batch(profile, out_dir / "tokens_per_s_vs_batch.png"))
    plots += [plot_speedup_vs_gamma(records, out_dir / "speedup_vs_gamma.png"),
              plot_accuracy_heatmap(records, out_dir / "accuracy_heatmap.png")]
    written += [p for p in plots if p is not None]
    return written
