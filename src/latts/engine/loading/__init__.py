"""From a model name, folder or GGUF to a loaded model: which engine runs it, this machine, the weights."""
