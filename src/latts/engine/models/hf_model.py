"""The ``hf`` engine: transformers' own model and cache behind the interface of latts' torch engine, for the
architectures that engine does not have (gpt2, gpt_neox, phi, stablelm, opt, ...). Correct first, slow.

:class:`HFModel` has :class:`~latts.engine.models.transformer.Transformer`'s interface (``new_cache``, ``prefill``,
``decode`` with ragged rows, ``shape.vocab``, ``max_positions``), so latts' engine, sampler, drafters and
budget forcing run on it unchanged. Its forward is the transformers model's own, on a ``DynamicCache`` that
holds all rows batched (``[B, heads, S, head_dim]`` per layer):

- the prompt is prefilled once (one row) and its K/V copied to every branch at the first decode;
- a decode step appends every row's tokens at the cache's end, so rows that advanced by different amounts
  (speculation, forced text) leave *slots* that hold nothing for them: :class:`HFCache` keeps each slot's
  position per row (-1: empty or rolled back) and the forward gets a 2-D attention mask from it, with
  explicit ``position_ids`` — transformers combines it with the causal order of the slots;
- rolling back rejected drafts only marks their slots empty; once empty slots outnumber the real ones the
  cache is re-packed (each row's real slots moved to the front, in order).

Why it is slow: HF's per-op overhead, a ``torch.cat`` of the whole cache per layer and step, and the prompt's
K/V copied to and read by every row (latts' torch engine shares it, :mod:`latts.engine.models.kv_cache`).
``benchmarks/hf_engine.py`` measures by how much.
"""

from __future__ import annotations

import time
import inspect
import logging
from dataclasses import dataclass

import torch

from latts.errors import DeadlineReached, LattsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFShape:
    """The dimensions latts' engine reads from a model: its vocabulary (logits width) and layer count."""

    vocab: int
    n_layers: int


@dataclass
class _Rows:
    """Some rows of the cache: every layer's keys and values ``[m, heads, S, hd]`` and each slot's position."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pos: torch.Tensor  # [m, S], -1: an empty slot

    def __len__(self) -> int:
        return self.pos.shape[0]

    def padded(self, slots: int) -> _Rows:
        """The same rows with empty slots appended up to ``slots``."""
        extra = slots - self.pos.shape[1]
        if extra <= 0:
            return self

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros(t.shape[:2] + (extra,) + t.shape[3:])], 2)

        return _Rows([pad(k) for k in self.keys], [pad(v) for v in self.values],
                     torch.cat([self.pos, self.pos.new_full((len(self), extra), -1)], 1))

    def select(self, rows: slice | torch.Tensor) -> _Rows:
        """A subset of the rows (a copy when ``rows`` is an index tensor)."""
        return _Rows([k[rows] for k in self.keys], [v[rows] for v in self.values], self.pos[rows])

    def join(self, other: _Rows | None) -> _Rows:
        """These rows followed by ``other``'s, padded to the same number of slots."""
        if other is None or len(other) == 0:
            return self
        slots = max(self.pos.shape[1], other.pos.shape[1])
        a, b = self.padded(slots), other.padded(slots)
        return _Rows([torch.cat(p, 0) for p in zip(a.keys, b.keys)], [torch.cat(p, 0) for p in zip(a.values, b.values)],
                     torch.cat([a.pos, b.pos], 0))


