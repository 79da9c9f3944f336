"""The llama.cpp engine: latts' model interface on llama.cpp's batch API, for any GGUF llama.cpp runs.

:class:`~latts.engine.engine.Engine` drives a "model" through four calls — ``new_cache``, ``prefill``,
``decode`` and the cache's ``move_row`` — and :class:`LlamaCppModel` implements them on llama-cpp-python's
low-level bindings, so the engine's sampler, rejection sampler, drafters, budget forcing, deadlines,
early stopping, log-probabilities and checkpoint probes all run unchanged on every architecture and
quantization llama.cpp has.

How the branch cache maps onto llama.cpp: every cache owns one llama.cpp context with a *unified* KV
cache (``kv_unified``), one sequence id per row. The prompt is prefilled once as sequence 0 and
``llama_memory_seq_cp`` tags its cells with every other row's id (no K/V is copied), so B rows attend to
one stored prompt, as latts' shared-prefix :class:`~latts.engine.models.kv_cache.KVCache` does. A decode step is
one ``llama_decode`` of a batch holding every row's tokens at their positions; before it, each row's
cells at or past its first new position are dropped (``llama_memory_seq_rm``), because the engine
rewrites the positions of rejected drafts. ``move_row`` (batch compaction, checkpoint probes) is
``seq_rm(dst)`` then ``seq_cp(src, dst)``.

Contexts are pooled per model: a cache takes an idle context big enough for it (or creates one) and
gives it back when it is garbage-collected, so a request costs no context allocation once warm.

Attention: llama.cpp's default (``auto``: its flash-attention kernel on CPUs). Measured on the default
model, B=4 rows then decode token-identically to llama.cpp's single-sequence decode with that kernel;
with it off they did not (a near-tie at token 11). Either way llama.cpp's attention sums a row's cells
in cache order (flash attention accumulates in f16), so a row whose later cells land in holes freed by
other rows (finished probes, rejected drafts) can round differently from a run without them; the tests
measure that and check such divergences are near-ties.

llama-cpp-python is an optional dependency (``pip install latts[llamacpp]``), imported on first use.
"""

from __future__ import annotations

import ctypes
import time
import logging
import weakref
from pathlib import Path

import numpy as np
import torch

from latts.engine.models.catalog import INSTALL_LLAMACPP
from latts.engine.models.llamacpp.hazards import guard_default_params, hazards_here, safe_model_params
from latts.engine.models.transformer import ModelShape
from latts.errors import DeadlineReached, LattsError

log = logging.getLogger(__name__)

_IDLE_CONTEXTS = 2  # idle contexts a model keeps for later caches (the rest are freed)


def import_llama_cpp():
    """The ``llama_cpp`` module, or a LattsError saying how to install it.

    Its default model parameters avoid the paths that crash on this CPU (:mod:`latts.engine.models.llamacpp.hazards`),
    so that every model loaded in this process, through latts or through llama-cpp-python's own classes, runs.
    """
    try:
        import llama_cpp
    except ImportError:
        raise LattsError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL_LLAMACPP} "
                         "(or `make llamacpp` in a latts checkout)") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback prints below ERROR
    guard_default_params(llama_cpp)
    return llama_cpp


def llamacpp_build() -> str:
    """The llama.cpp build latts' measurements on this engine hold for: ``llamacpp-<llama-cpp-python version>``."""
    return f"llamacpp-{import_llama_cpp().__version__}"


class _Context:
    """One llama.cpp context (its unified KV cache) and a token batch sized for it."""

    def __init__(self, lib, model, n_ctx: int, n_seq: int, threads: int) -> None:
        self.lib = lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx  # a step's tokens always fit one llama_decode (split into ubatches inside)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        self.threads = threads
        params.kv_unified = True  # one cell pool: prompt cells shared by every sequence
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(model, params)
        if not self.ctx:
            raise LattsError(f"llama.cpp cannot create a context of {n_ctx} tokens for {n_seq} sequences")
        self.n_ctx = lib.llama_n_ctx(self.ctx)
        self.n_seq = n_seq
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(self.n_ctx, 0, 1)
        self.owner = 0  # generation of the cache using it (0: idle)

    def free(self) -> None:
        """Release the batch and the context."""
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)


class LlamaCppCache:
    """The KV state of ``rows`` branches of one prompt: rows are llama.cpp sequence ids ``0..rows-1``."""

    def __init__(self, model: LlamaCppModel, ctx: _Context, rows: int, prompt_len: int, max_suffix: int) -> None:
        self.model = model
        self.ctx = ctx
        self.rows = rows
        self.prompt_len = prompt_len
        self.max_suffix = max_suffix
        weakref.finalize(self, model._release, ctx)

    def move_row(self, src: int, dst: int, written: int = 0) -> None:
        """Row ``src``'s state becomes row ``dst``'s (compaction, forking): ``dst`` forgets its own cells and
        is tagged on ``src``'s. ``written`` (the torch cache's slot count) is not needed here: every cell of
        ``src`` is shared, and any past its length is dropped by the next decode."""
        lib, mem = self.model.lib, self.ctx.mem
        lib.llama_memory_seq_rm(mem, dst, -1, -1)
        lib.llama_memory_seq_cp(mem, src, dst, -1, -1)


