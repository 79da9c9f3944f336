"""Engine choice (``--engine auto|torch|llamacpp|hf``) and failing fast: which engine runs a model is decided
from the GGUF header or config.json, and a model the chosen engine cannot run is refused before anything is
converted, naming the engine that can."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latts.engine.loading import loader as loading
from latts.engine.loading.choice import ModelFacts, choose, llamacpp_missing, model_facts
from latts.engine.loading.gguf_header import read_header
from latts.engine.loading.loader import DEFAULT_MODEL, bundled_path, load
from latts.errors import LattsError


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the conversion cache at a temp dir: a refusal must leave it empty."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return loading.cache_root()


def write_gguf(path: Path, arch: str, types: dict[str, str]) -> Path:
    """A tiny GGUF: the header of an ``arch`` model and one tensor of each given GGML type (zeros)."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    for name, kind in types.items():
        qtype = gguf.GGMLQuantizationType[kind]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        if kind == "F32":
            writer.add_tensor(name, np.zeros(256, np.float32))  # a norm-like vector
        else:  # raw blocks: one row of 256 values
            writer.add_tensor(name, np.zeros((1, 256 // block * size), np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_of_the_bundled_model() -> None:
    t0 = time.perf_counter()
    header = read_header(bundled_path(DEFAULT_MODEL))
    print(f"header read in {time.perf_counter() - t0:.2f} s")
    assert header.architecture == "llama"
    assert header.type_counts() == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert header.weight_types() == {"Q4_1", "Q8_0"}  # Q8_0: the tied embedding, the lm_head
    assert header.metadata["llama.block_count"] == 30
    choice = choose(model_facts(bundled_path(DEFAULT_MODEL)))
    assert choice.engine == "torch" and "Q4_1/Q8_0 blocks" in choice.reason


def test_torch_refuses_an_unknown_gguf_architecture_before_converting(tmp_path: Path, tmp_cache: Path) -> None:
    path = write_gguf(tmp_path / "tiny-gemma2.gguf", "gemma2", {"token_embd.weight": "F32"})
    t0 = time.perf_counter()
    with pytest.raises(LattsError) as info:
        load(str(path), engine="torch")
    print(f"refused in {time.perf_counter() - t0:.3f} s")
    msg = str(info.value)
    assert "architecture 'gemma2'" in msg and str(path) in msg
    assert "llama, mistral, qwen2, qwen3" in msg and "--engine llamacpp" in msg
    assert not tmp_cache.exists() or not any(tmp_cache.iterdir())  # nothing was converted


def test_auto_without_llamacpp_says_what_to_install(tmp_path: Path, tmp_cache: Path) -> None:
    # asked when the test runs, not when it is collected: `make test` builds llama-cpp-python beside this
    # suite, and it once finished in between (auto then loaded the file with llama.cpp, as it should)
    if llamacpp_missing() is None:
        pytest.skip("llama.cpp engine present: auto would load the file")
    path = write_gguf(tmp_path / "tiny-gemma2.gguf", "gemma2", {"token_embd.weight": "F32"})
    with pytest.raises(LattsError, match="needs the llamacpp engine") as info:
        load(str(path))
    assert llamacpp_missing() in str(info.value)
    assert "--engine hf" in str(info.value)  # transformers converts gemma2
    assert not tmp_cache.exists() or not any(tmp_cache.iterdir())


def test_hf_engine_refuses_a_gguf_transformers_cannot_convert(tmp_path: Path, tmp_cache: Path) -> None:
    path = write_gguf(tmp_path / "tiny-rwkv.gguf", "rwkv7", {"token_embd.weight": "F32"})
    with pytest.raises(LattsError, match="transformers cannot convert it.*--engine llamacpp"):
        load(str(path), engine="hf")
    assert not tmp_cache.exists() or not any(tmp_cache.iterdir())


def test_llamacpp_engine_refuses_an_hf_folder(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(LattsError, match="runs GGUF files.*--engine hf"):
        choose(model_facts(folder), "llamacpp")


def test_block_types_decide_auto(tmp_path: Path) -> None:
    """A llama GGUF with Q4_0 blocks is the torch engine's; with Q4_K blocks llama.cpp's (or, without it, the
    torch engine de-quantizes them and says what to install); --engine torch de-quantizes and says so."""
    fast = model_facts(write_gguf(tmp_path / "q40.gguf", "llama", {"blk.0.attn_q.weight": "Q4_0",
                                                                  "output_norm.weight": "F32"}))
    assert fast.weight_types == {"Q4_0"}
    assert choose(fast).engine == "torch"
    kq = model_facts(write_gguf(tmp_path / "q4k.gguf", "llama", {"blk.0.attn_q.weight": "Q4_K",
                                                                "blk.0.ffn_down.weight": "Q6_K"}))
    assert kq.weight_types == {"Q4_K", "Q6_K"}
    auto = choose(kq)
    if llamacpp_missing() is None:
        assert auto.engine == "llamacpp" and "Q4_K/Q6_K blocks" in auto.reason
    else:
        assert auto.engine == "torch" and llamacpp_missing() in auto.reason and "de-quantizes" in auto.reason
    forced = choose(kq, "torch")
    assert forced.engine == "torch" and "de-quantizes Q4_K/Q6_K" in forced.reason


def test_unknown_engine_and_unknown_types() -> None:
    with pytest.raises(LattsError, match="unknown engine 'vllm'"):
        choose(ModelFacts(Path("x.gguf"), True, "llama"), "vllm")
    with pytest.raises(LattsError, match="tensor type MADE_UP.*--engine llamacpp"):
        choose(ModelFacts(Path("x.gguf"), True, "llama", frozenset({"MADE_UP"})), "torch")


def test_cli_refusal_is_one_line_and_quick(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny-phi3.gguf", "phi3", {"token_embd.weight": "F32"})
    env_cache = tmp_path / "cache"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "latts.cli", "generate", "hi", "--engine", "torch", "--model",
                           str(path)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**__import__("os").environ, "XDG_CACHE_HOME": str(env_cache), "NO_COLOR": "1"})
    print(f"latts generate refused in {time.perf_counter() - t0:.2f} s (process start and imports included)")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error:")
    assert "architecture 'phi3'" in line and "--engine llamacpp" in line
    assert not (env_cache / "latts" / "models").exists()
    bad = subprocess.run([sys.executable, "-m", "latts.cli", "generate", "hi", "--engine", "nope"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert bad.returncode == 2 and "unknown engine 'nope'" in bad.stderr


REFUSE_IN_PROCESS = """
import sys
from latts.cli import main
sys.argv = ["latts", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    print(exc.code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", [["generate", "hi"], ["solve", "1+1"], ["profile"], ["optimize", "--deadline", "5"],
                                     ["eval"], ["serve"], ["demo"]])
def test_every_model_command_refuses_before_importing_torch(tmp_path: Path, command: list[str]) -> None:
    """The refusal comes from the header alone, before torch (1.5-2 s to import here) is: what keeps it within
    a second on every command that loads a model (benchmarks/refusal_time.py times it)."""
    path = write_gguf(tmp_path / "tiny-phi3.gguf", "phi3", {"token_embd.weight": "F32"})
    proc = subprocess.run([sys.executable, "-c", REFUSE_IN_PROCESS, *command, "--engine", "torch", "--model", str(path)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "NO_COLOR": "1"})
    assert "architecture 'phi3'" in proc.stderr and "--engine llamacpp" in proc.stderr, proc.stderr
    assert proc.stdout.split() == ["2", "False"]


def test_engine_is_for_the_embedded_backend() -> None:
    from latts.backends import RemoteOptions, open_backend

    with pytest.raises(LattsError, match="--backend openai the server runs it"):
        open_backend("openai", "m", remote=RemoteOptions("http://127.0.0.1:1/v1"), engine="torch")
    with pytest.raises(LattsError, match="unknown engine 'tpu'"):
        open_backend("embedded", DEFAULT_MODEL, engine="tpu")


def test_llamacpp_hazards_are_avoided_only_where_all_three_hold() -> None:
    """A hazard needs the CPU feature, a build with the path and a release without the fix; nothing else changes."""
    from dataclasses import replace

    from latts.engine.models.llamacpp.hazards import AMX_MATMUL, _release

    amx, zen4 = frozenset({"avx512_vnni", "amx_int8", "amx_tile"}), frozenset({"avx512_vnni", "avx512_bf16"})
    built = "CPU : AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 |"
    no_amx_build = built.replace("AMX_INT8 = 1 | ", "")
    assert AMX_MATMUL.affects("0.3.36", built, amx)
    assert not AMX_MATMUL.affects("0.3.36", built, zen4)  # a Zen 4 never reaches it
    assert not AMX_MATMUL.affects("0.3.36", no_amx_build, amx)  # built with -mno-amx-*: repacking kept
    fixed = replace(AMX_MATMUL, fixed_in="0.3.37")
    assert fixed.affects("0.3.36", built, amx) and not fixed.affects("0.3.37", built, amx)
    assert not fixed.affects("0.4.0rc1", built, amx) and _release("0.3.36+cpu") == (0, 3, 36)
    assert dict(AMX_MATMUL.params) == {"use_extra_bufts": False}
    assert AMX_MATMUL.describe().startswith("avoided llama.cpp's AMX matmul (")
