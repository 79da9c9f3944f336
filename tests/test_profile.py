"""A profile as data: saved and read back unchanged, bad files named, and reading one needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from latts.errors import LattsError
from latts.latency.model import LoopSample, PrefillSample, StepSample
from latts.latency.profile import Profile
from latts.provenance import MeasuredWith


def sample_profile() -> Profile:
    return Profile("smollm2-135m-instruct", "bfloat16", {"cpu": "Test CPU", "cores": 2},
                   [StepSample(b, k, c, 0.02 + 0.001 * b * k + 0.00001 * c)
                    for c in (256, 1024) for b in (1, 4, 8) for k in (1, 2)] + [StepSample(8, 1, 256, 0.04, own=256)],
                   [PrefillSample(64, 0.05), PrefillSample(256, 0.12)], ngram_per_row_s=1e-5, switch_rows=4,
                   loops=[LoopSample(1, 0, 0.001), LoopSample(8, 3, 0.004)],
                   measured_with=MeasuredWith("native-0123456789ab", "bfloat16 q4+q8", "Test CPU", 2, "2.13.0+cpu"))


def test_save_then_load_is_the_same_profile(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "profile.json"
    sample_profile().save(path)
    assert Profile.load(path) == sample_profile()
    doc = json.loads(path.read_text())
    assert doc["steps"][3] == {"branches": 4, "k": 2, "context": 256, "seconds": 0.02 + 0.008 + 0.00256, "own": 0}
    assert doc["steps"][-1]["own"] == 256
    assert doc["measured_with"] == {"engine": "native-0123456789ab", "weights": "bfloat16 q4+q8", "cpu": "Test CPU",
                                    "threads": 2, "torch": "2.13.0+cpu"}


def test_older_profiles_without_loops_switch_or_own_tokens_still_load(tmp_path: Path) -> None:
    d = sample_profile().to_dict()
    for key in ("loops", "switch_rows", "ngram_per_row_s", "measured_with"):
        del d[key]
    for step in d["steps"]:  # before forwards over rows' own tokens were measured
        del step["own"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    prof = Profile.load(path)
    assert (prof.loops, prof.switch_rows, prof.ngram_per_row_s, prof.measured_with) == ([], 0, 0.0, None)
    assert prof.steps[:-1] == sample_profile().steps[:-1] and prof.steps[-1].own == 0


@pytest.mark.parametrize(("content", "words"), [
    ("not json", "bad.json is not a latts profile"),
    ('{"model": "m", "dtype": "float32", "machine": {}}', "bad.json is not a latts profile ('steps')"),
    ('{"model": "m", "dtype": "float32", "machine": {}, "steps": [{"b": 1}], "prefills": []}',
     "bad.json is not a latts profile"),
])
def test_bad_profiles_are_named(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(LattsError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        Profile.load(path)
    assert "\n" not in str(e.value)
    with pytest.raises(LattsError, match="cannot read profile .*missing.json"):
        Profile.load(tmp_path / "missing.json")


def test_reading_a_profile_imports_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    sample_profile().save(path)
    code = ("import sys; from latts.latency.profile import Profile; "
            f"p = Profile.load({str(path)!r}); p.fit(); print(len(p.steps), 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["13", "False"]
