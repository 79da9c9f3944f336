"""llama-cpp-python's OpenAI-compatible server, with the llama.cpp paths that crash on this CPU avoided.

``python -m latts.engine.models.llamacpp.server --model file.gguf --port 8080 ...`` takes ``llama_cpp.server``'s own
options. On an Intel CPU with AMX a natively built llama-cpp-python 0.3.36 server dies at its first prompt of
more than a few tokens (see :mod:`latts.engine.models.llamacpp.hazards`); this one loads its models without that
path. Elsewhere it is ``python -m llama_cpp.server`` unchanged. (llama.cpp's own ``llama-server`` avoids the
same path with ``--no-repack``.)
"""

from __future__ import annotations

import runpy
import sys

from latts.engine.models.llamacpp.hazards import guard_default_params


def main() -> None:
    """Guard llama.cpp's default model parameters, then run ``llama_cpp.server`` with this command's arguments."""
    try:
        import llama_cpp
    except ImportError:
        sys.exit("error: the llama.cpp server needs llama-cpp-python: pip install 'llama-cpp-python[server]'")
    avoided = guard_default_params(llama_cpp)
    for hazard in avoided:
        print(f"latts: {hazard.describe()}", file=sys.stderr)
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
