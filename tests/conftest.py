"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

import pytest
import torch

from latts.engine.engine import Engine
from latts.engine.loading import DEFAULT_MODEL, LoadedModel, load


@pytest.fixture(scope="session")
def fp32_model() -> LoadedModel:
    """The bundled SmolLM2-135M-Instruct in fp32 (exactness tests run in fp32)."""
    return load(DEFAULT_MODEL, "float32")


@pytest.fixture(scope="session")
def fast_model() -> LoadedModel:
    """The bundled model in this CPU's fast formats (``--dtype auto``: the native step where kernels build)."""
    return load(DEFAULT_MODEL, "auto")


@pytest.fixture(scope="session")
def engine(fp32_model: LoadedModel) -> Engine:
    """An fp32 engine on the default model."""
    return Engine(fp32_model)


@pytest.fixture(scope="session")
def hf_model(fp32_model: LoadedModel):
    """The reference: HF transformers' own model on the same weights, fp32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(fp32_model.hf_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def draft_folder(fp32_model: LoadedModel, tmp_path_factory) -> str:
    """A genuine separate draft model: the default model's first 6 layers saved as its own HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("draft6")
    hf = AutoModelForCausalLM.from_pretrained(fp32_model.hf_path, dtype=torch.float32)
    hf.model.layers = hf.model.layers[:6]
    hf.config.num_hidden_layers = 6
    hf.save_pretrained(folder)
    AutoTokenizer.from_pretrained(fp32_model.hf_path).save_pretrained(folder)
    return str(folder)
