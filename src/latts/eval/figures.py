"""The report's figures (Figs. 3, 6, 7 and 14 of Wang et al., 2025) as PNGs, from records and a profile.

The points plotted are the configurations of :mod:`latts.eval.tables`. Nothing here runs a model. The
plots use matplotlib's object-oriented API on bare ``Figure`` objects (rendered by Agg), so no pyplot
state or GUI backend is involved; matplotlib is imported only when a figure is drawn. A figure with no
data is not written at all (the function returns None and logs why), so a report never contains an
empty plot.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latts.errors import LattsError
from latts.eval.tables import ConfigPoint, config_points, frontier_points, representatives
from latts.latency.profile import Profile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SEQUENTIAL_COLOR = "tab:red"
PARALLEL_COLOR = "tab:blue"
FRONTIER_COLOR = "tab:green"


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
    reps = representatives(all_points)
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


def plot_tokens_per_s_vs_batch(profile: Profile, out: Path) -> Path | None:
    """Fig. 3: decode throughput (tokens/s = B·k / step seconds) vs batch size B at k=1, a line per context.

    Why: branch-wise parallelism is cheap exactly as long as this curve rises (memory-bound decoding), so
    the profile's shape shows how many branches this machine runs almost for free. Returns None (nothing
    written) if the profile has no k=1 decode measurement.
    """
    by_context: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for s in profile.steps:
        if s.k == 1 and s.seconds > 0:
            by_context[s.context].append((s.branches, s.branches / s.seconds))
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
    model = profile.model.rsplit("/", 1)[-1]
    cpu = str(profile.machine.get("cpu") or "unknown CPU")
    ax.set_title(f"Decode throughput vs batch size (k=1)\n{model} ({profile.dtype}) on {cpu}",
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
    reps = representatives(config_points(records))
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
    reps = representatives(config_points(records))
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


def write_figures(records: list[dict[str, Any]], out_dir: Path, profile: Profile | None = None) -> list[Path]:
    """Every figure that has data, written into ``out_dir``; the written paths.

    accuracy_vs_latency.png, with a profile tokens_per_s_vs_batch.png, speedup_vs_gamma.png and
    accuracy_heatmap.png, in that order. Records of several tasks are pooled (with a warning).
    """
    out_dir = Path(out_dir)
    tasks = {str(r.get("task", "?")) for r in records}
    if len(tasks) > 1:
        log.warning("records mix tasks (%s): the figures pool them", ", ".join(sorted(tasks)))
    plots = [plot_accuracy_vs_latency(records, out_dir / "accuracy_vs_latency.png")]
    if profile is not None:
        plots.append(plot_tokens_per_s_vs_batch(profile, out_dir / "tokens_per_s_vs_batch.png"))
    plots += [plot_speedup_vs_gamma(records, out_dir / "speedup_vs_gamma.png"),
              plot_accuracy_heatmap(records, out_dir / "accuracy_heatmap.png")]
    return [p for p in plots if p is not None]
