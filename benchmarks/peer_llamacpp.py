"""latts against llama.cpp on the same GGUF, the same threads and the same shared-prefix shape.

Both engines run in this one process, one at a time: llama.cpp through llama-cpp-python's low-level
batch API (``llama_batch_init`` / ``llama_decode``, a unified KV cache whose prompt cells are shared
by every sequence through ``llama_memory_seq_cp``, llama.cpp's own defaults otherwise: f16 KV cache,
n_ubatch 512, flash attention 'auto'), latts through its engine API (``Transformer.prefill`` once,
then ``Transformer.decode`` on a :class:`~latts.engine.models.kv_cache.KVCache`, weights ``--dtype auto``).

Decode: a deterministic prompt of C tokens is prefilled once (per engine and context); then B
sequences decode greedily in lock-step, row b starting from the b-th most likely token after the
prompt. A measurement is ``--warmup`` untimed steps, then ``--steps`` timed ones: ms per step is
their wall time / steps (filling the batch and the argmax included, on both sides); tokens/s is
B / step. Prefill: the first P tokens of the same prompt, timed from a cleared cache to the last
token's logits. Repeats interleave the engines (latts, llama.cpp, latts, ...) so that this shared
machine's drifts hit both sides of a ratio alike; each cell is the median over repeats.

latts' own cost curve (a B-row step over a B=1 step) is measured apart, latts alone: each B-row
measurement sits between two B=1 measurements, and a repeat's ratio is the B-row time over their mean;
the curve is the median of ``--curve-repeats`` such ratios. The VM these run on drifts between a fast and
a slow mode within a minute; a ratio of cells measured a minute apart (the decode table's) reads that
drift, a bracketed one compares runs seconds apart. The slow mode also moves the ratio itself (it slows
the compute-bound B-row steps more than the bandwidth-bound B=1 step), which the printed spread shows.

Targets (ratios within this one run; context 512 unless said; exit 1 when one is missed or was not
measured): decode B=1 latts tok/s >= 1.3x llama.cpp's; B=16 >= 3x; latts' own B=4 step <= 1.4x its
B=1 step and its B=8 step <= 2x (the bracketed curve); prefill of 512 and 2048 tokens: latts >= 2x
llama.cpp's tokens/s.
Exit 2 when llama-cpp-python is not installed (``make test`` builds it: the Makefile's ``llamacpp``
target). Every run is appended to ``--results`` (JSON Lines) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from latts.engine.models.kv_cache import KVCache
from latts.engine.loading.loader import DEFAULT_MODEL, LoadedModel, load, resolve
from latts.engine.models.cpu_features import cpu_flags
from latts.engine.models.llamacpp.hazards import hazards_here
from latts.engine.loading.machine import cpu_name
from latts.errors import LattsError

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avxvnni", "amx_int8")
RESULTS = Path(__file__).parent / "results" / "peer_llamacpp.jsonl"
DECODE_CTX = 512  # the context of the decode targets


def import_llama_cpp():
    """llama_cpp, or None when llama-cpp-python is not installed (it is not a latts dependency); its models load
    without the paths that crash on this CPU, as latts' llama.cpp engine loads them (the peer is measured as
    latts would run it; the table's machine line names what was avoided)."""
    from latts.engine.models.llamacpp import model as llamacpp

    try:
        return llamacpp.import_llama_cpp()
    except LattsError:
        return None


def machine(threads: int) -> dict:
    """The CPU (name, family/model), the vector flags that matter to both engines, and the threads."""
    flags = cpu_flags()
    lib = import_llama_cpp()
    avoided = [h.describe() for h in hazards_here(lib)] if lib is not None else []
    return {"cpu": cpu_name(), "flags": {f: f in flags for f in FLAGS}, "threads": threads,
            "torch": torch.__version__, "llama.cpp avoided": avoided}


def git_commit() -> str:
    """The commit of the latts imported (``+dirty`` with uncommitted changes), or '?' outside git."""
    import latts

    here = Path(latts.__file__).parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + ("+dirty" if dirty else "")