class HFCache:
    """All live rows' K/V in one transformers ``DynamicCache``, with each slot's position per row.

    Live rows are ``0..rows-1``. A decode over fewer rows parks the others (kept for a later decode over
    more, as the profiler does; the engine's compaction never asks for them back); a decode over more rows
    than were ever filled gets copies of the prompt.
    """

    def __init__(self, past: object, prompt_len: int, rows_cap: int) -> None:
        self.past = past  # transformers.DynamicCache
        self.prompt_len = prompt_len
        self.rows_cap = rows_cap
        self.pos = torch.empty((1, 0), dtype=torch.long)  # [rows, S]: position of each slot (-1: none)
        self.parked: _Rows | None = None  # rows past the live ones
        self.prompt: _Rows | None = None  # the prefilled prompt alone, one row: what new rows start from
        self.repacks = 0  # how often empty slots were squeezed out

    @property
    def rows(self) -> int:
        """Live rows."""
        return self.pos.shape[0]

    def _layers(self) -> list:
        return list(self.past.layers)

    def _live(self) -> _Rows:
        layers = self._layers()
        return _Rows([layer.keys for layer in layers], [layer.values for layer in layers], self.pos)

    def _set_live(self, rows: _Rows) -> None:
        for layer, k, v in zip(self._layers(), rows.keys, rows.values):
            layer.keys, layer.values = k, v
        self.pos = rows.pos

    def _map_rows(self, fn) -> None:
        """Apply ``fn`` to every layer's keys and values ``[rows, heads, S, hd]`` (and to nothing else)."""
        for layer in self._layers():
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)

    @torch.inference_mode()
    def prefilled(self) -> None:
        """Remember the prompt's K/V (one row) for rows started later."""
        self.prompt = self._live().select(slice(0, 1))
        self.parked = None

    @torch.inference_mode()
    def fit_rows(self, n: int) -> None:
        """Make rows ``0..n-1`` the live ones: rows past ``n`` parked, missing ones un-parked or new prompt rows."""
        if n == self.rows:
            return
        live = self._live()
        if n < self.rows:
            self.parked = live.select(slice(n, None)).join(self.parked)
            self._set_live(live.select(slice(0, n)))
            return
        need = n - self.rows
        parked = self.parked if self.parked is not None else live.select(slice(0, 0))
        taken = parked.select(slice(0, need))
        self.parked = parked.select(slice(need, None))
        if len(taken) < need:
            fresh = self.prompt.select(torch.zeros(need - len(taken), dtype=torch.long))
            taken = taken.join(fresh)
        self._set_live(live.join(taken))

    @torch.inference_mode()
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src`` (its first ``length`` generated tokens) into row ``dst`` (compaction, forking)."""
        if dst == self.rows:  # a new row past the live ones (a checkpoint probe) replaces the first parked one
            self._set_live(self._live().join(self._live().select(torch.tensor([src]))))
            if self.parked is not None:
                self.parked = self.parked.select(slice(1, None))
        elif dst > self.rows:
            raise LattsError(f"hf cache: row {dst} is past the {self.rows} live rows")
        else:
            for layer in self._layers():
                layer.keys[dst] = layer.keys[src]
                layer.values[dst] = layer.values[src]
            self.pos[dst] = self.pos[src]
        self.pos[dst][self.pos[dst] >= self.prompt_len + length] = -1

    @torch.inference_mode()
    def repack(self) -> None:
        """Move each row's real slots to the front (in order) once empty ones outnumber the generated ones."""
        valid = self.pos >= 0  # [rows, S]
        keep = int(valid.sum(1).max())
        if self.pos.shape[1] - keep <= max(16, keep - self.prompt_len):  # empty slots vs generated ones
            return
        self.repacks += 1
        # stable: real slots first, in their order
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :keep]  # [rows, keep]
        self.pos = self.pos.gather(1, order)

        def gather(t: torch.Tensor) -> torch.Tensor:
            idx = order[:, None, :, None].expand(t.shape[0], t.shape[1], keep, t.shape[3])
            return t.gather(2, idx)

        self._map_rows(gather)


