"""The report: Table 1 row selection and numbers, figures written only with data, and never blank.

Every record here is synthetic and built by hand, so each expected number is computed in the test.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from latts.errors import LattsError
from latts.config import Plan
from latts.eval.harness import Config
from latts.eval.figures import (
    accuracy_grid,
    plot_accuracy_heatmap,
    plot_accuracy_vs_latency,
    plot_speedup_vs_gamma,
    plot_tokens_per_s_vs_batch,
    speedup_curves,
)
from latts.eval.report import write_report
from latts.eval.tables import DASH, load_records, table1
from latts.latency.model import StepSample
from latts.latency.profile import Profile

T, F = True, False


def make_records(
    B: int, gamma: int, L: int, seed: int, correct: list[bool], latency: float | list[float],
    *, task: str = "arith", source: str | None = None, deadline_s: float | None = None,
) -> list[dict[str, Any]]:
    """One record per problem (p0, p1, ...) of configuration (B, γ, L) and ``seed``, as ``run_one`` has it."""
    config = Config(Plan(branches=B, gamma=gamma, max_think=L, temperature=0.7), deadline_s)
    latencies = latency if isinstance(latency, list) else [latency] * len(correct)
    out = []
    for i, (ok, lat) in enumerate(zip(correct, latencies, strict=True)):
        r = {"task": task, "problem_id": f"p{i}", "config_key": config.key(), "config": config.to_dict(),
             "seed": seed, "answer": "1" if ok else "2", "gold": "1", "correct": ok, "latency_s": lat,
             "prefill_s": 0.1, "tokens": 100 * B, "votes": [["1" if ok else "2", B]],
             "branch_answers": ["1" if ok else "2"] * B, "branch_correct": [ok] * B,
             "finish_reasons": ["stop"] * B, "early_stopped": False, "steps": 50}
        if source is not None:
            r["source"] = source
        out.append(r)
    return out


def grid_256() -> list[dict[str, Any]]:
    """L=256, two seeds × four problems; accuracies and latencies chosen so each Table 1 row is known.

    baseline B1 γ0: 25% / 50% (mean 37.5, std 12.5), latency 4 s (seed 0) and 6 s (seed 1): 5.00 ± 1.00.
    branch-wise: B8 γ0 is the most accurate γ=0 config (100%), B4 γ0 75%, B2 γ0 50%.
    seq-wise: B1 γ4 (3.0 s) is faster than B1 γ2 (3.5 s).
    latency-optimal: B4 γ3 (87.5%, 4.0 s) ties B2 γ3 on accuracy but is faster; B8 γ4 is more accurate
    but slower than the baseline (6.0 s > 5.0 s).
    """
    recs: list[dict[str, Any]] = []
    recs += make_records(1, 0, 256, 0, [T, F, F, F], 4.0) + make_records(1, 0, 256, 1, [T, T, F, F], 6.0)
    for seed in (0, 1):
        recs += make_records(2, 0, 256, seed, [T, T, F, F], 6.0)
        recs += make_records(4, 0, 256, seed, [T, T, T, F], 8.0)
        recs += make_records(8, 0, 256, seed, [T, T, T, T], 12.0)
        recs += make_records(1, 2, 256, seed, [T, F, F, F], 3.5)
        recs += make_records(1, 4, 256, seed, [T, F, F, F], 3.0)
        recs += make_records(8, 4, 256, seed, [T, T, T, T], 6.0)
    recs += make_records(4, 3, 256, 0, [T, T, T, T], 4.0) + make_records(4, 3, 256, 1, [T, T, T, F], 4.0)
    recs += make_records(2, 3, 256, 0, [T, T, T, T], 4.5) + make_records(2, 3, 256, 1, [T, T, T, F], 4.5)
    return recs


def rows_of(md: str) -> dict[tuple[int, str], list[str]]:
    """Table 1's rows keyed by (L, method name without its parenthesis): [label, latency, accuracy, runs]."""
    rows = {}
    for line in md.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[(int(cells[0]), cells[1].split(" (")[0])] = cells[1:]
    return rows


def assert_png_not_blank(path: Path) -> None:
    assert path.read_bytes()[:4] == b"\x89PNG"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels.std()) > 0


# --------------------------------------------------------------------------------------------- Table 1


def test_table1_picks_rows_and_computes_improvement() -> None:
    rows = rows_of(table1(grid_256()))
    assert rows[(256, "Baseline")] == ["Baseline (B=1, γ=0)", "5.00 ± 1.00", "37.5 ± 12.5", "8"]
    assert rows[(256, "Branch-wise")] == ["Branch-wise (B=8, γ=0)", "12.00 ± 0.00", "100.0 ± 0.0", "8"]
    assert rows[(256, "Seq-wise")] == ["Seq-wise (B=1, γ=4)", "3.00 ± 0.00", "25.0 ± 0.0", "8"]
    assert rows[(256, "Latency-optimal")] == ["Latency-optimal (B=4, γ=3)", "4.00 ± 0.00", "87.5 ± 12.5", "8"]
    speedup = 5.0 / 4.0  # baseline mean latency / optimal mean latency
    points = 87.5 - 37.5
    assert rows[(256, "Improve")][1:3] == [f"{speedup:.2f}x", f"+{points:.1f}"] == ["1.25x", "+50.0"]