def prompt_ids(n: int) -> list[int]:
    """A deterministic prompt of n ordinary token ids (the same for both engines)."""
    g = torch.Generator().manual_seed(21)
    return torch.randint(100, 40000, (n,), generator=g).tolist()


class LlamaCpp:
    """llama.cpp on one GGUF through the low-level batch API: one context, a unified KV cache.

    Sequence 0 holds the prompt; sequences 1..B-1 share its cells (``llama_memory_seq_cp`` on a
    unified cache only tags the cells, no K/V is copied), so B rows attend to one stored prompt.
    """

    def __init__(self, lib, gguf: Path, threads: int, n_ctx: int, n_batch: int, n_seq: int) -> None:
        self.lib = lib
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {gguf}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_seq_max = n_ctx, n_batch, n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp cannot create a context")
        self.mem = lib.llama_get_memory(self.ctx)
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.batch = lib.llama_batch_init(n_batch, 0, 1)
        self.n_seq = n_seq

    def close(self) -> None:
        """Free the batch, the context and the model."""
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def _fill(self, tokens: list[int], positions: list[int], seqs: list[int], logits: list[bool]) -> None:
        """Write one token per entry (its position, its one sequence, whether it outputs logits) into the batch."""
        b = self.batch
        b.n_tokens = len(tokens)
        for i, (t, p, s, o) in enumerate(zip(tokens, positions, seqs, logits)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, 1, o
            b.seq_id[i][0] = s

    def _decode(self, n_out: int) -> np.ndarray:
        """Run the filled batch; the logits of its ``n_out`` output tokens ``[n_out, V]`` (a view)."""
        rc = self.lib.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return np.ctypeslib.as_array(self.lib.llama_get_logits(self.ctx), shape=(n_out, self.n_vocab))

    def prefill(self, ids: list[int]) -> tuple[float, np.ndarray]:
        """Clear the cache and prefill ``ids`` as sequence 0: (seconds, last logits ``[V]``)."""
        self.lib.llama_memory_clear(self.mem, True)
        n = len(ids)
        self._fill(ids, list(range(n)), [0] * n, [False] * (n - 1) + [True])
        t = time.perf_counter()
        logits = self._decode(1)[0].copy()
        return time.perf_counter() - t, logits

    def logits_all(self, ids: list[int]) -> np.ndarray:
        """Clear the cache and run ``ids`` as one sequence, logits at every position ``[n, V]`` (teacher-forced)."""
        self.lib.llama_memory_clear(self.mem, True)
        n = len(ids)
        self._fill(ids, list(range(n)), [0] * n, [True] * n)
        return self._decode(n).copy()

    def share_prefix(self, context: int, rows: int) -> None:
        """Forget every token past the prompt, then give sequences 1..rows-1 the prompt of sequence 0."""
        if not self.lib.llama_memory_seq_rm(self.mem, -1, context, -1):
            raise RuntimeError("llama.cpp refused to drop the decoded tokens")
        for s in range(1, self.n_seq):
            self.lib.llama_memory_seq_rm(self.mem, s, -1, -1)
        for s in range(1, rows):
            self.lib.llama_memory_seq_cp(self.mem, 0, s, -1, -1)

    def decode_ms(self, first: list[int], context: int, warmup: int, steps: int) -> float:
        """Greedy lock-step decode of ``len(first)`` rows after a ``context``-token shared prompt: ms per step."""
        rows = len(first)
        self.share_prefix(context, rows)
        tokens, seqs, outs = list(first), list(range(rows)), [True] * rows
        for i in range(warmup + steps):
            if i == warmup:
                t = time.perf_counter()
            self._fill(tokens, [context + i] * rows, seqs, outs)
            tokens = self._decode(rows).argmax(axis=1).tolist()
        return (time.perf_counter() - t) / steps * 1e3


class Latts:
    """latts' engine API on a loaded model: prefill once per context, decode B rows over the shared prompt."""

    def __init__(self, loaded: LoadedModel, max_rows: int, slots: int) -> None:
        self.m = loaded.model
        self.max_rows, self.slots = max_rows, slots
        self.caches: dict[tuple[int, bool], KVCache] = {}

    def _cache(self, context: int, rows: int) -> KVCache:
        return self.m.new_cache(rows, context, self.slots)

    def prefill(self, ids: list[int]) -> tuple[float, torch.Tensor]:
        """Prefill ``ids`` into a fresh 1-row cache: (seconds, last logits ``[V]``)."""
        cache = self._cache(len(ids), 1)
        tokens = torch.tensor([ids])
        t = time.perf_counter()
        logits = self.m.prefill(tokens, cache)
        return time.perf_counter() - t, logits[0]

    def prepare(self, ids: list[int]) -> torch.Tensor:
        """Prefill the prompt into a 1-row cache (its own layout) and a ``max_rows`` one; last logits ``[V]``."""
        self.caches.clear()
        tokens = torch.tensor([ids])
        for single in (True, False) if self.max_rows > 1 else (True,):
            cache = self._cache(len(ids), 1 if single else self.max_rows)
            logits = self.m.prefill(tokens, cache)
            self.caches[(len(ids), single)] = cache
        return logits[0]

    def decode_ms(self, first: list[int], context: int, warmup: int, steps: int) -> float:
        """Greedy lock-step decode of ``len(first)`` rows on the prepared prompt: ms per step."""
        rows = len(first)
        cache = self.caches[(context, rows == 1)]
        tokens = torch.tensor(first)[:, None]  # [B, 1]
        start = torch.full((rows,), context)
        for i in range(warmup + steps):
            if i == warmup:
                t = time.perf_counter()
            tokens = self.m.decode(tokens, start + i, cache)[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - t) / steps * 1e3


def top_ids(logits, k: int) -> list[int]:
    """The k most likely next tokens (torch tensor or numpy array ``[V]``), best first."""
    logits = logits.float() if isinstance(logits, torch.Tensor) else torch.from_numpy(logits)
    return logits.topk(k).indices.tolist()


def measure_prefill(lat: Latts, cpp: LlamaCpp, lengths: list[int], repeats: int) -> list[dict]:
    """Prefill seconds of both engines for every length, interleaved, medians over ``repeats``."""
    rows = []
    for n in lengths:
        ids = prompt_ids(n)
        lat.prefill(ids[:64])  # first-call costs of each engine, untimed
        cpp.prefill(ids[:64])
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(lat.prefill(ids)[0])
            theirs.append(cpp.prefill(ids)[0])
        row = {"tokens": n, "latts_s": statistics.median(ours), "llamacpp_s": statistics.median(theirs)}
        row.update(latts_tps=n / row["latts_s"], llamacpp_tps=n / row["llamacpp_s"])
        print(f"  prefill {n}: latts {row['latts_s']:.2f} s, llama.cpp {row['llamacpp_s']:.2f} s", flush=True)
        rows.append(row)
    return rows


def measure_decode(lat: Latts, cpp: LlamaCpp, contexts: list[int], batches: list[int], args) -> list[dict]:
    """ms per lock-step decode step of both engines for every (context, B), interleaved, medians."""
    rows = []
    for ctx in contexts:
        ids = prompt_ids(ctx)
        first_latts = top_ids(lat.prepare(ids), max(batches))
        first_cpp = top_ids(cpp.prefill(ids)[1], max(batches))
        for B in batches:
            ours, theirs = [], []
            for _ in range(args.repeats):
                ours.append(lat.decode_ms(first_latts[:B], ctx, args.warmup, args.steps))
                theirs.append(cpp.decode_ms(first_cpp[:B], ctx, args.warmup, args.steps))
            row = {"ctx": ctx, "B": B, "latts_ms": statistics.median(ours), "llamacpp_ms": statistics.median(theirs)}
            row.update(latts_tps=B / row["latts_ms"] * 1e3, llamacpp_tps=B / row["llamacpp_ms"] * 1e3)
            print(f"  ctx={ctx} B={B}: latts {row['latts_ms']:.1f} ms/step, llama.cpp {row['llamacpp_ms']:.1f} ms/step",
                  flush=True)
            rows.append(row)
    return rows


def measure_cost_curve(lat: Latts, context: int, batches: list[int], args) -> list[dict]:
    """latts' B-row step over its B=1 step at ``context``, each B-row measurement bracketed by B=1 ones:
    per B the ratios of every repeat and their median."""
    first = top_ids(lat.prepare(prompt_ids(context)), max(batches))
    ratios: dict[int, list[float]] = {B: [] for B in batches}
    for _ in range(args.curve_repeats):
        for B in batches:
            before = lat.decode_ms(first[:1], context, args.warmup, args.steps)
            rows = lat.decode_ms(first[:B], context, args.warmup, args.steps)
            after = lat.decode_ms(first[:1], context, args.warmup, args.steps)
            ratios[B].append(rows / ((before + after) / 2))
    curve = [{"ctx": context, "B": B, "ratios": r, "ratio": statistics.median(r)} for B, r in ratios.items()]
    for c in curve:
        print(f"  cost curve ctx={context} B={c['B']}: {c['ratio']:.2f}x a B=1 step "
              f"({', '.join(f'{x:.2f}' for x in c['ratios'])})", flush=True)
    return curve


def targets(decode: list[dict], prefill: list[dict], curve: list[dict]) -> list[dict]:
    """Every target with its measured value (None when its rows were not measured) and whether it is met."""
    d = {(r["ctx"], r["B"]): r for r in decode}
    p = {r["tokens"]: r for r in prefill}
    bracketed = {(r["ctx"], r["B"]): r["ratio"] for r in curve}

    def speedup(B: int) -> float | None:
        r = d.get((DECODE_CTX, B))
        return r and r["latts_tps"] / r["llamacpp_tps"]

    def own(B: int) -> float | None:
        return bracketed.get((DECODE_CTX, B))

    def pre(n: int) -> float | None:
        r = p.get(n)
        return r and r["latts_tps"] / r["llamacpp_tps"]

    specs = [(f"decode B=1 ctx {DECODE_CTX}: latts / llama.cpp tok/s", speedup(1), ">=", 1.3),
             (f"decode B=16 ctx {DECODE_CTX}: latts / llama.cpp tok/s", speedup(16), ">=", 3.0),
             (f"latts step B=4 / B=1 (ctx {DECODE_CTX}, bracketed)", own(4), "<=", 1.4),
             (f"latts step B=8 / B=1 (ctx {DECODE_CTX}, bracketed)", own(8), "<=", 2.0),
             ("prefill 512: latts / llama.cpp tok/s", pre(512), ">=", 2.0),
             ("prefill 2048: latts / llama.cpp tok/s", pre(2048), ">=", 2.0)]
    out = []
    for name, got, op, need in specs:
        met = got is not None and (got >= need if op == ">=" else got <= need)
        out.append({"target": name, "need": f"{op} {need}", "got": got, "met": met})
    return out


def print_machine(info: dict, lib, loaded: LoadedModel) -> None:
    """The machine, the threads and both engines' builds."""
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in info["flags"].items())
    print(f"\nmachine: {info['cpu']}; {flags}; {info['threads']} threads")
    print(f"latts {info['latts_commit']}: {loaded.name}, weights {loaded.weights}, torch {info['torch']}, "
          f"load {loaded.load_s:.1f} s ({loaded.kernels_s:.1f} s of it latts' kernels)")
    avoided = "".join(f"; {a}" for a in info["llama.cpp avoided"])
    print(f"llama.cpp: llama-cpp-python {lib.__version__}; {info['llamacpp_system'].strip()}{avoided}")


