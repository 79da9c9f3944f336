"""Find and load models: the bundled default, local Hugging Face folders and local GGUF files.

GGUF files are de-quantised once by transformers' GGUF loader (≈ 20 s for the default model) and
the result is cached as an fp32 safetensors folder under ``$XDG_CACHE_HOME/latts/models`` (default
``~/.cache/latts/models``), so later loads take about a second. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from latts.config import check_dtype
from latts.engine.loading.machine import cpu_name, default_dtype, engine_build, tuned_quant_rows
from latts.engine.loading.sources import BUNDLED_MODELS, DEFAULT_MODEL, bundled_path, resolve  # noqa: F401 (re-exported)
from latts.errors import LattsError
from latts.paths import cache_dir
from latts.provenance import MeasuredWith
from latts.engine.models.threads import configured_threads

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """Map ``auto``/``float32``/``bfloat16`` (or ``fp32``/``bf16``) to a torch dtype."""
    if check_dtype(name) == "auto":
        return default_dtype()
    return DTYPES[name]


def cache_root() -> Path:
    """Where converted models are kept."""
    return cache_dir("models")


def _file_key(path: Path) -> str:
    """A cache key that changes when the file does (size, mtime and a hash of its ends)."""
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def gguf_to_hf_folder(path: Path) -> Path:
    """De-quantise a GGUF file into a cached fp32 HF folder (done once per file) and return it."""
    target = cache_root() / f"{path.stem}-{_file_key(path)}"
    if (target / "config.json").is_file():
        return target
    from latts.engine.loading.gguf_header import read_header

    arch = read_header(path).architecture  # a damaged file is named here, before the slow part
    log.warning("converting %s (%s) to dense weights in %s, once (20-70 s; later loads reuse it)", path, arch,
                target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except ValueError as exc:
        raise LattsError(f"unsupported architecture '{arch}' in {path}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        raise LattsError(f"cannot load GGUF file {path} ({type(exc).__name__}: {exc})") from None
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-"quantised" model otherwise
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("quantization_config", None)
        config_file.write_text(json.dumps(config, indent=2))
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class LoadedModel:
    """A model ready for the engine: latts' transformer, its tokenizer, and where it came from."""

    name: str
    source: Path
    hf_path: Path
    model: "Transformer"  # noqa: F821 - imported lazily
    tokenizer: object
    eos_token_ids: tuple[int, ...]
    dtype: torch.dtype
    load_s: float
    quant_max_rows: int = 0  # forwards of up to this many rows use the exact quantized weights (0: never)
    quant_format: str = ""  # which: 'q4+q8' (latts' kernels) or 'int4' (torch's)
    kernels_s: float = 0.0  # of load_s: building (once per machine, ~1 min) or loading latts' CPU kernels
    native: bool = False  # decode steps run in latts' native step (8-bit activations x the blocks)
    engine: str = "torch"  # which engine runs the model: torch (latts' own), llamacpp or hf
    engine_reason: str = ""  # why that engine (see latts.engine.loading.choice), for load reports
    avoided: tuple[str, ...] = ()  # hardware paths the engine steers around here, and why (load reports)
    kernels_missing: str | None = None  # why latts' kernels do not run a model that wanted them (the CLI warns)

    @property
    def report(self) -> str:
        """The load report's middle: engine, its build, weights, why that engine and any hardware path avoided,
        e.g. ``torch engine native-1a2b3c4d5e6f, bfloat16 prefill, native int8 x q4+q8 decode; auto: ...``."""
        why = f"; {self.engine_reason}" if self.engine_reason else ""
        avoided = "".join(f"; {a}" for a in self.avoided)
        return f"{self.engine} engine {self.measured_with().engine}, {self.weights}{why}{avoided}"

    @property
    def weights(self) -> str:
        """The weight formats in use, for load reports: e.g. ``float32, q4/q8 blocks up to 4 rows``."""
        dtype = str(self.dtype).removeprefix("torch.")
        if self.engine == "hf":
            return f"{dtype}, transformers' own forward (the slow path)"
        if self.native:
            return f"{dtype} prefill, native int8 x {self.quant_format} decode"
        return f"{dtype}, {self.quant_format} up to {self.quant_max_rows} rows" if self.quant_max_rows else dtype

    def measured_with(self) -> MeasuredWith:
        """What a measurement on this model records, and what a cached one must match to be used: the engine
        build (latts' kernels or torch's ops), the weight format (dtype and quantized format), CPU and threads."""
        dtype = str(self.dtype).removeprefix("torch.")
        weights = f"{dtype} {self.quant_format}" if self.quant_format else dtype
        if self.engine == "llamacpp":
            from latts.engine.models.llamacpp.model import llamacpp_build

            return MeasuredWith(llamacpp_build(), self.quant_format, cpu_name(), configured_threads(),
                                torch.__version__)
        build = engine_build(self.model.fast)
        if self.engine == "hf":
            import transformers

            build = f"hf-transformers-{transformers.__version__}"
        return MeasuredWith(build, weights, cpu_name(), configured_threads(),
                            torch.__version__)

    def encode_chat(self, user_message: str, system: str | None = None) -> list[int]:
        """Token ids of a one-turn chat prompt, through the tokenizer's chat template when it has one."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user_message}
            ]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(tok(user_message)["input_ids"])


def hf_folder(model: str) -> Path:
    """The HF folder holding ``model``'s weights and tokenizer (converting a GGUF file once)."""
    path = resolve(model)
    return path if path.is_dir() else gguf_to_hf_folder(path)


