"""Cached measurements record what measured them, and one measured by another engine is never used.

Profiles and plans written with another engine build (or weight format) are refused when the user
named them and measured again (profiles) or skipped (plans) when they are latts' own cache; with
latts' kernels off the default model still loads and decodes, on torch's ops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latts.backends import Opened
from latts.engine.models.linear import can_int4
from latts.engine.loading.machine import cpu_name, default_dtype
from latts.latency.model import PrefillSample, StepSample
from latts.latency.profile import Profile
from latts.paths import cache_dir
from latts.planning import Planner, _profile
from latts.latency.plans import plans_path, save_plans, saved_frontier
from latts.progress import Reporter
from latts.provenance import MeasuredWith, Stale, stale_reason
from latts.request import GenerateRequest
from test_cli import run_latts
from test_planning import FLAT, SURFACE

OTHER = MeasuredWith("native-aaaaaaaaaaaa", "bfloat16 q4+q8", "Test CPU", 2, "2.13.0+cpu")
HERE = MeasuredWith("native-bbbbbbbbbbbb", "bfloat16 q4+q8", "Test CPU", 2, "2.13.0+cpu")


class Notes(Reporter):
    """A reporter that keeps its notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def _profile_of(model: str, measured_with: MeasuredWith | None) -> Profile:
    return Profile(model, "float32", {"cpu": "Test CPU"}, [StepSample(1, 1, 64, 0.01), StepSample(4, 1, 64, 0.02)],
                   [PrefillSample(64, 0.05)], measured_with=measured_with)


def test_the_reason_names_only_what_differs() -> None:
    assert stale_reason(HERE, HERE) is None
    assert stale_reason(OTHER, HERE) == ("was measured with engine build native-aaaaaaaaaaaa; "
                                         "this engine has engine build native-bbbbbbbbbbbb")
    fp32 = MeasuredWith("torch-ops", "float32", "Test CPU", 4, "2.13.0+cpu")
    assert stale_reason(fp32, HERE) == ("was measured with engine build torch-ops, weights float32, threads 4; "
                                        "this engine has engine build native-bbbbbbbbbbbb, weights bfloat16 q4+q8, "
                                        "threads 2")
    assert stale_reason(None, HERE) == "records no engine build or weight format (written before latts recorded them)"
    assert MeasuredWith.from_dict(HERE.to_dict()) == HERE and MeasuredWith.from_dict(None) is None


def test_the_reference_model_describes_itself(fp32_model) -> None:
    # the fp32 reference path runs on torch's ops whatever kernels this machine has
    assert fp32_model.measured_with() == MeasuredWith("torch-ops", "float32", cpu_name(), torch.get_num_threads(),
                                                      torch.__version__)


def test_stale_plans_are_refused_when_named_and_skipped_when_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    planner = Planner(FLAT, SURFACE, {}, prompt_len=50, answer_tokens=0, answer_prompt_tokens=0)
    named, cached = tmp_path / "named.json", plans_path("m", "arith")
    assert cached.is_relative_to(tmp_path / "cache")
    for path in (named, cached):
        save_plans(planner, path, "m", "arith", OTHER)
    with pytest.raises(Stale) as refused:
        saved_frontier(str(named), "m", "arith", HERE)
    assert str(refused.value) == (f"plans file {named} was measured with engine build native-aaaaaaaaaaaa; this "
                                  "engine has engine build native-bbbbbbbbbbbb: re-run `latts optimize --task arith`")
    notes: list[str] = []
    assert saved_frontier(None, "m", "arith", HERE, notes.append) is None  # the default plan applies
    assert len(notes) == 1 and notes[0].startswith(f"plans file {cached} was measured with engine build native-aaa")
    assert notes[0].endswith("until then the default plan applies")
    # plans measured here are followed; plans from before the record are stale
    save_plans(planner, cached, "m", "arith", HERE)
    frontier = saved_frontier(None, "m", "arith", HERE, notes.append)
    assert [(c.plan.branches, c.plan.max_think) for c in frontier] == [(4, 100), (4, 400)] and len(notes) == 1
    doc = json.loads(named.read_text())
    del doc["measured_with"]
    named.write_text(json.dumps(doc))
    with pytest.raises(Stale, match="records no engine build or weight format"):
        saved_frontier(str(named), "m", "arith", HERE)


