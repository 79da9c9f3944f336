"""``--engine auto`` hands a GGUF the torch engine cannot run fast to llama.cpp, and
``--engine torch`` refuses its architecture before converting anything. Needs the llama.cpp engine
(``latts.engine.models.llamacpp.model``) and llama-cpp-python's build, so it runs with the LATE_TESTS."""

from __future__ import annotations

from pathlib import Path

import pytest

from latts.engine.loading.choice import choose, llamacpp_missing, model_facts
from latts.engine.loading.loader import load
from latts.errors import LattsError

pytestmark = pytest.mark.skipif(llamacpp_missing() is not None, reason=f"no llama.cpp engine: {llamacpp_missing()}")


def test_auto_runs_other_architectures_and_k_quants_on_llamacpp(tmp_path: Path, monkeypatch) -> None:
    gguf_models = pytest.importorskip("gguf_models", reason="tests/gguf_models.py (the llama.cpp engine's GGUFs)")
    path = gguf_models.gguf("stablelm", "Q4_K_M")
    choice = choose(model_facts(path))
    assert choice.engine == "llamacpp" and "no stablelm" in choice.reason
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(LattsError, match="architecture 'stablelm'.*--engine llamacpp"):
        load(str(path), engine="torch")
    assert not (tmp_path / "cache" / "latts" / "models").exists()  # refused before any conversion
    loaded = load(str(path))
    assert loaded.engine == "llamacpp" and loaded.engine_reason == choice.reason
    assert "llamacpp engine" in loaded.report