def load(model: str = DEFAULT_MODEL, dtype: str | torch.dtype = "auto", fast: bool | None = None,
         engine: str = "auto") -> LoadedModel:
    """Load ``model`` (bundled name, HF folder or GGUF file) in ``dtype`` on ``engine``.

    ``engine`` is ``auto``, ``torch`` (latts' own decoder), ``llamacpp`` or ``hf`` (transformers' own forward);
    see :mod:`latts.engine.loading.choice`. The choice is made from the GGUF header or config.json before anything is
    converted, so a model the chosen engine cannot run is refused in well under a second, naming the engine
    that can. ``fast`` (by default: unless ``dtype`` is an explicit float32) picks this CPU's fastest weight
    formats on the torch engine; float32 alone is the reference path, bit for bit what HF computes. A draft
    model is loaded with its target's choice, so both run the same kind of kernels.
    """
    from latts.engine.loading.choice import choose_for

    torch_dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    t0 = time.perf_counter()
    source = resolve(model)
    choice = choose_for(model, engine)
    name = model if model in BUNDLED_MODELS else source.name
    if choice.engine == "llamacpp":
        loaded = load_gguf(source, name)
    elif choice.engine == "hf":
        loaded = _load_hf(source, name, torch_dtype, t0)
    else:
        loaded = _load_torch(source, name, dtype, torch_dtype, fast, t0)
    loaded.engine, loaded.engine_reason = choice.engine, choice.reason
    if choice.engine == "hf":
        log.warning("%s runs on the hf engine: transformers' own forward, the slow path (%s; benchmarks/hf_engine.py "
                    "measures how much slower)", name, choice.reason)
    return loaded


def load_gguf(path: Path, name: str) -> LoadedModel:
    """Load a GGUF file for the llama.cpp engine: the model, and its tokenizer and chat template from the file.

    Any architecture and quantization llama.cpp runs; threads: torch's count at each call (fewer while other processes hold cores).
    """
    from latts.engine.models.llamacpp.model import LlamaCppModel
    from latts.engine.models.llamacpp.tokenizer import GGUFTokenizer

    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise LattsError(f"GGUF file {path} does not exist")
    model = LlamaCppModel(path)
    tokenizer = GGUFTokenizer(model.lib, model.model)
    return LoadedModel(name=name, source=path, hf_path=path, model=model, tokenizer=tokenizer,
                       eos_token_ids=tokenizer.eos_token_ids, dtype=torch.float32,
                       load_s=time.perf_counter() - t0, quant_format=model.weight_format, engine="llamacpp",
                       avoided=tuple(h.describe() for h in model.avoided))


