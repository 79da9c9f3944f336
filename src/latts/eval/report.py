"""``latts report``: the markdown tables and the figures of a set of evaluation records, in one folder.

Composes :mod:`latts.eval.tables` (``table1.md``) and :mod:`latts.eval.figures` (the PNGs); the profile
for the throughput figure is read through :class:`latts.latency.profile.Profile`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from latts.errors import LattsError
from latts.eval.figures import write_figures
from latts.eval.tables import load_records, plan_records, report_markdown
from latts.latency.profile import Profile

log = logging.getLogger(__name__)


def write_report(record_paths: Sequence[Path], out_dir: Path, profile_path: Path | None = None) -> list[Path]:
    """Write ``table1.md`` and every figure that has data into ``out_dir``; the written paths, table first.

    ``table1.md`` holds a header (tasks, record count, files), Table 1, the configurations on the
    latency-optimal frontier, and a summary of every configuration (see
    :func:`latts.eval.tables.report_markdown`). Figures: accuracy_vs_latency.png, speedup_vs_gamma.png,
    accuracy_heatmap.png, and with a profile tokens_per_s_vs_batch.png. Raises LattsError if the files
    hold no records or the profile cannot be read.
    """
    paths = [Path(p) for p in record_paths]
    loaded = load_records(paths)
    records = plan_records(loaded)
    if not records:
        skipped = f" (only {len(loaded)} accuracy-surface or other non-plan records)" if loaded else ""
        raise LattsError(f"no records in {', '.join(str(p) for p in paths) or '(no files given)'}{skipped}")
    profile = Profile.load(Path(profile_path)) if profile_path is not None else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "table1.md"
    table_path.write_text(report_markdown(records, paths))
    log.info("wrote %s", table_path)
    return [table_path, *write_figures(records, out_dir, profile)]