def print_tables(decode: list[dict], prefill: list[dict], curve: list[dict], checks: list[dict]) -> None:
    """The decode, prefill, cost-curve and target tables, in markdown."""
    print("\n| B | ctx | llama.cpp ms/step | llama.cpp tok/s | latts ms/step | latts tok/s | latts / llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in decode:
        print(f"| {r['B']} | {r['ctx']} | {r['llamacpp_ms']:.1f} | {r['llamacpp_tps']:.1f} | {r['latts_ms']:.1f} | "
              f"{r['latts_tps']:.1f} | {r['latts_tps'] / r['llamacpp_tps']:.2f}x |")
    if prefill:
        print("\n| prefill tokens | llama.cpp s | llama.cpp tok/s | latts s | latts tok/s | latts / llama.cpp |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in prefill:
            print(f"| {r['tokens']} | {r['llamacpp_s']:.2f} | {r['llamacpp_tps']:.0f} | {r['latts_s']:.2f} | "
                  f"{r['latts_tps']:.0f} | {r['latts_tps'] / r['llamacpp_tps']:.2f}x |")
    if curve:
        print("\n| latts alone: B | ctx | step / B=1 step, each repeat (bracketed) | median |")
        print("| --- | --- | --- | --- |")
        for r in curve:
            print(f"| {r['B']} | {r['ctx']} | {', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['ratio']:.2f} |")
    print("\n| target | need | got | status |")
    print("| --- | --- | --- | --- |")
    for c in checks:
        got = "not measured" if c["got"] is None else f"{c['got']:.2f}"
        print(f"| {c['target']} | {c['need']} | {got} | {'ok' if c['met'] else 'MISSED'} |")


def save(path: Path, record: dict) -> None:
    """Append one run to the JSON Lines results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def parse_args() -> argparse.Namespace:
    """Command-line flags; the defaults are the full measurement."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a bundled model name or a GGUF file")
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--contexts", default="512,2048")
    ap.add_argument("--prefills", default="512,2048", help="prefill lengths ('' for none)")
    ap.add_argument("--steps", type=int, default=32, help="timed decode steps per measurement")
    ap.add_argument("--warmup", type=int, default=4, help="untimed decode steps before them")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--curve-repeats", type=int, default=7, help="bracketed repeats of latts' cost curve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON Lines file every run is appended to")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    lib = import_llama_cpp()
    if lib is None:
        print("llama_cpp cannot be imported: llama-cpp-python is not installed. `make test` builds it "
              "(the Makefile's `llamacpp` target: `make llamacpp`, about 8 minutes on 2 cores).")
        return 2
    gguf = resolve(args.model)
    if gguf.suffix.lower() != ".gguf":
        print(f"{gguf} is not a GGUF file: llama.cpp needs one")
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    prefills = [int(p) for p in args.prefills.split(",") if p]
    torch.set_num_threads(args.threads)

    loaded = load(args.model, args.dtype)
    slots = args.warmup + args.steps + 1
    n_ctx = max(contexts + prefills) + max(batches) * slots + 64
    cpp = LlamaCpp(lib, gguf, args.threads, n_ctx, max(contexts + prefills + batches), max(batches))
    lat = Latts(loaded, max(batches), slots)
    info = machine(args.threads)
    info.update(latts_commit=git_commit(), llamacpp_system=lib.llama_print_system_info().decode())
    print_machine(info, lib, loaded)
    try:
        prefill = measure_prefill(lat, cpp, prefills, args.repeats)
        decode = measure_decode(lat, cpp, contexts, batches, args)
    finally:
        cpp.close()
    curve_batches = [B for B in (4, 8) if B in batches]
    curve = measure_cost_curve(lat, DECODE_CTX, curve_batches, args) if curve_batches and DECODE_CTX in contexts else []
    checks = targets(decode, prefill, curve)
    print_tables(decode, prefill, curve, checks)
    save(args.results, {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info,
                        "model": loaded.name, "latts_weights": loaded.weights,
                        "latts_native_step": getattr(loaded.model, "native", None) is not None,
                        "llama_cpp_python": lib.__version__,
                        "args": {k: str(v) for k, v in vars(args).items()}, "decode": decode, "prefill": prefill,
                        "cost_curve": curve, "targets": checks})
    missed = [c["target"] for c in checks if not c["met"]]
    print("\nall targets met" if not missed else f"\nFAILED: {len(missed)} target(s) missed or not measured")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