def _hf_parts(source: Path) -> tuple[Path, object, object]:
    """The HF folder of ``source`` (a GGUF converted once), its transformers model (fp32) and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = source if source.is_dir() else gguf_to_hf_folder(source)
    try:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise LattsError(f"cannot load model from {folder} ({type(exc).__name__}: {exc})") from None
    return folder, hf, tokenizer


def _load_hf(source: Path, name: str, torch_dtype: torch.dtype, t0: float) -> LoadedModel:
    """The ``hf`` engine: transformers' model and cache behind latts' model interface (the slow path)."""
    from latts.engine.models.hf_model import HFModel

    folder, hf, tokenizer = _hf_parts(source)
    model = HFModel(hf, torch_dtype)
    return LoadedModel(name=name, source=source, hf_path=folder, model=model, tokenizer=tokenizer,
                       eos_token_ids=_eos_ids(hf, tokenizer), dtype=torch_dtype, load_s=time.perf_counter() - t0)


def _load_torch(source: Path, name: str, dtype: str | torch.dtype, torch_dtype: torch.dtype, fast: bool | None,
                t0: float) -> LoadedModel:
    """latts' own torch engine (its kernels and native step where this CPU has them)."""
    from latts.engine.models import kernels
    from latts.engine.models.linear import quant_formats
    from latts.engine.models.transformer import Transformer

    # an explicit float32 is the reference path (plain F.linear, what HF computes); anything else
    # gets the fastest formats this CPU has
    if fast is None:
        fast = dtype not in ("float32", "fp32", torch.float32)
    folder, hf, tokenizer = _hf_parts(source)
    t_kernels = time.perf_counter()
    if fast:
        kernels.compiled()  # built here, once per machine, and timed apart
    kernels_s = time.perf_counter() - t_kernels
    transformer = Transformer(hf, torch_dtype, fast=fast).eval()
    eos = _eos_ids(hf, tokenizer)
    del hf
    quant_rows = tuned_quant_rows(transformer) if fast else 0
    return LoadedModel(
        name=name,
        source=source,
        hf_path=folder,
        model=transformer,
        tokenizer=tokenizer,
        eos_token_ids=eos,
        dtype=torch_dtype,
        load_s=time.perf_counter() - t0,
        quant_max_rows=quant_rows,
        quant_format=quant_formats(transformer.projections()),
        kernels_s=kernels_s,
        native=transformer.native is not None,
        kernels_missing=kernels.unavailable_reason() if fast else None,
    )


def _eos_ids(hf: torch.nn.Module, tokenizer: object) -> tuple[int, ...]:
    """Every id that ends a turn: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(hf, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return tuple(sorted(ids))


def list_models() -> list[dict[str, str]]:
    """Bundled and converted models this machine has, for ``latts models``: each with the engine ``auto``
    runs it on and why (from its header or config alone, nothing loaded)."""
    rows = []
    for name in BUNDLED_MODELS:
        try:
            path = bundled_path(name)
        except LattsError as exc:
            rows.append({"name": name, "kind": "bundled GGUF (not installed)", "path": str(exc), "engine": "",
                         "why": ""})
            continue
        rows.append({"name": name, "kind": "bundled GGUF", "path": str(path), **_engine_of(path)})
    root = cache_root()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / "config.json").is_file():
                rows.append({"name": folder.name, "kind": "converted cache", "path": str(folder),
                             **_engine_of(folder)})
    return rows


def _engine_of(path: Path) -> dict[str, str]:
    """``engine`` and ``why`` of the model at ``path`` under ``--engine auto`` (or why none runs it)."""
    from latts.engine.loading.choice import choose, model_facts

    try:
        choice = choose(model_facts(path))
    except LattsError as exc:
        return {"engine": "none", "why": str(exc)}
    return {"engine": choice.engine, "why": choice.reason}


def load_tokenizer(model: str) -> object:
    """Only the tokenizer (with its chat template) of ``model``: what a remote backend needs to format
    prompts exactly as the server's model expects, without loading any weights."""
    from transformers import AutoTokenizer

    folder = hf_folder(model)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise LattsError(f"cannot load the tokenizer of {model} ({type(exc).__name__}: {exc})") from None
