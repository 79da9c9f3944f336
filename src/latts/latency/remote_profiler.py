"""``latts profile --backend openai``: the latency of a remote server versus the number of branches.

A server is a black box: its forward time per (B, k) cannot be timed directly as on the embedded
engine. What the latency model needs can still be measured end to end from streamed, fixed-length
generations (end-of-sequence banned through ``logit_bias``): the time to the first token per prompt
length (prefill plus queueing), and the time per decode step with B branches at a given context —
(last token − first token) / (tokens − 1) of the slowest branch. The server's own speculation is part
of what is measured (k = 1 samples of a server running γ: the plan records that γ).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from latts.config import SamplingParams
from latts.errors import LattsError
from latts.latency.model import PrefillSample, StepSample
from latts.latency.profile import Profile
from latts.request import GenerateRequest

REMOTE_BRANCHES = (1, 2, 4, 8)
REMOTE_CONTEXTS = (64, 512)
_FILLER = "The quick brown fox jumps over the lazy dog while the five boxing wizards jump quickly. "


def _prompt_ids(backend, tokens: int) -> list[int]:
    """A plain-text prompt of exactly ``tokens`` token ids (no chat template)."""
    ids = list(backend.tokenizer(_FILLER * (tokens // 8 + 2), add_special_tokens=False)["input_ids"])
    return ids[:tokens]


def profile_remote(
    backend,
    branches: Sequence[int] = REMOTE_BRANCHES,
    contexts: Sequence[int] = REMOTE_CONTEXTS,
    tokens: int = 24,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Measure ``backend`` (an :class:`~latts.backends.openai.OpenAIBackend`) over B × context."""
    if tokens < 4:
        raise LattsError(f"a remote profile needs at least 4 tokens per generation, got {tokens}")
    if not branches or min(branches) < 1 or not contexts or min(contexts) < 1:
        raise LattsError("branches and contexts must be >= 1")
    prof = Profile(backend.model, "remote", {"cpu": "remote", **backend.describe()},
                   measured_with=backend.measured_with())
    for ctx in contexts:
        ids = _prompt_ids(backend, ctx)
        firsts = []
        for b in branches:
            steps = []
            for r in range(repeats):
                gen = backend.generate(GenerateRequest(ids, branches=b, max_new_tokens=tokens, chat=False,
                                                       ignore_eos=True, sampling=SamplingParams(1.0, seed=r),
                                                       gamma=backend.server_gamma))
                times = [br.token_times for br in gen.branches if len(br.token_times) >= 2]
                if len(times) < b:
                    raise LattsError(f"the server streamed too few tokens for B={b}, context {ctx}")
                # from the first token of any branch to the last of all: B rows decode together (n) or
                # take turns (requests on a server with fewer slots), and the plan waits for the last
                first, last = min(t[0] for t in times), max(t[-1] for t in times)
                steps.append((last - first) / (min(len(t) for t in times) - 1))
                if b == 1:
                    firsts.append(gen.prefill_s)
            prof.steps.append(StepSample(b, 1, ctx + tokens // 2, statistics.median(steps)))
            if progress is not None:
                progress(f"B={b} context={ctx}: {prof.steps[-1].seconds * 1000:.1f} ms/step")
        if firsts:
            prof.prefills.append(PrefillSample(len(ids), statistics.median(firsts)))
    return prof