class HFModel:
    """A transformers causal LM with the interface of latts' :class:`~latts.engine.models.transformer.Transformer`."""

    fast = False  # no latts kernels: measurements record the transformers build instead
    native = None

    def __init__(self, hf_model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.hf = hf_model.to(dtype).eval()
        self.dtype = dtype
        config = hf_model.config
        probe = DynamicCache(config=config)
        if any(type(layer) is not DynamicLayer for layer in getattr(probe, "layers", [])):
            kinds = sorted({type(layer).__name__ for layer in probe.layers})
            raise LattsError(f"architecture '{config.model_type}': the hf engine needs a plain attention KV cache "
                             f"(this model's cache has {', '.join(kinds)} layers)")
        self.config = config
        self.shape = HFShape(vocab=hf_model.get_output_embeddings().weight.shape[0],
                             n_layers=int(getattr(config, "num_hidden_layers", 0) or 0))
        self.n_params = sum(p.numel() for p in hf_model.parameters())
        positions = (getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
                     or 1 << 20)
        self.max_positions = int(positions)
        params = inspect.signature(hf_model.forward).parameters
        self._takes = {name: name in params for name in ("position_ids", "cache_position", "logits_to_keep")}
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5

    def eval(self) -> "HFModel":
        """For symmetry with the torch engine's module (already in eval mode)."""
        return self

    def new_cache(self, rows: int, prompt_len: int, max_suffix: int) -> HFCache:
        """An empty cache for ``rows`` branches of one ``prompt_len``-token prompt (``max_suffix`` is not needed:
        transformers' cache grows as it goes)."""
        from transformers import DynamicCache

        return HFCache(DynamicCache(config=self.config), prompt_len, rows)

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, first_slot: int,
                 cache: HFCache, **extra) -> torch.Tensor:
        kwargs = dict(input_ids=tokens, attention_mask=mask, use_cache=True, **extra)
        kwargs[self._cache_arg] = cache.past
        if self._takes["position_ids"]:
            kwargs["position_ids"] = positions
        if self._takes["cache_position"]:
            kwargs["cache_position"] = torch.arange(first_slot, first_slot + tokens.shape[1])
        return self.hf(**kwargs).logits

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, cache: HFCache, deadline: float | None = None) -> torch.Tensor:
        """Run the prompt ``tokens`` ``[1, P]`` once into ``cache``; the last position's logits ``[1, V]``.

        transformers' forward runs the prompt in one call: a ``deadline`` (``time.monotonic()``) already passed
        raises :class:`~latts.errors.DeadlineReached` before it starts, and one that passes inside it is seen by
        the engine's first step."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineReached("the deadline passed before the prefill")
        _, P = tokens.shape
        positions = torch.arange(P)[None]
        extra = {"logits_to_keep": 1} if self._takes["logits_to_keep"] else {}  # as HF generate does
        logits = self._forward(tokens, torch.ones((1, P), dtype=torch.long), positions, 0, cache, **extra)
        cache.pos = positions.clone()
        cache.prefilled()
        return logits[:, -1].float()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, start: torch.Tensor, cache: HFCache,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``tokens`` ``[B, k]`` at positions ``start[b] + 0..k-1`` for rows ``0..B-1``; logits ``[B, k, V]``.

        ``lengths`` ``[B]``: only row ``b``'s first ``lengths[b]`` tokens are real (their logits; the padding's
        are zeros and its slots stay empty). Slots at or past a row's ``start`` are its rolled-back tokens.
        """
        B, k = tokens.shape
        cache.fit_rows(B)
        cache.pos[cache.pos >= start[:, None]] = -1  # rejected drafts and anything else past the row's length
        cache.repack()
        offsets = torch.arange(k)
        positions = start[:, None] + offsets  # [B, k]
        real = offsets[None, :] < (lengths[:, None] if lengths is not None else torch.full((B, 1), k))  # [B, k]
        mask = torch.cat([cache.pos >= 0, real], 1).long()  # [B, S + k]
        logits = self._forward(tokens, mask, positions, cache.pos.shape[1], cache).float()
        cache.pos = torch.cat([cache.pos, torch.where(real, positions, -1)], 1)
        if B > 1 and not bool(real.all()):
            logits = logits.masked_fill(~real[:, :, None], 0.0)
        return logits
