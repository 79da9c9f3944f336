"""What computes a forward: latts' own transformer (native step, kernels, KV cache), llama.cpp's and transformers' models behind the same interface."""
