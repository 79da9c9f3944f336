"""Drafters for speculative decoding: who proposes the next γ tokens of every live branch.

One small protocol (modelled on transformers' ``CandidateGenerator``: ``get_candidates`` /
``update_candidate_strategy``) with two implementations:

- :class:`NGramDrafter` (prompt lookup): continues the most recent earlier occurrence of the
  row's last n tokens (longest n first, up to 12) in the prompt and the row's own output, for up
  to n/2 tokens. No model, no cost; at larger batches only matches of 3 or more tokens propose.
- :class:`GroupDrafter`: n-gram lookup over the prompt and *every* branch of the request (branches
  of one question repeat each other's text), with the continuation counts as a draft distribution
  for sampled rows, so that rejection sampling keeps drafts the target would have sampled anyway.
- :class:`DraftModelDrafter`: a smaller model with the same tokenizer, decoding γ tokens for all
  rows in one batch, with its own branch KV cache rolled back per row on rejection.

Rows are addressed by their slot in the engine's batch; the engine reports compaction through
``move_row`` so per-row state follows its branch. The protocol itself, :class:`latts.request.Drafter`,
lives beside the request that carries a drafter, free of torch. :func:`make_drafter` is the one place a
drafter is built from its spelling.
"""

from __future__ import annotations

import torch

from latts.config import SamplingParams
from latts.engine.models.kv_cache import KVCache
from latts.engine.speculation.sampler import SparseDraftProbs, draw, probabilities
from latts.engine.loading.loader import LoadedModel
from latts.errors import LattsError
from latts.request import Drafter


