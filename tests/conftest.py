"""Shared fixtures: the real default model, loaded once per test session."""

from __future__ import annotations

import pytest
import torch

from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, LoadedModel, load


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


SERVER_KEY = "test-key-24"


@pytest.fixture(scope="session")
def latts_server(tmp_path_factory):
    """A real ``latts serve`` on 127.0.0.1 (arith prompts, an API key): its base URL. Shared by the server
    and playground tests, so the model loads and the least service time is measured once."""
    from servers import free_port, latts_cmd, running

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = latts_cmd("serve", "--port", str(port), "--task", "arith", "--max-budget", "30", "--max-branches", "16",
                    "--default-budget", "6", "--api-key", SERVER_KEY)
    with running(cmd, f"http://127.0.0.1:{port}/health", log, timeout_s=600):  # start-up measures; slow on a busy CPU
        yield f"http://127.0.0.1:{port}"
