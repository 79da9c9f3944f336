"""The embedded engine: B branches of one prompt decoded together in one batch.

The prompt is prefilled once; its K/V are shared by every branch (see ``kv_cache``). Each step
feeds every live branch's last token in one forward, samples the next, and retires branches that
finished (EOS, stop string, token budget) by compacting the batch, so finished branches cost
nothing. A monotonic ``deadline`` ends all branches with finish reason ``deadline`` as soon as the
next step would not fit before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from latts.config import MAX_GAMMA, SamplingParams, check_generation_args
from latts.engine.kv_cache import KVCache
from latts.engine.drafters import Drafter
from latts.engine.sampler import greedy_accept, probabilities, rejection_sample, sample
from latts.errors import LattsError
from latts.models import LoadedModel
from latts.types import Branch, Generation, SpecStats

log = logging.getLogger(__name__)

_STEP_EMA = 0.3  # weight of the newest step in the step-time estimate used against the deadline


class Engine:
    """Batched branch decoding on a loaded model. Not thread-safe: one request at a time."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos = frozenset(loaded.eos_token_ids)
        self.warmup_s = 0.0

    def warmup(self, branches: Sequence[int] = (1, 16)) -> float:
        """Run a few tiny requests so first-call costs never land inside a user's deadline; seconds spent."""
        t0 = time.perf_counter()
        for b in branches:
            self.generate([1, 2, 3, 4], branches=b, max_new_tokens=4, sampling=SamplingParams(temperature=1.0))
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def encode(self, prompt: str | Sequence[int], chat: bool = True) -> list[int]:
        """Prompt token ids: a string goes through the chat template (``chat``) or plain tokenization."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise LattsError("empty prompt")
            if chat:
                return self.loaded.encode_chat(prompt)
            return list(self.tokenizer(prompt)["input_ids"])
        ids = [int(t) for t in prompt]
        if not ids:
            raise LattsError("empty prompt")
        vocab = self.model.shape.vocab
        if min(ids) < 0 or max(ids) >= vocab:
            raise LattsError(f"prompt token ids must be in [0, {vocab})")
        return ids

    def generate(
        self,
        prompt: str | Sequence[int],
        branches: int = 1,
        max_new_tokens: int = 256,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] = (),
        deadline: float | None = None,
        chat: bool = True,
        on_step: Callable[[list[Branch]], None] | None = None,
        ignore_eos: bool = False,
        gamma: int = 0,
        drafter: Drafter | None = None,
    ) -> Generation:
        """Decode ``branches`` continuations of ``prompt`` together.

        Args:
            prompt: text (formatted with the chat template when ``chat``) or token ids.
            branches: B, the number of continuations decoded in one batch.
            max_new_tokens: per-branch token budget.
            sampling: temperature / top-p / top-k / seed; ``None`` means greedy.
            stop: strings that end a branch; its ``text`` stops before the first one.
            deadline: ``time.monotonic()`` value by which all work must end.
            chat: apply the chat template to a text prompt.
            on_step: called with the branches after every step (live views); keep it cheap.
            ignore_eos: decode past end-of-sequence tokens (fixed-length runs for benchmarks).
            gamma: draft tokens per row and step (speculative decoding; 0 = plain decoding).
            drafter: who proposes the drafts (required when ``gamma > 0``).
        """
        t0 = time.monotonic()
        sampling = sampling or SamplingParams(temperature=0.0)
        check_generation_args(branches, max_new_tokens)
        if not 0 <= gamma <= MAX_GAMMA:
            raise LattsError(f"gamma must be between 0 and {MAX_GAMMA}, got {gamma}")
        if gamma > 0 and drafter is None:
            raise LattsError("speculative decoding (gamma > 0) needs a drafter")
        ids = self.encode(prompt, chat)
        context = self.model.max_positions
        if len(ids) + max_new_tokens + gamma > context:
            raise LattsError(
                f"prompt ({len(ids)} tokens) + max tokens ({max_new_tokens}) exceeds the model's context of {context}"
            )
        stops = tuple(s for s in stop if s)
        eos = frozenset() if ignore_eos else self.eos
        out = [Branch(index=i) for i in range(branches)]
        if deadline is not None and t0 >= deadline:
            for b in out:
                b.finish_reason = "deadline"
            return Generation(out, len(ids), 0.0, 0.0, 0, None)

        m = self.model
        s = m.shape
        P = len(ids)
        spec = SpecStats(drafter.name, gamma) if drafter is not None and gamma > 0 else None
        cache = KVCache(s.n_layers, branches, s.n_kv_heads, P, max_new_tokens + gamma, s.head_dim, m.dtype)
        gen = torch.Generator().manual_seed(sampling.seed)
        logits = m.prefill(torch.tensor([ids]), cache)  # [1, V]
        first = sample(logits.expand(branches, -1), sampling, gen).tolist()
        if spec is not None:
            drafter.begin(ids, branches, max_new_tokens)
        t_prefill = time.monotonic()
        history = [list(ids) for _ in range(branches)]  # prompt + generated, per branch (drafters read it)
        live = list(range(branches))  # live[slot] = branch index; live rows are cache rows 0..n-1
        self._append(out, history, live, [[t] for t in first], t_prefill - t0, max_new_tokens, stops, eos)

        steps, step_s = 0, 0.0
        while live:
            live = self._compact(out, live, cache, drafter if spec is not None else None)
            if not live:
                break
            now = time.monotonic()
            if deadline is not None and now + step_s > deadline:
                for i in live:
                    out[i].finish_reason = "deadline"
                break
            last = torch.tensor([[history[i][-1]] for i in live])  # [n, 1]
            start = torch.tensor([len(history[i]) - 1 for i in live])  # position of each row's last token
            if spec is None:
                logits = m.decode(last, start, cache)[:, -1]  # [n, V]
                new = [[tok] for tok in sample(logits, sampling, gen).tolist()]
            else:
                new = self._speculate(out, live, history, last, start, cache, gamma, drafter, sampling, gen, spec)
            t = time.monotonic()
            step_s = (t - now) if steps == 0 else (1 - _STEP_EMA) * step_s + _STEP_EMA * (t - now)
            steps += 1
            self._append(out, history, live, new, t - t0, max_new_tokens, stops, eos)
            if on_step is not None:
                on_step(out)

        for b in out:
            b.text = self._final_text(b, stops)
        return Generation(out, P, t_prefill - t0, time.monotonic() - t_prefill, steps, spec)

    def _speculate(
        self,
        out: list[Branch],
        live: list[int],
        history: list[list[int]],
        last: torch.Tensor,
        start: torch.Tensor,
        cache: KVCache,
        gamma: int,
        drafter: Drafter,
        sampling: SamplingParams,
        gen: torch.Generator,
        spec: SpecStats,
    ) -> list[list[int]]:
        """One round: draft γ tokens per row, verify all rows' γ+1 positions in one forward, accept per row."""
        t0 = time.perf_counter()
        hists = [history[i] for i in live]
        drafts, n_proposed, q = drafter.propose(hists, gamma, sampling, gen)  # [n, γ], [n], [n, γ, V]?
        # verify only as many positions as the longest proposal: padding would cost compute for nothing
        width = int(n_proposed.max())
        if width < gamma:
            drafts = drafts[:, :width]
            q = q[:, :width] if q is not None else None
        t1 = time.perf_counter()
        logits = self.model.decode(torch.cat([last, drafts], 1), start, cache)  # [n, γ+1, V]
        if sampling.greedy:
            accepted, nxt = greedy_accept(drafts, n_proposed, logits)
        else:
            accepted, nxt = rejection_sample(drafts, n_proposed, probabilities(logits, sampling), q, gen)
        t2 = time.perf_counter()
        acc = accepted.tolist()
        drafter.observe([len(h) for h in hists], acc)
        proposed = n_proposed.tolist()
        spec.record(proposed, acc, t1 - t0, t2 - t1)
        for i, n, a in zip(live, proposed, acc):
            out[i].spec_rounds += 1
            out[i].spec_proposed += n
            out[i].spec_accepted += a
        rows = drafts.tolist()
        return [rows[r][: acc[r]] + [tok] for r, tok in enumerate(nxt.tolist())]

    def _append(
        self,
        out: list[Branch],
        history: list[list[int]],
        live: list[int],
        new_tokens: list[list[int]],
        at: float,
        max_new_tokens: int,
        stops: tuple[str, ...],
        eos: frozenset[int],
    ) -> None:
        """Add each live branch's new tokens and mark the branches that just finished."""
        for i, toks in zip(live, new_tokens):
            b = out[i]
            for tok in toks:
                b.token_ids.append(tok)
                history[i].append(tok)
                b.token_times.append(at)
                if tok in eos:
                    b.finish_reason = "eos"
                elif stops and self._hit_stop(b.token_ids, stops):
                    b.finish_reason = "stop"
                elif b.n_tokens >= max_new_tokens:
                    b.finish_reason = "length"
                if b.finish_reason:
                    break

    def _hit_stop(self, token_ids: list[int], stops: tuple[str, ...]) -> bool:
        """Whether the text of the last few tokens contains a stop string."""
        window = max(len(s) for s in stops) + 8
        tail = self.tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _compact(
        self, out: list[Branch], live: list[int], cache: KVCache, drafter: Drafter | None
    ) -> list[int]:
        """Drop finished branches, moving the last live row into each freed slot (drafter state too)."""
        done = [slot for slot, i in enumerate(live) if out[i].finish_reason]
        if not done:
            return live
        live = list(live)
        for slot in sorted(done, reverse=True):
            last = len(live) - 1
            if slot != last:
                moved = out[live[last]]
                cache.move_row(last, slot, moved.n_tokens - 1)  # slots written so far
                if drafter is not None:
                    drafter.move_row(last, slot)
                live[slot] = live[last]
            live.pop()
        return live

    def _final_text(self, b: Branch, stops: tuple[str, ...]) -> str:
        text = self.tokenizer.decode(b.token_ids, skip_special_tokens=True)
        if b.finish_reason == "stop":
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text
