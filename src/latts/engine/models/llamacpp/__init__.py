"""The llama.cpp engine: a GGUF run by llama.cpp behind latts' model interface."""
