"""The embedded engine: B branches of one prompt decoded together in one batch.

The prompt is prefilled once; its K/V are shared by every branch (see ``kv_cache``). Then each step
is schedule → step → postprocess (as in nano-vllm's engine):

- ``_schedule`` holds the deadline: a monotonic ``deadline`` ends all branches with finish reason
  ``deadline`` as soon as the next step would not fit before it (and, with budget forcing, forces
  answers once the time left only covers them);
- ``_step`` runs one forward over every live row (its drafts when speculating, its forced text when
  it has some) and chooses each row's new tokens;
- ``_postprocess`` applies them: every finishing and forcing rule, log-probabilities, K/V progress,
  checkpoint probes, and compaction of the batch, so finished branches cost nothing.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from latts.config import SamplingParams
from latts.engine.budget import Appender, Forcing, Row, branch_text, thinking_tags
from latts.engine.models.kv_cache import KVCache
from latts.engine.pruning import ConfidencePruner
from latts.engine.speculation.sampler import sample
from latts.engine.speculation.speculator import EMA, Speculator
from latts.engine.models.threads import CoreShare, configured_threads
from latts.errors import DeadlineReached, LattsError
from latts.engine.loading.loader import LoadedModel
from latts.request import Drafter, GenerateRequest, OnStep
from latts.types import Branch, Generation, MachineLoad, SpecStats

log = logging.getLogger(__name__)

# the step-time estimate held against the deadline is the median of the last few steps: one stalled step (another
# process took the CPU for a moment, as happens on a 2-core machine) must not force every answer at once, while a
# lasting slowdown shows within a few steps
_STEP_WINDOW = 5


class Engine:
    """Batched branch decoding on a loaded model. Not thread-safe: one request at a time."""

    concurrent = False  # one request at a time (the Backend protocol's flag)

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos = frozenset(loaded.eos_token_ids)
        self._tags = thinking_tags(self.tokenizer)  # special-token thinking tags, kept in branch texts
        self.warmup_s = 0.0
        self._step_hint: dict[tuple[int, int], float] = {}  # last measured step time per (batch size, threads)
        self.cores = CoreShare()  # the cores other processes hold: a forward runs on the threads left
        self.speculator = Speculator(self.model)  # speculative rounds, and the γ policy's measurements

    def warmup(self, branches: Sequence[int] = (1, 16)) -> float:
        """Run a few tiny requests so first-call costs never land inside a user's deadline; seconds spent."""
        t0 = time.perf_counter()
        for b in branches:
            self.generate(GenerateRequest([1, 2, 3, 4], branches=b, max_new_tokens=4,
                                          sampling=SamplingParams(temperature=1.0)))
        self.speculator.measure()
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

    def count_prompt_tokens(self, prompt: str | Sequence[int], chat: bool = True) -> int:
        """How many tokens ``prompt`` is once encoded as ``generate`` encodes it."""
        return len(self.encode(prompt, chat))

    def generate(self, request: GenerateRequest, on_step: OnStep | None = None) -> Generation:
        """Decode ``request``'s branches together (see :class:`~latts.request.GenerateRequest`).

        ``on_step`` is called with the branches after every step (live views, early stopping); keep it
        cheap. Returning True ends the request: unfinished branches become ``cancelled``.
        """
        ids, forcing, max_new_tokens = self._admit(request)
        self.speculator.start(request)  # before the request's clock
        threads = self.cores.apply()
        t0 = time.monotonic()
        if request.deadline is not None and t0 >= request.deadline:
            return _cut_at_deadline(request, ids, 0.0, self._load(threads))
        try:
            batch = self._prefill(request, ids, forcing, max_new_tokens, t0)
        except DeadlineReached:  # the prompt could not be read in time: no branch can answer
            return _cut_at_deadline(request, ids, time.monotonic() - t0, self._load(threads))
        while batch.live and self._schedule(batch):
            self._postprocess(batch, self._step(batch))
            if on_step is not None and on_step(batch.out[: request.branches]):
                batch.cancel()
                break
        self._step_hint[(request.branches, batch.threads)] = batch.step_s
        for b in batch.out:
            b.text = self._final_text(b, request.stop)
        B = request.branches
        return Generation(batch.out[:B], len(ids), batch.t_prefill - t0, time.monotonic() - batch.t_prefill,
                          batch.steps, batch.spec, probes=batch.out[B:], load=self._load(batch.threads, batch))

    def _load(self, threads: int, b: _Batch | None = None) -> MachineLoad:
        """What the machine's load did to this request: cores others held, threads used, and how much slower
        its plain steps ran than the same batch's at warm-up (context growth included)."""
        slowdown = round(statistics.median(b.slowdowns), 2) if b is not None and b.slowdowns else None
        return MachineLoad(round(self.cores.others, 2), threads, configured_threads(), slowdown)

    def _admit(self, request: GenerateRequest) -> tuple[list[int], Forcing | None, int]:
        """What the request needs that only this model can check: prompt ids, forcing in its tokens, and
        the per-branch token budget (with forcing: room for thinking and answer), all within the context."""
        if request.gamma > 0 and request.drafter is None:
            raise LattsError("speculative decoding (gamma > 0) needs a drafter")
        ids = self.encode(request.prompt, request.chat)
        vocab = self.model.shape.vocab
        if any(t >= vocab for t, _ in request.sampling.logit_bias):
            raise LattsError(f"logit bias token ids must be in [0, {vocab}) for this model")
        forcing = Forcing.build(self.tokenizer, request.budget) if request.budget is not None else None
        max_new_tokens = forcing.capacity if forcing is not None else request.max_new_tokens
        context = self.model.max_positions
        if len(ids) + max_new_tokens + request.gamma + (len(forcing.answer) if forcing else 0) > context:
            raise LattsError(
                f"prompt ({len(ids)} tokens) + max tokens ({max_new_tokens}) exceeds the model's context of {context}"
            )
        return ids, forcing, max_new_tokens

    def _prefill(self, request: GenerateRequest, ids: list[int], forcing: Forcing | None, max_new_tokens: int,
                 t0: float) -> _Batch:
        """Prefill the prompt once for all branches and give every branch its first token."""
        m, B, P = self.model, request.branches, len(ids)
        drafter = request.drafter if request.gamma > 0 else None
        # slack past the budget: speculation verifies γ more positions, and a catch-up forward pads every
        # row to the longest forced text
        slack = request.gamma + (max(len(forcing.answer), len(forcing.ignore)) if forcing is not None else 0)
        # every checkpoint may have a probe of every branch alive at once: rows for all of them
        rows_cap = B * (1 + len(request.checkpoints))
        cache = m.new_cache(rows_cap, P, max_new_tokens + slack)
        gen = torch.Generator().manual_seed(request.sampling.seed)
        logits = m.prefill(torch.tensor([ids]), cache, deadline=request.deadline).expand(B, -1)  # [B, V]: one prompt, B branches
        first = sample(logits, request.sampling, gen).tolist()  # [B]
        if drafter is not None:
            drafter.begin(ids, B, max_new_tokens)
        t_prefill = time.monotonic()
        out = [Branch(index=i) for i in range(B)]
        rows = [Row(list(ids), fed=P) for _ in range(B)]  # per branch: history and K/V progress
        eos = frozenset() if request.ignore_eos else self.eos
        append = Appender(self.tokenizer, out, rows, max_new_tokens, request.stop, eos, forcing,
                          frozenset(request.checkpoints))
        spec = SpecStats(drafter.name, request.gamma) if drafter is not None else None
        # until a step has been timed: the step time last measured at the nearest batch size (it also joins the
        # first steps' median, so that one slow first step does not decide alone), else the prefill (which costs
        # at least a step)
        threads = torch.get_num_threads()
        near = min((n for n, t in self._step_hint if t == threads), key=lambda n: abs(n - B), default=None)
        step_s = self._step_hint[(near, threads)] if near is not None else self._first_step_guess(B, threads,
                                                                                                  t_prefill - t0)
        pruner = ConfidencePruner(request.pruning) if request.pruning is not None else None
        batch = _Batch(request, out, rows, list(range(B)), cache, append, gen, drafter, spec, t0, t_prefill,
                       step_s, pruner, threads=threads)
        if near is not None:
            batch.recent.append(step_s)
        self._postprocess(batch, _Step([[t] for t in first], logits[:, None], t_prefill - t0))
        return batch

    def _first_step_guess(self, B: int, threads: int, prefill_s: float) -> float:
        """A step's seconds before any was timed at this thread count: warm-up's plain step of B rows, scaled
        to the threads in use, else the prefill's time (which costs at least a step)."""
        shape = self.speculator.cost_shape
        if shape is None:
            return prefill_s
        return shape.plain(B) * configured_threads() / threads

    def _schedule(self, b: _Batch) -> bool:
        """Hold the deadline before a step: False (every live branch ended ``deadline``) when the step would
        not fit before it; with forcing, make every live branch answer once the time left only covers that.
        The step runs on the threads the machine's load leaves (a change restarts the step clock's median)."""
        b.now = time.monotonic()
        threads = self.cores.apply(b.now)
        if threads != b.threads:
            b.threads = threads
            b.recent.clear()
            b.recent.append(b.step_s)
        deadline, forcing = b.request.deadline, b.append.forcing
        if deadline is None:
            return True
        if b.now + b.step_s > deadline:
            for i in b.live:
                b.out[i].finish_reason = "deadline"
            return False
        if forcing is not None and b.now + b.step_s * forcing.answer_steps > deadline:
            for i in b.live:
                b.append.force_answer(i, "deadline", b.now - b.t0)
        return True

    def _step(self, b: _Batch) -> _Step:
        """One forward over every live row: each row's forced text (catch-up), or its last token with its
        drafts (speculation) or alone; then each row's new tokens."""
        live, rows, sampling = b.live, b.rows, b.request.sampling
        pending = [len(rows[i].history) - rows[i].fed for i in live]  # [n] tokens not yet in the cache
        start = torch.tensor([rows[i].fed for i in live])  # [n] position of each row's first unfed token
        if max(pending) > 1:  # forced text to feed: one ragged forward over it, no speculation this step
            feed = torch.zeros((len(live), max(pending)), dtype=torch.long)  # [n, max pending]
            for r, i in enumerate(live):
                feed[r, : pending[r]] = torch.tensor(rows[i].history[rows[i].fed :])
            width = torch.tensor(pending)  # [n]
            logits = self.model.decode(feed, start, b.cache, width)  # [n, max pending, V]
            logits = logits[torch.arange(len(live)), width - 1]  # [n, V]: after each row's last forced token
            new = [[tok] for tok in sample(logits, sampling, b.gen).tolist()]
            logits = logits[:, None]  # [n, 1, V]
        else:
            last = torch.tensor([[rows[i].history[-1]] for i in live])  # [n, 1]: each row's one unfed token
            pending = None
            if b.spec is None or not self.speculator.may_pay(b.request, len(live), b.plain_s or b.step_s):
                logits = self._plain_forward(b, last, start)  # [n, V]
                new = [[tok] for tok in sample(logits, sampling, b.gen).tolist()]
                logits = logits[:, None]  # [n, 1, V]
            else:
                new, logits = self._speculate(b, last, start)  # logits [n, width + 1, V]
        t = time.monotonic()
        b.recent.append(t - b.now)
        b.step_s = statistics.median(b.recent)
        b.steps += 1
        return _Step(new, logits, t - b.t0, pending, start)

    def _postprocess(self, b: _Batch, step: _Step) -> None:
        """Apply a step's tokens: finishing and forcing rules, log-probabilities, K/V progress, the drafter's
        feedback, checkpoint probes; then drop the finished rows from the batch."""
        kept = b.append(b.live, step.new, step.at)  # [n] tokens each row kept
        if b.request.logprobs:
            _add_logprobs(b.out, b.live, step.new, kept, step.logits)
        if b.pruner is not None:
            self._prune(b, kept, step.logits)
        if step.start is not None:  # a decode step (the prefill's own tokens are not in the cache yet)
            for r, i in enumerate(b.live):
                if step.pending is not None:
                    b.rows[i].fed += step.pending[r]
                else:  # the fed token and the drafts accepted before it, as far as they stayed in the history
                    b.rows[i].fed += 1 + min(len(step.new[r]) - 1, kept[r])
            if b.spec is not None and step.pending is None:  # a suppressed stop can cut accepted drafts
                b.drafter.observe([int(p) + 1 for p in step.start],
                                  [min(len(t) - 1, k) for t, k in zip(step.new, kept)])
        self._fork_probes(b, step.at)
        self._compact(b)

    def _prune(self, b: _Batch, kept: list[int], logits: torch.Tensor) -> None:
        """Feed the pruner the confidences of the model tokens each thinking row kept; stop those under the bar."""
        for r, i in enumerate(b.live):
            k = min(kept[r], logits.shape[1])
            if k and b.rows[i].phase == "think":
                b.pruner.observe(i, logits[r, :k])
        running = [i for i in b.live if not b.out[i].finish_reason]
        thinking = [i for i in running if b.rows[i].phase == "think" and b.out[i].parent is None]
        for i in b.pruner.to_prune(thinking, len(running)):
            b.out[i].finish_reason = "pruned"

    def _fork_probes(self, b: _Batch, at: float) -> None:
        """Copy every branch that just reached a checkpoint (tokens, state, cache row) into a new live probe
        forced to answer now. A branch no longer thinking is skipped: its own answer stands for that
        budget."""
        for parent, checkpoint in b.append.take_forks():
            branch, row = b.out[parent], b.rows[parent]
            if row.phase != "think" or branch.finish_reason:
                continue
            probe = Branch(index=len(b.out), token_ids=list(branch.token_ids),
                           token_times=list(branch.token_times), think_tokens=branch.think_tokens,
                           ignored=branch.ignored, parent=parent, checkpoint=checkpoint)
            b.out.append(probe)
            b.rows.append(Row(list(row.history), fed=row.fed))
            written = row.fed - b.cache.prompt_len  # the parent's K/V so far
            b.cache.move_row(b.live.index(parent), len(b.live), written)
            b.live.append(probe.index)
            b.append.force_answer(probe.index, "checkpoint", at)

    def _plain_forward(self, b: _Batch, last: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """One token a row through the fastest path; logits ``[n, V]``; its time kept for the γ policy."""
        t = time.perf_counter()
        logits = self.model.decode(last, start, b.cache)[:, -1]
        took = time.perf_counter() - t
        b.plain_s = took if not b.plain_s else b.plain_s + EMA * (took - b.plain_s)
        shape = self.speculator.cost_shape
        if shape is not None:  # against the same rows' plain forward at warm-up: the machine's load shows
            b.slowdowns.append(took / shape.plain(len(b.live)))
        return logits

    def _speculate(self, b: _Batch, last: torch.Tensor,
                   start: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
        """One speculative round (:meth:`Speculator.round`); each row's new tokens and the logits
        ``[n, w, V]`` they were chosen from."""
        hists = [b.rows[i].history for i in b.live]
        done = self.speculator.round(b.request, b.drafter, hists, last, start, b.cache, b.gen, b.spec,
                                     b.plain_s or b.step_s, lambda: self._plain_forward(b, last, start))
        for i, n, a in zip(b.live, done.proposed, done.accepted):
            b.out[i].spec_rounds += 1
            b.out[i].spec_proposed += n
            b.out[i].spec_accepted += a
        return done.new, done.logits

    def _compact(self, b: _Batch) -> None:
        """Drop finished branches, moving the last live row into each freed slot (drafter state too)."""
        done = [slot for slot, i in enumerate(b.live) if b.out[i].finish_reason]
        for slot in sorted(done, reverse=True):
            last = len(b.live) - 1
            if slot != last:
                written = b.rows[b.live[last]].fed - b.cache.prompt_len  # slots written so far
                b.cache.move_row(last, slot, written)
                if b.drafter is not None:
                    b.drafter.move_row(last, slot)
                b.live[slot] = b.live[last]
            b.live.pop()

    def _final_text(self, b: Branch, stops: tuple[str, ...]) -> str:
        text = branch_text(self.tokenizer, b.token_ids, self._tags)
        if b.finish_reason == "stop":
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text


def _cut_at_deadline(request: GenerateRequest, ids: list[int], prefill_s: float, load: MachineLoad) -> Generation:
    """The request's deadline came before any branch could start: every branch ends ``deadline``, empty."""
    out = [Branch(index=i, finish_reason="deadline") for i in range(request.branches)]
    return Generation(out, len(ids), prefill_s, 0.0, 0, None, load=load)


def _add_logprobs(out: list[Branch], live: list[int], new: list[list[int]], kept: list[int],
                  logits: torch.Tensor) -> None:
    """Add the log-probabilities of the model tokens each row kept; ``logits[r, j]`` chose ``new[r][j]``."""
    width = max(kept) if kept else 0
    if width == 0:
        return
    logp = torch.log_softmax(logits[:, :width].float(), dim=-1)
    for r, i in enumerate(live):
        if kept[r]:
            toks = torch.tensor(new[r][: kept[r]])
            out[i].logprob_sum += float(logp[r, torch.arange(kept[r]), toks].sum())
            out[i].logprob_count += kept[r]


class _Step(NamedTuple):
    """What one forward gave the live rows: their new tokens and the logits ``[n, w, V]`` they came from."""

    new: list[list[int]]
    logits: torch.Tensor
    at: float  # seconds since the request started
    pending: list[int] | None = None  # catch-up: forced tokens each row fed (None: one token and its drafts)
    start: torch.Tensor | None = None  # [n] each row's first fed position (None: the prefill's first tokens)


@dataclass(slots=True)
class _Batch:
    """One request in flight: its branches (and probes), their rows in the cache, and the step clock."""

    request: GenerateRequest
    out: list[Branch]  # branches, then probes
    rows: list[Row]  # per entry of ``out``
    live: list[int]  # live[slot] = index into ``out``; live rows are cache rows 0..n-1
    cache: KVCache
    append: Appender
    gen: torch.Generator
    drafter: Drafter | None  # only when speculating
    spec: SpecStats | None
    t0: float
    t_prefill: float
    step_s: float  # estimated seconds per step (median of ``recent``), held against the deadline
    pruner: ConfidencePruner | None = None  # with ``request.pruning``
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_STEP_WINDOW))  # the last steps' seconds
    plain_s: float = 0.0  # seconds of a plain forward of the live rows now (EMA; 0 until one ran)
    threads: int = 1  # threads the forwards run on now (fewer while other processes hold cores)
    slowdowns: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # plain forwards / warm-up's
    steps: int = 0
    now: float = 0.0  # when the current step was scheduled

    def cancel(self) -> None:
        """The caller ended the request: every unfinished live branch is ``cancelled``."""
        for i in self.live:
            if not self.out[i].finish_reason:
                self.out[i].finish_reason = "cancelled"
