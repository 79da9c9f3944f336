"""latts' llama.cpp engine against the raw llama.cpp batch API on the same GGUF.

What latts adds around llama.cpp must stay small: the same greedy lock-step decode of B rows over one
shared C-token prompt, measured two ways in this one process, interleaved (raw, latts, raw, ...) so
drifts of this shared machine hit both sides of a ratio alike:

- raw: llama-cpp-python's low-level batch API driven by hand (``benchmarks/peer_llamacpp.py``'s
  ``LlamaCpp``: fill a ``llama_batch``, ``llama_decode``, argmax of the logits view);
- latts: ``Engine.generate`` on :class:`~latts.engine.models.llamacpp.model.LlamaCppModel` (greedy, ``ignore_eos``),
  decode tokens/s = B x steps / decode seconds (everything after the prefill: batch filling, the logits
  copy, sampling, the engine's bookkeeping).

Both use llama.cpp's defaults otherwise (f16 KV cache, flash attention 'auto') and the same threads.
Each cell is the median over ``--repeats``. Target: latts / raw decode tok/s >= 0.9 at B=1 and B=16;
the table is printed and the exit status is 1 when a target is missed (2: llama-cpp-python missing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from peer_llamacpp import LlamaCpp, import_llama_cpp, prompt_ids, top_ids  # noqa: E402

from latts.engine.engine import Engine  # noqa: E402
from latts.engine.loading.loader import DEFAULT_MODEL, resolve  # noqa: E402
from latts.request import GenerateRequest  # noqa: E402

TARGET = 0.9


def latts_tps(engine: Engine, ids: list[int], rows: int, steps: int) -> float:
    """Decode tokens/s of one greedy ``generate`` of ``rows`` branches for ``steps`` tokens after ``ids``."""
    gen = engine.generate(GenerateRequest(ids, branches=rows, max_new_tokens=steps + 1, ignore_eos=True))
    return rows * gen.steps / gen.decode_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a bundled model name or a GGUF file")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    lib = import_llama_cpp()
    if lib is None:
        print("llama_cpp cannot be imported: pip install 'latts[llamacpp]' (or `make llamacpp`)")
        return 2
    from latts.engine.loading.loader import load_gguf

    gguf = resolve(args.model)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    loaded = load_gguf(gguf, Path(gguf).name)
    engine = Engine(loaded)
    slots = args.warmup + args.steps + 1
    cpp = LlamaCpp(lib, gguf, args.threads, args.context + max(batches) * slots + 64, args.context + max(batches),
                   max(batches))
    ids = prompt_ids(args.context)
    print(f"{loaded.name}: {loaded.model.description}; llama-cpp-python {lib.__version__}, {args.threads} threads, "
          f"context {args.context}, {args.steps} steps, median of {args.repeats}")
    rows = []
    try:
        first = top_ids(cpp.prefill(ids)[1], max(batches))
        for B in batches:
            engine.generate(GenerateRequest(ids, branches=B, max_new_tokens=4, ignore_eos=True))  # warm
            raw, ours = [], []
            for _ in range(args.repeats):
                raw.append(B / cpp.decode_ms(first[:B], args.context, args.warmup, args.steps) * 1e3)
                ours.append(latts_tps(engine, ids, B, args.steps))
            r, o = statistics.median(raw), statistics.median(ours)
            rows.append((B, r, o, o / r))
            print(f"  B={B}: raw {r:.1f} tok/s, latts engine {o:.1f} tok/s", flush=True)
    finally:
        cpp.close()
    print("\n| B | raw batch API tok/s | latts Engine on llama.cpp tok/s | latts / raw | target |")
    print("| --- | --- | --- | --- | --- |")
    missed = 0
    for B, r, o, ratio in rows:
        ok = ratio >= TARGET
        missed += not ok
        print(f"| {B} | {r:.1f} | {o:.1f} | {ratio:.2f}x | >= {TARGET} {'ok' if ok else 'MISSED'} |")
    print("\nall targets met" if not missed else f"\nFAILED: {missed} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
