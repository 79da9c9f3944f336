"""Which engine runs a model, and why — decided from the GGUF header or ``config.json`` alone, in well under a
second, before any weight is converted or loaded.

Three engines run a model here:

- ``torch``: latts' own decoder (:mod:`latts.engine.models.transformer`): the fast one, for the architectures it
  has (``TORCH_ARCHITECTURES``); on a GGUF its native step multiplies Q4_0/Q4_1/Q8_0 blocks as they
  are (F32/F16/BF16 run dense); other block types (K-quants, IQ) are de-quantized to dense weights first.
- ``llamacpp``: llama.cpp in process (:mod:`latts.engine.models.llamacpp.model`, needs llama-cpp-python): every GGUF
  architecture and quantization, as the file has them.
- ``hf``: transformers' own model and cache (:mod:`latts.engine.models.hf_model`): any architecture transformers
  knows, the slow path.

``auto`` picks the torch engine where it has the architecture and fast kernels for the file's blocks,
llama.cpp for any other GGUF, and ``hf`` for an HF folder of an architecture the torch engine does not know.
An engine asked for by name that cannot run the model is refused here, naming the one that can.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from latts.engine.models.catalog import INSTALL_LLAMACPP, TORCH_ARCHITECTURES, TORCH_BLOCK_TYPES, TORCH_FAST_TYPES
from latts.errors import LattsError

ENGINES = ("auto", "torch", "llamacpp", "hf")
_DENSE = frozenset({"F32", "F16", "BF16", "F64"})


def check_engine(name: str) -> str:
    """``name`` if it is an engine choice, else a one-line error listing them (checked before any load)."""
    if name not in ENGINES:
        raise LattsError(f"unknown engine '{name}': use {', '.join(ENGINES)}")
    return name


@dataclass(frozen=True)
class ModelFacts:
    """What a model's header or config says, as far as choosing an engine needs."""

    source: Path
    gguf: bool
    architecture: str  # GGUF general.architecture or config.json model_type
    weight_types: frozenset[str] = frozenset()  # GGUF only: the types of the matrices a forward multiplies

    @property
    def where(self) -> str:
        """How messages name the model: ``architecture 'gemma2' in x.gguf``."""
        return f"architecture '{self.architecture}' in {self.source}"


@dataclass(frozen=True)
class Choice:
    """The engine that runs a model and the reason, for load reports and ``latts models``."""

    engine: str
    reason: str