class LlamaCppModel:
    """A GGUF run by llama.cpp behind the model interface latts' engine uses (see the module docstring).

    Logits are float32 tensors, as llama.cpp computes them; ``dtype`` reports that.
    """

    dtype = torch.float32
    fast = False  # latts' own kernels do not run here: llama.cpp's do
    native = None  # no latts native step

    def __init__(self, path: Path, threads: int | None = None) -> None:
        lib = import_llama_cpp()
        self.lib = lib
        self.path = Path(path)
        lib.llama_backend_init()
        self.avoided = hazards_here(lib)  # the broken paths of this CPU's build, avoided (load reports say so)
        params = safe_model_params(lib)
        params.n_gpu_layers = 0
        self.model = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.model:
            raise LattsError(f"llama.cpp cannot load {self.path} (not a GGUF it can run, or a damaged file)")
        self.threads = threads  # None: torch's count at each call
        self.vocab_p = lib.llama_model_get_vocab(self.model)
        n_embd, n_head = lib.llama_model_n_embd(self.model), lib.llama_model_n_head(self.model)
        self.shape = ModelShape(n_layers=lib.llama_model_n_layer(self.model), n_heads=n_head,
                                n_kv_heads=lib.llama_model_n_head_kv(self.model),
                                head_dim=n_embd // max(1, n_head), hidden=n_embd,
                                vocab=lib.llama_vocab_n_tokens(self.vocab_p), rms_eps=0.0)
        self.max_positions = int(lib.llama_model_n_ctx_train(self.model)) or 1 << 20
        self.n_params = int(lib.llama_model_n_params(self.model))
        buf = ctypes.create_string_buffer(256)
        lib.llama_model_desc(self.model, buf, len(buf))
        self.description = buf.value.decode(errors="replace")  # e.g. 'starcoder2 ?B Q4_K - Medium'
        self._idle: list[_Context] = []
        self._generation = 0
        self._finalizer = weakref.finalize(self, _free_model, lib, self.model, self._idle)

    # ------------------------------------------------------------------ contexts
    def new_cache(self, rows: int, prompt_len: int, max_suffix: int) -> LlamaCppCache:
        """A cache for ``rows`` branches of a ``prompt_len``-token prompt, ``max_suffix`` new tokens each."""
        max_seq = 256  # llama.cpp's LLAMA_MAX_SEQ
        if rows > max_seq:
            raise LattsError(f"the llama.cpp engine runs at most {max_seq} rows (branches and probes) at once, "
                             f"this request needs {rows}")
        need = prompt_len + rows * max_suffix + 1
        ctx = self._acquire(need, rows)
        return LlamaCppCache(self, ctx, rows, prompt_len, max_suffix)

    def _acquire(self, need: int, rows: int) -> _Context:
        """The smallest idle context holding ``need`` cells and ``rows`` sequences, else a new one.

        Sizes are rounded up (cells to a power of two >= 512, sequences to a power of two) so that later
        requests of similar shape reuse the context."""
        fits = [c for c in self._idle if c.n_ctx >= need and c.n_seq >= rows]
        if fits:
            ctx = min(fits, key=lambda c: (c.n_ctx, c.n_seq))
            self._idle.remove(ctx)
            self.lib.llama_memory_clear(ctx.mem, True)
        else:
            n_ctx = max(512, 1 << (need - 1).bit_length())
            n_seq = min(256, 1 << (rows - 1).bit_length())
            ctx = _Context(self.lib, self.model, n_ctx, n_seq, self.threads or torch.get_num_threads())
        self._generation += 1
        ctx.owner = self._generation
        return ctx

    def _release(self, ctx: _Context) -> None:
        """A cache is gone: keep its context for later caches (the largest few), free the rest."""
        ctx.owner = 0
        self._idle.append(ctx)
        self._idle.sort(key=lambda c: c.n_ctx * c.n_seq, reverse=True)
        while len(self._idle) > _IDLE_CONTEXTS:
            self._idle.pop().free()

    # ------------------------------------------------------------------ forwards
    def _run(self, ctx: _Context, n_out: int) -> torch.Tensor:
        """``llama_decode`` the filled batch; the logits of its ``n_out`` output tokens ``[n_out, V]`` (a copy).

        Without threads of its own (``threads`` at construction), it runs on torch's count, which the engine
        lowers while other processes hold cores (:mod:`latts.engine.models.threads`)."""
        threads = self.threads or torch.get_num_threads()
        if ctx.threads != threads:
            self.lib.llama_set_n_threads(ctx.ctx, threads, threads)
            ctx.threads = threads
        rc = self.lib.llama_decode(ctx.ctx, ctx.batch)
        if rc != 0:
            raise LattsError(f"llama.cpp could not decode a batch of {ctx.batch.n_tokens} tokens (llama_decode "
                             f"returned {rc}: {'no room in the KV cache' if rc == 1 else 'error'})")
        if n_out == 0:
            return torch.empty((0, self.shape.vocab))
        ptr = self.lib.llama_get_logits(ctx.ctx)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(n_out, self.shape.vocab)).copy())

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, cache: LlamaCppCache, deadline: float | None = None) -> torch.Tensor:
        """Run the prompt ``tokens`` ``[1, P]`` once as sequence 0 and share its cells with every row;
        the last position's logits ``[1, V]``.

        The prompt goes in pieces of llama.cpp's own micro-batch (what one ``llama_decode`` splits it into
        anyway, so the arithmetic is the same); with a ``deadline`` (``time.monotonic()``) the clock is read
        before each and :class:`~latts.errors.DeadlineReached` raised once it has passed."""
        lib, ctx = self.lib, cache.ctx
        ids = tokens[0].tolist()
        lib.llama_memory_clear(ctx.mem, True)
        if len(ids) + 1 > ctx.n_ctx:
            raise LattsError(f"prompt of {len(ids)} tokens does not fit the cache of {ctx.n_ctx}")
        b = ctx.batch
        piece = max(1, int(lib.llama_n_ubatch(ctx.ctx)))
        for first in range(0, len(ids), piece):
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineReached(f"the deadline passed in the prefill, at token {first} of {len(ids)}")
            chunk = ids[first:first + piece]
            b.n_tokens = len(chunk)
            for i, t in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, first + i, 1, False
                b.seq_id[i][0] = 0
            last = first + len(chunk) == len(ids)
            b.logits[len(chunk) - 1] = last
            logits = self._run(ctx, 1 if last else 0)
        for s in range(1, cache.rows):
            lib.llama_memory_seq_cp(ctx.mem, 0, s, -1, -1)
        return logits

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, start: torch.Tensor, cache: LlamaCppCache,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Run row ``r``'s tokens ``tokens[r, :lengths[r]]`` at positions ``start[r] + i`` for rows ``0..n-1``;
        logits ``[n, k, V]`` (zero at padding).

        Each row's cells at or past ``start[r]`` are dropped first: they hold rejected drafts (or nothing).
        llama.cpp needs a row's positions to continue its stored ones, so ``start[r]`` must be at most the
        row's length."""
        lib, ctx = self.lib, cache.ctx
        n, k = tokens.shape
        toks = tokens.tolist()
        starts = start.tolist()
        lens = [k] * n if lengths is None else lengths.tolist()
        total = sum(lens)
        if total > ctx.n_ctx:
            raise LattsError(f"a step of {total} tokens does not fit the cache of {ctx.n_ctx}")
        mem, b = ctx.mem, ctx.batch
        i = 0
        for r in range(n):
            lib.llama_memory_seq_rm(mem, r, starts[r], -1)
            if lib.llama_memory_seq_pos_max(mem, r) + 1 != starts[r]:
                raise LattsError(f"row {r} holds positions up to {lib.llama_memory_seq_pos_max(mem, r)}: llama.cpp "
                                 f"needs its next tokens at the following position, not {starts[r]}")
            p0, row = starts[r], toks[r]
            for j in range(lens[r]):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = row[j], p0 + j, 1, True
                b.seq_id[i][0] = r
                i += 1
        b.n_tokens = total
        logits = self._run(ctx, total)  # [total, V]
        if total == n * k:
            return logits.view(n, k, -1)
        out = logits.new_zeros((n, k, logits.shape[-1]))
        real = (torch.arange(k)[None, :] < torch.tensor(lens)[:, None]).flatten().nonzero().squeeze(1)
        out.view(n * k, -1)[real] = logits
        return out

    @property
    def weight_format(self) -> str:
        """The GGUF's weight format as llama.cpp names it (from the model description, e.g. ``gguf Q4_K - Medium``)."""
        parts = self.description.split(" ", 2)
        return f"gguf {parts[2]}" if len(parts) == 3 else "gguf"

    def close(self) -> None:
        """Free every context and the model now (otherwise done when the model is garbage-collected)."""
        self._finalizer()


def _free_model(lib, model, idle: list[_Context]) -> None:
    for ctx in idle:
        ctx.free()
    idle.clear()
    lib.llama_model_free(model)