def test_a_stale_profile_is_refused_when_named_and_measured_again_by_default(tmp_path: Path, monkeypatch) -> None:
    import latts.planning

    measured: list[object] = []

    def measure(backend, progress=None) -> Profile:  # stands in for the minutes of a real profile
        measured.append(backend)
        return _profile_of("m", HERE)

    monkeypatch.setattr(latts.planning, "run_profile", measure)
    monkeypatch.chdir(tmp_path)
    opened = Opened("m", backend="the engine")
    for name in ("mine.json", "profile.json"):
        _profile_of("m", OTHER).save(Path(name))
    before = Path("mine.json").read_text()
    with pytest.raises(Stale) as refused:
        _profile("mine.json", opened, HERE, Notes())
    assert str(refused.value) == ("profile mine.json was measured with engine build native-aaaaaaaaaaaa; this engine "
                                  "has engine build native-bbbbbbbbbbbb: re-run `latts profile --out mine.json`")
    assert measured == [] and Path("mine.json").read_text() == before  # a named file is never overwritten
    reporter = Notes()
    prof = _profile(None, opened, HERE, reporter)  # the default profile.json: latts' own, measured again
    assert measured == ["the engine"] and prof.measured_with == HERE
    assert Profile.load(Path("profile.json")).measured_with == HERE
    assert reporter.notes == ["profile profile.json was measured with engine build native-aaaaaaaaaaaa; this engine "
                              "has engine build native-bbbbbbbbbbbb: measuring this machine again (a few minutes)"]
    assert _profile(None, opened, HERE, reporter).measured_with == HERE and len(measured) == 1  # now current
    assert _profile("mine.json", opened, OTHER, reporter).measured_with == OTHER  # current for its own engine


@pytest.mark.slow
def test_cli_refuses_a_stale_profile_before_any_run(tmp_path: Path) -> None:
    prof, surface = tmp_path / "old.json", tmp_path / "surface.jsonl"
    _profile_of("smollm2-135m-instruct", OTHER).save(prof)
    proc = run_latts("optimize", "--task", "arith", "--profile", str(prof), "--surface", str(surface), timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]  # after the model's load report: the one error line
    assert err.startswith(f"error: profile {prof} was measured with engine build native-aaaaaaaaaaaa, "), err
    assert err.endswith(f": re-run `latts profile --out {prof}`") and "this engine has engine build " in err
    assert not surface.exists()  # refused before the wide run


_NO_KERNELS = """
import json
from latts.engine.models import kernels
from latts.engine.engine import Engine
from latts.engine.loading.loader import load
from latts.request import GenerateRequest
loaded = load()
engine = Engine(loaded)
gen = engine.generate(GenerateRequest(engine.encode(PROMPT), branches=2, max_new_tokens=16, sampling=None,
                                      ignore_eos=True))
print(json.dumps({"compiled": kernels.compiled() is not None, "build": kernels.build_id(),
                  "measured_with": loaded.measured_with().to_dict(), "rows": [b.token_ids for b in gen.branches]}))
"""
PROMPT = "What is 7 + 5? Answer briefly."


@pytest.mark.slow
def test_without_kernels_the_default_model_runs_on_torch_ops(request) -> None:
    env = dict(os.environ, LATTS_NO_KERNELS="1")
    proc = subprocess.run([sys.executable, "-c", f"PROMPT = {PROMPT!r}" + _NO_KERNELS], capture_output=True, text=True,
                          timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["compiled"] is False and got["build"] == "torch-ops"
    # what its measurements record: torch's ops, and (where torch has the kernel) torch's int4 kernel for
    # the 4-bit layers, whose bf16 activations cost ≈ 3e-3 relative error a projection
    dtype = str(default_dtype()).removeprefix("torch.")
    assert got["measured_with"]["engine"] == "torch-ops"
    assert got["measured_with"]["weights"] == (f"{dtype} int4" if can_int4() else dtype)
    engine = request.getfixturevalue("engine")  # the fp32 reference, loaded once the subprocess is done
    ids = engine.encode(PROMPT)
    ref = engine.generate(GenerateRequest(ids, branches=1, max_new_tokens=16, sampling=None, ignore_eos=True))
    # greedy tokens of the exact fp32 reference path: on this prompt the bf16 activations flip no argmax
    assert got["rows"] == [ref.branches[0].token_ids] * 2
    if got["measured_with"]["weights"].endswith("int4"):  # its row threshold was tuned under its own build's key
        table = json.loads((cache_dir("models") / "quant-rows.json").read_text())
        assert any("|torch-ops|" in key and "|int4|" in key for key in table)
