"""Branch KV cache: one shared prompt prefix plus a preallocated, in-place suffix per row.

All branches of a request share the prompt, so its K/V are stored **once**
(``[layers, 1, kv_heads, prompt_len, head_dim]``) and every row's queries attend to it in one
dense matmul; each row's own tokens live in ``[layers, rows, kv_heads, max_suffix, head_dim]``.
This keeps memory at ``prompt + B x generated`` instead of ``B x (prompt + generated)`` and turns
the prompt part of attention from B memory-bound reads into one compute-bound GEMM.

Suffix slot ``j`` of a row holds its position ``prompt_len + j``. Rows may be ragged (speculative
decoding advances them by different amounts): queries only attend to slots at or before their own
position, so entries past a row's length (rejected drafts) are never seen and need no clearing.
Finished rows are removed by moving the last live row into their slot (:meth:`move_row`), so the
live rows are always the prefix ``0..n-1`` of the batch and a step's cost scales with them.
"""

from __future__ import annotations

import torch


class KVCache:
    """Prompt K/V (shared) and per-row generated K/V for ``rows`` branches."""

    def __init__(
        self,
        n_layers: int,
        rows: int,
        n_kv_heads: int,
        prompt_len: int,
        max_suffix: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None:
        # one branch: its tokens follow the prompt in the same buffer, so attention is one call
        self.single = rows == 1
        if self.single:
            self.full_k = torch.empty((n_layers, 1, n_kv_heads, prompt_len + max_suffix, head_dim), dtype=dtype)
            self.full_v = torch.empty_like(self.full_k)
            self.prefix_k, self.k = self.full_k[..., :prompt_len, :], self.full_k[..., prompt_len:, :]
            self.prefix_v, self.v = self.full_v[..., :prompt_len, :], self.full_v[..., prompt_len:, :]
        else:
            self.prefix_k = torch.empty((n_layers, 1, n_kv_heads, prompt_len, head_dim), dtype=dtype)
            self.prefix_v = torch.empty_like(self.prefix_k)
            self.k = torch.empty((n_layers, rows, n_kv_heads, max_suffix, head_dim), dtype=dtype)
            self.v = torch.empty_like(self.k)
        self.rows = rows
        self.prompt_len = prompt_len
        self.max_suffix = max_suffix
        self._zeroed = 0  # suffix slots [0, _zeroed) hold finite values in every row
        # the prompt's keys in transposed blocks of eight (see engine/models/native.py), made by the native
        # decode step on first use; a new prefix invalidates it
        self.prompt_keys_t: torch.Tensor | None = None
        # the prompt's keys and values paired for bf16 dot products (see engine/models/native.py), likewise
        self.prompt_pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def reserve(self, n_slots: int) -> None:
        """Make suffix slots below ``n_slots`` finite before a forward reads them.

        Memory is allocated uninitialised (fast, pages touched only as rows grow), but a ragged batch
        attends to slots another row has written and this row never has: masked scores are -inf,
        yet NaN garbage in K or V would still poison the softmax. Zeroed incrementally, O(new slots).
        """
        if n_slots > self._zeroed:
            self.k[..., self._zeroed : n_slots, :] = 0
            self.v[..., self._zeroed : n_slots, :] = 0
            self._zeroed = n_slots

    def write_prefix(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the prompt's ``k``/``v`` ``[1, G, prompt_len, hd]``."""
        self.prefix_k[layer] = k
        self.prefix_v[layer] = v
        self.prompt_keys_t = None
        self.prompt_pairs = None

    def prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared prompt keys and values ``[1, G, prompt_len, hd]``."""
        return self.prefix_k[layer], self.prefix_v[layer]

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, uniform: bool, n_slots: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` ``[B, t, G, hd]`` at suffix ``slots`` ``[B, t]``; return ``[B, G, n_slots, hd]`` views.

        ``uniform`` says every row writes the same slots (a slice assignment instead of a scatter).
        """
        B, t = slots.shape
        kl, vl = self.k[layer], self.v[layer]
        if uniform:
            s0 = int(slots[0, 0])
            kl[:B, :, s0 : s0 + t] = k.transpose(1, 2)
            vl[:B, :, s0 : s0 + t] = v.transpose(1, 2)
        else:
            rows = torch.arange(B)[:, None].expand(B, t)
            kl[rows, :, slots] = k
            vl[rows, :, slots] = v
        return kl[:B, :, :n_slots], vl[:B, :, :n_slots]

    def joint(self, layer: int, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-branch cache: prompt and generated keys/values as one ``[1, G, P + n_slots, hd]`` view."""
        end = self.prompt_len + n_slots
        return self.full_k[layer, :, :, :end], self.full_v[layer, :, :, :end]

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row ``src``'s first ``length`` suffix slots into row ``dst`` (compaction, forking)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
