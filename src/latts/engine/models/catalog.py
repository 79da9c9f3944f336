"""What the models here run, said without importing torch: the architectures of latts' own transformer, the
GGUF block types its kernels multiply as they are, and how to install the llama.cpp engine.

The engine choice (:mod:`latts.engine.loading.choice`) reads these to refuse a model in well under a second,
before torch is imported; the models read them to refuse what they cannot run.
"""

from __future__ import annotations

# the architectures latts' torch engine (latts.engine.models.transformer) runs
TORCH_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
# GGUF tensor types the torch engine runs without de-quantizing to dense weights it then multiplies slowly
TORCH_FAST_TYPES = frozenset({"Q4_0", "Q4_1", "Q8_0", "F32", "F16", "BF16"})
# of those, the blocks latts' native step multiplies with 8-bit activations
TORCH_BLOCK_TYPES = frozenset({"Q4_0", "Q4_1", "Q8_0"})
INSTALL_LLAMACPP = "pip install 'latts[llamacpp]'"