def test_optimizer_source_overrides_the_rule() -> None:
    # B2 γ0 is slower than the baseline and less accurate than B4 γ3, but the optimizer chose it
    recs = grid_256()
    recs = [r for r in recs if r["config"]["B"] != 2 or r["config"]["gamma"] != 0]
    recs += make_records(2, 0, 256, 0, [T, T, F, F], 6.0, source="optimizer")
    recs += make_records(2, 0, 256, 1, [T, T, T, F], 7.0, source="optimizer")
    rows = rows_of(table1(recs))
    assert rows[(256, "Latency-optimal")] == ["Latency-optimal (B=2, γ=0)", "6.50 ± 0.50", "62.5 ± 12.5", "8"]
    assert rows[(256, "Improve")][1:3] == [f"{5.0 / 6.5:.2f}x", f"+{62.5 - 37.5:.1f}"] == ["0.77x", "+25.0"]


def test_mean_and_std_over_seeds() -> None:
    # three seeds: accuracies 1/3, 2/3, 3/3 of three problems; latencies 1..9 s
    recs = (make_records(1, 0, 128, 0, [T, F, F], [1.0, 2.0, 3.0])
            + make_records(1, 0, 128, 1, [T, T, F], [4.0, 5.0, 6.0])
            + make_records(1, 0, 128, 2, [T, T, T], [7.0, 8.0, 9.0]))
    acc = [100 / 3, 200 / 3, 100.0]
    lat = [float(x) for x in range(1, 10)]
    cells = rows_of(table1(recs))[(128, "Baseline")]
    assert cells[1] == f"{statistics.fmean(lat):.2f} ± {statistics.pstdev(lat):.2f}" == "5.00 ± 2.58"
    assert cells[2] == f"{statistics.fmean(acc):.1f} ± {statistics.pstdev(acc):.1f}" == "66.7 ± 27.2"
    assert cells[3] == "9"


def test_missing_configurations_show_dashes() -> None:
    recs = make_records(1, 0, 512, 0, [T, F], 2.0) + make_records(4, 0, 128, 0, [T, T], 5.0)
    rows = rows_of(table1(recs))
    assert [L for (L, m) in rows if m == "Baseline"] == [128, 512]  # blocks by increasing L
    # L=128: no baseline, so no Improve; the latency-optimal row falls back to the most accurate overall
    assert rows[(128, "Baseline")] == ["Baseline", DASH, DASH, DASH]
    assert rows[(128, "Seq-wise")] == ["Seq-wise", DASH, DASH, DASH]
    assert rows[(128, "Branch-wise")][0] == "Branch-wise (B=4, γ=0)"
    assert rows[(128, "Latency-optimal")][0] == "Latency-optimal (B=4, γ=0)"
    assert rows[(128, "Improve")][1:3] == [DASH, DASH]
    # L=512: only the baseline, which is then its own latency-optimal choice
    assert rows[(512, "Branch-wise")] == ["Branch-wise", DASH, DASH, DASH]
    assert rows[(512, "Latency-optimal")] == ["Latency-optimal (B=1, γ=0)", "2.00 ± 0.00", "50.0 ± 0.0", "2"]
    assert rows[(512, "Improve")][1:3] == ["1.00x", "+0.0"]
    assert table1([]).count("\n") == 2  # header only, no crash


def test_surface_records_are_left_out() -> None:
    surface = {"task": "arith", "problem_id": "p0", "config_key": "surface-B8", "kind": "surface",
               "config": {"B": 8, "thinks": [128, 256], "temperature": 0.7}, "seed": 0, "gold": "1",
               "correct": {"128": [True] * 8}, "latency_s": 1.0, "tokens": 10, "steps": 5}
    assert table1(grid_256() + [surface]) == table1(grid_256())


def test_per_task_tables_when_tasks_are_mixed(tmp_path) -> None:
    runs = tmp_path / "runs.jsonl"
    recs = grid_256() + make_records(1, 0, 256, 0, [T, T], 9.0, task="math500")
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report([runs], tmp_path / "out")[0].read_text()
    assert "## Table 1 — arith" in text and "## Table 1 — math500" in text
    math_block = text.split("## Table 1 — math500")[1].split("##")[0]
    assert "| 256 | Baseline (B=1, γ=0) | 9.00 ± 0.00 | 100.0 ± 0.0 | 2 |" in math_block


# ----------------------------------------------------------------------------------------------- data


def test_speedup_curves_and_accuracy_grid_values() -> None:
    recs = grid_256() + make_records(1, 0, 128, 0, [T, F, F, F], 2.0)
    think, curves = speedup_curves(recs)
    assert think == 256
    assert curves[1] == [(0, 1.0), (2, 5.0 / 3.5), (4, 5.0 / 3.0)]
    assert curves[8] == [(0, 1.0), (4, 12.0 / 6.0)]
    assert curves[4] == [(0, 1.0), (3, 8.0 / 4.0)]
    assert curves[2] == [(0, 1.0), (3, 6.0 / 4.5)]
    think, bs, gs, acc = accuracy_grid(recs)
    assert (think, bs, gs) == (256, [1, 2, 4, 8], [0, 2, 3, 4])
    assert acc[bs.index(4)][gs.index(3)] == 87.5
    assert acc[bs.index(8)][gs.index(0)] == 100.0
    assert acc[bs.index(8)][gs.index(2)] != acc[bs.index(8)][gs.index(2)]  # NaN: not run


