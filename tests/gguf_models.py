"""Small random-weight GGUFs of several model families, built here for the llama.cpp engine's tests.

Nothing is downloaded from a model hub: each model is a 2-layer HF model with random weights (hidden
sizes multiples of 256, so llama.cpp's K-quants apply), saved with the default model's GPT2-style BPE
tokenizer (its pre-tokenizer hash is llama.cpp's ``smollm``), converted by llama.cpp's own
``convert_hf_to_gguf.py`` and quantized by ``llama_cpp.llama_model_quantize``. The converter ships in
llama-cpp-python's source distribution (``vendor/llama.cpp`` with its ``gguf-py``), fetched once from
PyPI with ``pip download``; only the converter's files are extracted.

Everything is cached under ``~/.cache/latts/test-ggufs/<versions>`` (llama-cpp-python, transformers,
torch and this module's recipe in the key), so a test session after the first only opens files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
# family -> (HF config class, config overrides): 2 layers, random weights, this tokenizer's vocabulary
FAMILIES: dict[str, tuple[str, dict]] = {
    "starcoder2": ("Starcoder2Config", dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                             num_key_value_heads=2, num_hidden_layers=2,
                                             max_position_embeddings=2048, use_bias=True)),
    "stablelm": ("StableLmConfig", dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                         num_key_value_heads=4, num_hidden_layers=2,
                                         max_position_embeddings=2048, partial_rotary_factor=0.25)),
    "olmo": ("OlmoConfig", dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                 num_key_value_heads=4, num_hidden_layers=2, max_position_embeddings=2048)),
}
# the llama.cpp file types the tests quantize to (llama_cpp.LLAMA_FTYPE_MOSTLY_<name>)
QUANTS = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
_RECIPE = "1"  # bump when the models below change
# random weights with std 0.02 give near-uniform logits, where greedy decoding is a chain of near-ties;
# a larger scale gives peaked distributions (a clear argmax most steps)
_INIT_STD = 0.25


def cache_root() -> Path:
    """Where the converter and the built GGUFs are kept, keyed by the versions that produce them."""
    import torch
    import transformers

    key = hashlib.sha256(f"{LLAMA_CPP_PYTHON}|{transformers.__version__}|{torch.__version__}|{_RECIPE}|"
                         f"{json.dumps(FAMILIES, sort_keys=True)}|{_INIT_STD}".encode()).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "latts", "test-ggufs", key)


def converter() -> Path:
    """llama.cpp's source folder holding ``convert_hf_to_gguf.py``, its ``conversion`` package and ``gguf-py``."""
    root = cache_root().parent / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                        "--no-deps", "--no-binary", ":all:", "-d", tmp, "--quiet"], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        staging = Path(tmp, "src")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, root)
        except OSError:
            if not (root / "convert_hf_to_gguf.py").is_file():
                raise
    return root


def _tokenizer_folder() -> Path:
    from latts.engine.loading.loader import DEFAULT_MODEL, hf_folder

    return hf_folder(DEFAULT_MODEL)


def hf_model(family: str) -> Path:
    """A random-weight 2-layer HF folder of ``family`` with the default model's tokenizer (built once)."""
    import torch
    import transformers

    folder = cache_root() / "hf" / family
    if (folder / "config.json").is_file():
        return folder
    cls, overrides = FAMILIES[family]
    tok = transformers.AutoTokenizer.from_pretrained(_tokenizer_folder())
    config = getattr(transformers, cls)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, tie_word_embeddings=False, **overrides)
    torch.manual_seed(sum(family.encode()))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, _INIT_STD if "embed" not in name else 1.0)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
            else:  # norm weights
                p.uniform_(0.5, 1.5)
    tmp = Path(tempfile.mkdtemp(dir=_parent(folder), prefix=".hf-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _publish(tmp, folder)
    return folder


def f16_gguf(family: str) -> Path:
    """``family``'s model converted by llama.cpp's converter to an F16 GGUF (once)."""
    out = cache_root() / f"{family}-f16.gguf"
    if out.is_file():
        return out
    src, root = hf_model(family), converter()
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    # the vendored gguf-py (the converter's own version), ahead of the installed gguf package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "gguf-py"), str(root)]))
    env.pop("NO_LOCAL_GGUF", None)
    run = subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(src), "--outfile", str(tmp),
                          "--outtype", "f16"], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {family}:\n{run.stderr[-3000:]}")
    os.replace(tmp, out)
    return out


def gguf(family: str, quant: str) -> Path:
    """``family``'s model quantized by llama.cpp to ``quant`` (one of :data:`QUANTS`), built once."""
    import llama_cpp

    out = cache_root() / f"{family}-{quant}.gguf"
    if out.is_file():
        return out
    src = f16_gguf(family)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = 2
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({family}, {quant}) returned {rc}")
    os.replace(tmp, out)
    return out


def _parent(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent


def _publish(tmp: Path, folder: Path) -> None:
    """Move a finished build into place (another process may have won the race)."""
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