class NGramDrafter:
    """Prompt lookup: propose what followed the latest earlier match of the last n tokens, longest n first.

    Indexes ``n-gram -> latest end position`` make a lookup O(1) per new token instead of a scan
    of the history: one for the prompt, shared by all rows, and one per row for its own tokens
    (which are later than the prompt's, so a hit there is the latest match). Keys are the n-grams'
    hashes, not the tuples (a row's index holds ``max_n`` keys per token): a rare collision only
    proposes a draft that verification rejects.

    How far a match is trusted grows with its length. On the default model's greedy MATH-500 text
    (8 problems, 256 tokens) the first draft was accepted after a 1-token match 28% of the time,
    after 2 tokens 57%, 3 tokens 56%, 4-7 tokens 68-77%, 12 or more 94%; four drafts in a row after
    3 tokens 19%, after 8 tokens 71%, after 12 or more 80%. So a match of n tokens proposes at most
    ``max(1, n // 2)`` of the γ drafts, and only matches of at least ``min_n`` tokens propose at all.
    At small batches a verified position costs little (decoding is memory-bound) and any match
    pays; from B = 4 on a 2-core CPU a verified position costs about a third of its row's plain step
    (compute-bound: measured 0.33 at B=8, 0.37 at B=4), and only matches of :attr:`CONFIDENT_N`
    tokens pay. ``min_n=None`` picks by the batch size at :meth:`begin`: 1 up to
    :attr:`SMALL_BATCH` rows, else :attr:`CONFIDENT_N`.
    Measured with ``benchmarks/spec_decode.py`` (greedy, best γ): B=8 went from 0.92x (γ drafts
    after any match) to 1.12x (after matches of 3 tokens) to 1.16x (and the n/2 cap); B=1 from 1.39x
    to 1.45x, and large γ stopped costing speed (B=1: 1.38-1.45x at γ = 1-8).
    """

    name = "ngram"
    SMALL_BATCH = 3
    CONFIDENT_N = 3

    def __init__(self, max_n: int = 12, min_n: int | None = None) -> None:
        if min_n is not None and not 1 <= min_n <= max_n:
            raise LattsError(f"n-gram drafter: the least match length must be in 1..{max_n}, got {min_n}")
        self.max_n, self.min_n = max_n, min_n
        self._min_n = min_n or 1  # in force for the current request
        self.match_lengths: list[int] = []  # per row, the length of its last proposing match (0: none)
        self._prompt_index: dict[int, int] = {}
        self._index: list[dict[int, int]] = []
        self._indexed: list[int] = []

    @classmethod
    def least_match(cls, min_n: int | None, max_n: int, rows: int) -> int:
        """The shortest match that proposes: ``min_n`` if set, else 1 up to :attr:`SMALL_BATCH` rows and
        :attr:`CONFIDENT_N` beyond (where a verified position costs a third of a row's step)."""
        return min_n or (1 if rows <= cls.SMALL_BATCH else min(cls.CONFIDENT_N, max_n))

    def begin(self, prompt: list[int], rows: int, max_new_tokens: int) -> None:
        """Index the prompt once (its n-grams ending before its last token); fresh row indexes; the least match."""
        self._prompt_index = {}
        self._add(self._prompt_index, prompt, 0, len(prompt) - 1)
        self._index = [{} for _ in range(rows)]
        self._indexed = [max(0, len(prompt) - 1)] * rows
        self._min_n = self.least_match(self.min_n, self.max_n, rows)

    def _add(self, index: dict[int, int], hist: list[int], first: int, end: int) -> None:
        """Index every n-gram (n <= max_n) of ``hist`` ending at positions ``first .. end - 1``."""
        for j in range(first, end):
            for n in range(1, min(self.max_n, j + 1) + 1):
                index[hash(tuple(hist[j - n + 1 : j + 1]))] = j

    def _lookup(self, slot: int, hist: list[int], gamma: int) -> list[int]:
        index, end = self._index[slot], len(hist) - 1
        # index every n-gram that ends before the last position (the last one is the query)
        self._add(index, hist, self._indexed[slot], end)
        self._indexed[slot] = max(self._indexed[slot], end)
        for n in range(min(self.max_n, end + 1), self._min_n - 1, -1):
            key = hash(tuple(hist[end - n + 1 : end + 1]))
            j = index.get(key)
            if j is None:
                j = self._prompt_index.get(key)
            if j is not None:
                self.match_lengths[slot] = n
                return hist[j + 1 : j + 1 + min(gamma, max(1, n // 2))]
        return []

    def propose(
        self, histories: list[list[int]], gamma: int, sampling: SamplingParams, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Continuations of the latest n-gram matches, padded with 0 to ``gamma``; ``match_lengths`` says
        how long each row's match was (0: none), which the engine's γ policy reads."""
        self.match_lengths = [0] * len(histories)
        found = [self._lookup(slot, hist, gamma) for slot, hist in enumerate(histories)]
        drafts = torch.zeros((len(histories), gamma), dtype=torch.long)
        for row, toks in enumerate(found):
            drafts[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        return drafts, torch.tensor([len(t) for t in found], dtype=torch.long), None

    def observe(self, lengths_before: list[int], accepted: list[int]) -> None:
        """Nothing to learn: the index follows the history itself."""

    def move_row(self, src: int, dst: int) -> None:
        """Per-row indexes follow their branch."""
        self._index[dst], self._indexed[dst] = self._index[src], self._indexed[src]


class GroupDrafter:
    """Drafts every row from the longest match anywhere in its group: the prompt and all branches so far.

    Branches of one question repeat each other (the same steps, the same formulas, the same answer
    phrasing), so what one branch wrote is a draft for the others; STAND (arXiv 2506.04708) and
    vLLM's suffix decoding draft across reasoning traces the same way. The index maps each n-gram
    (n <= ``max_n``, by hash) to the counts of the tokens that followed it anywhere in the group;
    branches that finished stay in it. A row's suffix is looked up longest first; the draft goes on
    from the drafted tokens themselves, for at most ``max(1, n // 2)`` tokens after a first match of
    n tokens (as :class:`NGramDrafter`, whose measurements set that rule).

    Greedy rows take the most frequent continuation. Sampled rows *draw* their draft from the
    continuation counts (the distribution ``q`` given to the rejection sampler): where branches
    diverge, a row is offered what its group wrote in proportion, and acceptance, ``sum min(p, q)``,
    beats one-hot drafts of a single continuation. Exactness needs nothing else (any ``q`` works).
    """

    name = "group"

    def __init__(self, max_n: int = 12, min_n: int | None = None) -> None:
        if min_n is not None and not 1 <= min_n <= max_n:
            raise LattsError(f"group drafter: the least match length must be in 1..{max_n}, got {min_n}")
        self.max_n, self.min_n = max_n, min_n
        self._min_n = min_n or 1
        self._counts: dict[int, dict[int, int]] = {}  # n-gram hash -> next token -> count
        self.match_lengths: list[int] = []  # per row, the length of its last first match (0: none)
        self._indexed: list[int] = []  # per row: n-grams ending before this position are counted

    def begin(self, prompt: list[int], rows: int, max_new_tokens: int) -> None:
        """Count the prompt's n-grams once; every row then adds its own tokens as they are kept."""
        self._counts = {}
        self._add(prompt, 0, len(prompt) - 1)
        self._indexed = [max(0, len(prompt) - 1)] * rows
        self._min_n = NGramDrafter.least_match(self.min_n, self.max_n, rows)

    def _add(self, hist: list[int], first: int, end: int) -> None:
        """Count, for every position j in ``first .. end - 1``, the token after each n-gram ending at j."""
        for j in range(first, end):
            nxt = hist[j + 1]
            for n in range(1, min(self.max_n, j + 1) + 1):
                followers = self._counts.setdefault(hash(tuple(hist[j - n + 1 : j + 1])), {})
                followers[nxt] = followers.get(nxt, 0) + 1

    def _match(self, hist: list[int]) -> tuple[int, dict[int, int]] | None:
        """(n, counts of what followed) for the longest suffix of ``hist`` seen in the group, or None."""
        for n in range(min(self.max_n, len(hist)), self._min_n - 1, -1):
            followers = self._counts.get(hash(tuple(hist[-n:])))
            if followers:
                return n, followers
        return None

    @staticmethod
    def _most_drafts(match: int, gamma: int) -> int:
        """The most drafts a row may offer after a first match of ``match`` tokens (0: none): half the
        match, at least one, at most γ. Known from the history alone, before any draft is drawn."""
        return min(gamma, max(1, match // 2)) if match else 0

    def _draft_row(self, hist: list[int], gamma: int, sampling: SamplingParams,
                   generator: torch.Generator) -> tuple[list[int], list[dict[int, float]], int]:
        """(drafts, their distributions when sampled, the first match's length)."""
        first = 0  # the length of the match the draft started from
        drafts: list[int] = []
        dists: list[dict[int, float]] = []
        context = list(hist[-self.max_n :])
        limit = gamma
        while len(drafts) < limit:
            found = self._match(context)
            if found is None:
                break
            n, followers = found
            if not drafts:
                first, limit = n, self._most_drafts(n, gamma)
            if sampling.greedy:
                tok = max(followers.items(), key=lambda kv: (kv[1], -kv[0]))[0]
            else:
                total = sum(followers.values())
                dist = {t: c / total for t, c in followers.items()}
                toks = list(dist)
                pick = torch.multinomial(torch.tensor([dist[t] for t in toks]), 1, generator=generator)
                tok = toks[int(pick)]
                dists.append(dist)
            drafts.append(tok)
            context = context[1:] + [tok] if len(context) >= self.max_n else context + [tok]
        return drafts, dists, first

    def propose(
        self, histories: list[list[int]], gamma: int, sampling: SamplingParams, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, SparseDraftProbs | None]:
        """Every row's drafts from the group's counts, padded with 0 to ``gamma``; their distributions when sampled."""
        for slot, hist in enumerate(histories):  # the group first takes in every row's kept tokens
            end = len(hist) - 1
            if self._indexed[slot] < end:
                self._add(hist, self._indexed[slot], end)
                self._indexed[slot] = end
        found = [self._draft_row(hist, gamma, sampling, generator) for hist in histories]
        self.match_lengths = [n for _, _, n in found]
        # sampled drafts go on only while the drawn ones keep matching: how many a row offered depends
        # on the values drawn, the most it could offer does not (the engine's γ policy decides on this)
        self.draft_limits = [self._most_drafts(n, gamma) for n in self.match_lengths]
        drafts = torch.zeros((len(histories), gamma), dtype=torch.long)
        for row, (toks, _, _) in enumerate(found):
            drafts[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        q = None if sampling.greedy else SparseDraftProbs([dists for _, dists, _ in found])
        return drafts, torch.tensor([len(t) for t, _, _ in found], dtype=torch.long), q

    def observe(self, lengths_before: list[int], accepted: list[int]) -> None:
        """Nothing to learn: the counts follow the rows' histories."""

    def move_row(self, src: int, dst: int) -> None:
        """A row's counting position follows its branch (its counted tokens stay in the group)."""
        self._indexed[dst] = self._indexed[src]


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft model whose tokenizer maps text to different ids than the target's."""
    t_vocab, d_vocab = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if t_vocab != d_vocab:
        diff = len(set(t_vocab.items()) ^ set(d_vocab.items()))
        raise LattsError(
            f"draft model {draft.name} has another tokenizer than target {target.name} "
            f"({len(d_vocab)} vs {len(t_vocab)} tokens, {diff} entries differ): speculative decoding needs the same vocabulary"
        )
    if draft.model.shape.vocab > target.model.shape.vocab:
        raise LattsError(f"draft model {draft.name} has a larger output vocabulary than target {target.name}")


class DraftModelDrafter:
    """A smaller same-tokenizer model decoding γ draft tokens for every row in one batch."""

    def __init__(self, draft: LoadedModel, target_vocab: int) -> None:
        self.draft = draft
        self.model = draft.model
        self.name = f"model:{draft.name}"
        self.target_vocab = target_vocab
        self.cache: KVCache | None = None
        self._fed: list[int] = []  # per row: positions whose K/V in the draft cache match the history

    def begin(self, prompt: list[int], rows: int, max_new_tokens: int) -> None:
        """Prefill the prompt once into the draft's own shared-prefix cache."""
        # drafts can run up to gamma past the budget; 64 slots of slack covers any sane gamma
        self.cache = self.model.new_cache(rows, len(prompt), max_new_tokens + 64)
        self.model.prefill(torch.tensor([prompt]), self.cache)
        self._fed = [len(prompt)] * rows

    def propose(
        self, histories: list[list[int]], gamma: int, sampling: SamplingParams, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """γ tokens per row, sampled from the draft with the request's sampling settings."""
        assert self.cache is not None
        n = len(histories)
        lengths = [len(h) for h in histories]
        # feed what the draft has not seen yet (at least the last token), right-padded to a common width
        fed = self._fed[:n]
        k = max(length - f for length, f in zip(lengths, fed))
        tokens = torch.zeros((n, k), dtype=torch.long)
        for row, (h, f) in enumerate(zip(histories, fed)):
            tokens[row, : len(h) - f] = torch.tensor(h[f:])
        unseen = torch.tensor(lengths) - torch.tensor(fed)
        logits = self.model.decode(tokens, torch.tensor(fed), self.cache, unseen)  # [n, k, V_draft]
        logits = logits[torch.arange(n), unseen - 1]  # each row's last real token
        drafts, dists = [], []
        for i in range(gamma):
            q = probabilities(logits, sampling)  # [n, V_draft]
            tok = q.argmax(-1) if sampling.greedy else draw(q, generator)
            drafts.append(tok)
            dists.append(q)
            if i < gamma - 1:
                logits = self.model.decode(tok[:, None], torch.tensor(lengths) + i, self.cache)[:, -1]
        for row, length in enumerate(lengths):
            self._fed[row] = length + gamma - 1
        q_all = torch.stack(dists, 1)  # [n, gamma, V_draft]
        if q_all.shape[-1] < self.target_vocab:
            q_all = torch.nn.functional.pad(q_all, (0, self.target_vocab - q_all.shape[-1]))
        return torch.stack(drafts, 1), torch.full((n,), gamma, dtype=torch.long), q_all

    def observe(self, lengths_before: list[int], accepted: list[int]) -> None:
        """Forget draft K/V past the accepted prefix (rolled back by position, nothing is cleared)."""
        for row, (length, a) in enumerate(zip(lengths_before, accepted)):
            self._fed[row] = min(self._fed[row], length + a)

    def move_row(self, src: int, dst: int) -> None:
        """Move the draft cache row along with its branch."""
        assert self.cache is not None
        self.cache.move_row(src, dst, self._fed[src] - self.cache.prompt_len)
        self._fed[dst] = self._fed[src]


def _is_ngram(spec: str) -> bool:
    return spec == "ngram" or spec.startswith("ngram:")


def _is_group(spec: str) -> bool:
    return spec == "group" or spec.startswith("group:")


def is_model_free(spec: str) -> bool:
    """Whether a drafter spelling needs no model (``ngram``, ``ngram:N``, ``group``, ``group:N``)."""
    return _is_ngram(spec) or _is_group(spec)


def check_drafter_spec(spec: str) -> None:
    """Refuse a drafter spelling :func:`make_drafter` would not understand, before any model is loaded."""
    if is_model_free(spec):
        ngram_drafter(spec)  # cheap: no model; its own checks name the problem
    elif not spec.startswith("model:"):
        raise LattsError(f"unknown drafter '{spec}': use ngram, ngram:N, group, group:N or model:PATH")


def ngram_drafter(spec: str) -> NGramDrafter | GroupDrafter:
    """A model-free drafter from its spelling: ``ngram`` / ``group`` (least match length by batch size),
    ``ngram:N`` / ``group:N`` (matches of at least N tokens)."""
    if not is_model_free(spec):
        raise LattsError(f"drafter '{spec}' is not an n-gram drafter")
    kind, _, n = spec.partition(":")
    cls = NGramDrafter if kind == "ngram" else GroupDrafter
    if not n:
        return cls()
    if not n.isdigit():
        raise LattsError(f"drafter '{spec}': use {kind}:N with N the least match length")
    return cls(min_n=int(n))  # refuses N outside 1..max_n


def make_drafter(spec: str, target: LoadedModel | None = None, dtype: str | torch.dtype | None = None,
                 engine: str = "auto") -> Drafter:
    """Build a drafter from its CLI spelling: ``ngram`` (``ngram:N``: only matches of at least N tokens),
    ``group`` (``group:N``; :class:`GroupDrafter`) or ``model:PATH`` (same-tokenizer model, loaded on
    ``engine``: see :mod:`latts.engine.loading.choice`), which drafts for the embedded ``target`` model."""
    if is_model_free(spec):
        return ngram_drafter(spec)
    check_drafter_spec(spec)
    if target is None:
        raise LattsError(f"drafter '{spec}' drafts in the embedded engine; a server drafts for itself")
    from latts.engine.loading.loader import load

    # the draft runs the same kind of weights as the target (a fast target's draft in plain
    # float32 would read ~4x the bytes per token it needs to)
    draft = load(spec.removeprefix("model:"), dtype if dtype is not None else target.dtype,
                 fast=None if dtype is not None else getattr(target.model, "fast", False), engine=engine)
    check_same_tokenizer(target, draft)
    return DraftModelDrafter(draft, target.model.shape.vocab)