def test_plots_without_data_write_nothing(tmp_path, caplog) -> None:
    no_spec = [r for r in grid_256() if r["config"]["gamma"] == 0]
    caplog.set_level(logging.INFO, logger="latts.eval.figures")
    assert plot_speedup_vs_gamma(no_spec, tmp_path / "s.png") is None
    assert "γ>0" in caplog.text
    assert plot_accuracy_vs_latency([], tmp_path / "a.png") is None
    assert plot_accuracy_heatmap([], tmp_path / "h.png") is None
    no_k1 = Profile("m", "float32", {}, [StepSample(branches=2, k=4, context=64, seconds=0.1)])
    assert plot_tokens_per_s_vs_batch(no_k1, tmp_path / "t.png") is None
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- report


def fake_profile() -> dict[str, Any]:
    steps = []
    for context, base in ((256, 0.020), (1024, 0.026)):
        for B in (1, 2, 4, 8, 16):
            for k in (1, 4):
                seconds = base * (1 + 0.12 * B * k)
                steps.append({"branches": B, "k": k, "context": context, "seconds": seconds})
    return {"model": "smollm2-135m-instruct", "dtype": "bfloat16", "machine": {"cpu": "Test CPU"},
            "steps": steps, "prefills": [{"tokens": 64, "seconds": 0.05}]}


def test_write_report_writes_table_and_non_blank_pngs(tmp_path) -> None:
    runs = tmp_path / "runs.jsonl"
    recs = grid_256() + make_records(1, 0, 128, 0, [T, F], 2.0)
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(fake_profile()))
    written = write_report([runs], tmp_path / "out", profile)
    names = [p.name for p in written]
    assert names == ["table1.md", "accuracy_vs_latency.png", "tokens_per_s_vs_batch.png",
                     "speedup_vs_gamma.png", "accuracy_heatmap.png"]
    text = written[0].read_text()
    assert "arith" in text and "74 records" in text
    assert "| 256 | Latency-optimal (B=4, γ=3) | 4.00 ± 0.00 | 87.5 ± 12.5 | 8 |" in text
    assert "| 256 | Improve | 1.25x | +50.0 |" in text
    assert "| B4-g3-ngram-think0:256-T0.7-dlnone | 8 | 87.5 ± 12.5 | 4.00 ± 0.00 |" in text
    for p in written[1:]:
        assert_png_not_blank(p)
    # without a profile there is no throughput figure
    names = [p.name for p in write_report([runs], tmp_path / "out2")]
    assert "tokens_per_s_vs_batch.png" not in names and len(names) == 4


def test_write_report_with_no_records(tmp_path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LattsError, match="no records in .*empty.jsonl"):
        write_report([empty], tmp_path / "out")


def test_write_report_with_a_bad_profile_names_it(tmp_path) -> None:
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in grid_256()))
    bad = tmp_path / "notprofile.json"
    bad.write_text('{"steps": "none"}')
    with pytest.raises(LattsError, match="notprofile.json is not a latts profile"):
        write_report([runs], tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are known good


def test_load_records_missing_path_names_it(tmp_path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps(make_records(1, 0, 64, 0, [T], 1.0)[0]) + "\n")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(LattsError, match="nope.jsonl") as e:
        load_records([a, missing])
    assert "\n" not in str(e.value)
    assert len(load_records([a, a])) == 2


def test_cli_report_writes_table_and_figures(tmp_path: Path) -> None:
    from test_cli import assert_one_line_error, run_latts

    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in grid_256()))
    out = tmp_path / "rep"
    proc = run_latts("report", str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "table1.md").is_file() and "Latency-optimal (B=4, γ=3)" in (out / "table1.md").read_text()
    written = {Path(line).name for line in proc.stdout.split()}
    assert {"table1.md", "accuracy_vs_latency.png", "speedup_vs_gamma.png"} <= written
    assert_one_line_error(run_latts("report", str(tmp_path / "missing.jsonl")), "missing.jsonl")


def test_parallel_series_needs_two_branch_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With only B=1 at γ=0 there is no parallel-scaling line to draw (nor to put in the legend)."""
    import latts.eval.figures as module

    records = make_records(1, 0, 16, 0, [T, F], 1.0) + make_records(1, 0, 64, 0, [T, T], 2.0)
    figures = []
    save = module._save
    monkeypatch.setattr(module, "_save", lambda fig, out: figures.append(fig) or save(fig, out))
    assert plot_accuracy_vs_latency(records, tmp_path / "a.png") is not None
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert not any(label.startswith("parallel scaling") for label in labels), labels
    assert any(label.startswith("sequential scaling") for label in labels)