def model_facts(source: Path) -> ModelFacts:
    """Read what choosing an engine needs from a GGUF header or an HF folder's config.json (no weights)."""
    if source.is_dir():
        try:
            config = json.loads((source / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise LattsError(f"cannot read {source / 'config.json'} ({type(exc).__name__}: {exc})") from None
        return ModelFacts(source, False, str(config.get("model_type", "?")))
    from latts.engine.loading.gguf_header import read_header

    header = read_header(source)
    return ModelFacts(source, True, header.architecture, frozenset(header.weight_types()))


def torch_architectures() -> tuple[str, ...]:
    """The architectures latts' torch engine runs."""
    return TORCH_ARCHITECTURES


def llamacpp_missing() -> str | None:
    """None when the llama.cpp engine can run here, else what is missing (and how to get it)."""
    if importlib.util.find_spec("latts.engine.models.llamacpp.model") is None:
        return "this latts has no llama.cpp engine (latts.engine.models.llamacpp.model)"
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed ({INSTALL_LLAMACPP})"
    return None


def _undequantizable(types: frozenset[str]) -> set[str]:
    """The GGUF types among ``types`` that transformers' GGUF loader (gguf-py) cannot de-quantize."""
    import gguf.quants

    return {t for t in types if t not in _DENSE and not hasattr(gguf.quants, t)}


def _hf_gguf_architecture(arch: str) -> bool:
    """True when transformers can convert a GGUF of ``arch`` (its loader's own list)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return arch.replace("_", "") in {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES}


def _hf_architecture(model_type: str) -> bool:
    """True when transformers' ``AutoModelForCausalLM`` builds a model of ``model_type``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _types(types: set[str] | frozenset[str]) -> str:
    return "/".join(sorted(types))


def choose(facts: ModelFacts, requested: str = "auto") -> Choice:
    """The engine for ``facts`` (``requested``: auto, torch, llamacpp or hf) and why; an engine that cannot run
    the model is refused with a :class:`LattsError` naming the one that can."""
    check_engine(requested)
    pick = {"auto": _auto, "torch": _torch, "llamacpp": _llamacpp, "hf": _hf}[requested]
    return pick(facts)


def choose_for(model: str, requested: str = "auto") -> Choice:
    """:func:`choose` for a model as a command names it (bundled name, GGUF file or HF folder): what every
    command runs before it imports an engine, so a model the engine cannot run is refused at once."""
    from latts.engine.loading.sources import resolve

    return choose(model_facts(resolve(model)), requested)


def _auto(f: ModelFacts) -> Choice:
    arch_ok = f.architecture in torch_architectures()
    if not f.gguf:
        if arch_ok:
            return Choice("torch", f"auto: latts' torch engine has {f.architecture}")
        if _hf_architecture(f.architecture):
            return Choice("hf", f"auto: the torch engine has no {f.architecture}; transformers runs it")
        raise LattsError(f"{f.where}: neither latts' torch engine ({', '.join(torch_architectures())}) nor "
                         f"transformers' AutoModelForCausalLM knows it")
    slow = set(f.weight_types - TORCH_FAST_TYPES)
    if arch_ok and not slow:
        return Choice("torch", _torch_reason(f, "auto: "))
    missing = llamacpp_missing()
    if missing is None:
        why = (f"the torch engine has no {f.architecture}" if not arch_ok
               else f"{_types(slow)} blocks have no torch-engine kernels")
        return Choice("llamacpp", f"auto: {why}; llama.cpp runs them as they are")
    if arch_ok and not _undequantizable(f.weight_types):
        return Choice("torch", _torch_reason(f, f"auto: {missing}, so ") )
    hint = " (or --engine hf: transformers converts it, slowly)" if (
        _hf_gguf_architecture(f.architecture) and not _undequantizable(f.weight_types)) else ""
    raise LattsError(f"{f.where} needs the llamacpp engine, but {missing}{hint}")


def _torch_reason(f: ModelFacts, prefix: str) -> str:
    """Why the torch engine, and how it runs the file's blocks."""
    slow = set(f.weight_types - TORCH_FAST_TYPES)
    blocks = f.weight_types & TORCH_BLOCK_TYPES
    if slow:
        return (f"{prefix}the torch engine de-quantizes {_types(slow)} blocks to dense weights (slower; "
                f"--engine llamacpp runs them as they are)")
    if blocks:
        return f"{prefix}latts' torch engine has {f.architecture} and kernels for the file's {_types(blocks)} blocks"
    return f"{prefix}latts' torch engine has {f.architecture}"


def _torch(f: ModelFacts) -> Choice:
    archs = torch_architectures()
    if f.architecture not in archs:
        other = "llamacpp" if f.gguf else "hf"
        raise LattsError(f"{f.where}: the torch engine runs {', '.join(archs)}; use --engine {other} (or auto)")
    bad = _undequantizable(f.weight_types)
    if bad:
        raise LattsError(f"tensor type {_types(bad)} in {f.source}: the torch engine cannot de-quantize it; "
                         f"use --engine llamacpp (or auto)")
    return Choice("torch", _torch_reason(f, "--engine torch: "))


def _llamacpp(f: ModelFacts) -> Choice:
    if not f.gguf:
        other = "torch" if f.architecture in torch_architectures() else "hf"
        raise LattsError(f"the llamacpp engine runs GGUF files; {f.source} is a Hugging Face folder: use "
                         f"--engine {other} (or auto)")
    missing = llamacpp_missing()
    if missing is not None:
        raise LattsError(f"--engine llamacpp for {f.source}: {missing}")
    return Choice("llamacpp", "--engine llamacpp: llama.cpp runs the file's blocks as they are")


def _hf(f: ModelFacts) -> Choice:
    if f.gguf:
        bad = _undequantizable(f.weight_types)
        if not _hf_gguf_architecture(f.architecture) or bad:
            what = f"tensor type {_types(bad)} in {f.source}" if bad else f.where
            raise LattsError(f"{what}: transformers cannot convert it for the hf engine; use --engine llamacpp "
                             f"(or auto)")
        return Choice("hf", "--engine hf: transformers runs the de-quantized GGUF")
    if not _hf_architecture(f.architecture):
        raise LattsError(f"{f.where}: transformers' AutoModelForCausalLM does not know it")
    return Choice("hf", "--engine hf: transformers runs it")
