"""Batched speculative decoding: lossless against plain decoding, on the real default model."""

from __future__ import annotations

from dataclasses import replace

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from latts.config import SamplingParams
from latts.engine.speculation.drafters import GroupDrafter, NGramDrafter, make_drafter
from latts.engine.speculation.sampler import SparseDraftProbs, greedy_accept, rejection_sample
from latts.errors import LattsError
from latts.request import GenerateRequest

from distributions import assert_speculation_samples_like_plain, homogeneity_table

PROMPT = "Explain step by step how to compute 17 * 23."


def drafters(engine, draft_folder):
    return {"ngram": NGramDrafter(), "group": GroupDrafter(),
            "model": make_drafter(f"model:{draft_folder}", engine.loaded)}


@pytest.mark.parametrize("branches", [1, 4])
@pytest.mark.parametrize("kind", ["ngram", "group", "model"])
@pytest.mark.parametrize("gamma", [3, 4])
def test_greedy_speculation_is_token_identical(engine, draft_folder, branches, kind, gamma) -> None:
    plain = engine.generate(GenerateRequest(PROMPT, branches=branches, max_new_tokens=100, ignore_eos=True))
    drafter = drafters(engine, draft_folder)[kind]
    spec = engine.generate(GenerateRequest(PROMPT, branches=branches, max_new_tokens=100, ignore_eos=True,
                                           gamma=gamma, gamma_policy="fixed", drafter=drafter))
    for a, b in zip(plain.branches, spec.branches):
        assert len(b.token_ids) == 100
        assert b.token_ids == a.token_ids
    s = spec.spec
    assert s is not None and s.rounds > 0 and s.proposed > 0
    assert 0 <= s.acceptance_rate <= 1 and 1 <= s.mean_accepted_length <= gamma + 1
    # one verify forward per step, computing each row's own proposal (+1): the branches' own counts agree
    assert s.verifies == spec.steps and 1 <= s.mean_verify_width <= gamma + 1
    rounds, proposed = (sum(getattr(b, f) for b in spec.branches) for f in ("spec_rounds", "spec_proposed"))
    assert rounds == s.rounds >= spec.steps and s.mean_verify_width == pytest.approx(1 + proposed / rounds)
    assert s.proposal_rate == pytest.approx(s.proposed / (s.rounds * gamma))
    # fewer verify steps than tokens: speculation really advanced rows by more than one token
    if kind in ("ngram", "group"):
        assert spec.steps < plain.steps


class _Ragged:
    """An n-gram drafter whose row r keeps at most r mod (γ + 1) of its drafts: unequal proposals every round."""

    name = "ragged"

    def __init__(self) -> None:
        self.inner = NGramDrafter(min_n=1)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def propose(self, histories, gamma, sampling, generator):
        drafts, n, q = self.inner.propose(histories, gamma, sampling, generator)
        return drafts, torch.minimum(n, torch.arange(len(n)) % (gamma + 1)), q


def test_ragged_proposals_keep_greedy_output_identical(engine) -> None:
    """Rows verifying different numbers of drafts (only the proposed positions computed) decode what plain does."""
    plain = engine.generate(GenerateRequest(PROMPT, branches=4, max_new_tokens=96, ignore_eos=True))
    spec = engine.generate(GenerateRequest(PROMPT, branches=4, max_new_tokens=96, ignore_eos=True, gamma=3, gamma_policy="fixed",
                                           drafter=_Ragged()))
    assert [b.token_ids for b in spec.branches] == [b.token_ids for b in plain.branches]
    assert spec.branches[0].spec_proposed == 0 < spec.branches[3].spec_proposed  # row 0 never drafts
    assert spec.branches[3].spec_accepted > 0


def test_ngram_least_match_length_and_trust() -> None:
    """Only matches of at least ``min_n`` tokens propose (``None``: by batch size), for up to n/2 tokens."""
    hist = [5, 6, 7, 8, 9, 1, 2, 3, 7]  # the last token (7) matched once, as a 1-gram only
    g = torch.Generator()
    for min_n, want in ((1, [8]), (2, [])):
        d = NGramDrafter(min_n=min_n)
        d.begin(hist, rows=1, max_new_tokens=8)
        drafts, n, _ = d.propose([hist], 2, SamplingParams(), g)
        assert drafts[0, : int(n[0])].tolist() == want
    auto = NGramDrafter()
    auto.begin(hist, rows=1, max_new_tokens=8)
    assert auto.propose([hist], 2, SamplingParams(), g)[1].tolist() == [1]  # small batch: any match
    auto.begin(hist, rows=8, max_new_tokens=8)
    assert auto.propose([hist], 2, SamplingParams(), g)[1].tolist() == [0]  # B = 8: 3-token matches only
    # a 6-token match (1..6) is trusted for 3 tokens, however large γ; the prompt's own tokens count
    prompt, own = [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6]
    auto.begin(prompt, rows=8, max_new_tokens=8)
    drafts, n, _ = auto.propose([prompt + own], 5, SamplingParams(), g)
    assert n.tolist() == [3] and drafts[0, :3].tolist() == [7, 8, 9]
    # an n-gram ending at the prompt's last token is found once the row has its own tokens
    d = NGramDrafter(min_n=1)
    d.begin([4, 5, 6], rows=1, max_new_tokens=8)
    assert d.propose([[4, 5, 6, 7, 5, 6]], 1, SamplingParams(), g)[0].tolist() == [[7]]
    # the row's own later occurrence is the latest match, preferred over the prompt's
    own = [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6]
    assert auto.propose([prompt + own], 5, SamplingParams(), g)[0][0, :3].tolist() == [0, 1, 2]
    with pytest.raises(LattsError, match="least match length"):
        NGramDrafter(min_n=13)
    with pytest.raises(LattsError, match="least match length"):
        make_drafter("ngram:0", None)


def test_rejection_sampler_reproduces_target_distribution() -> None:
    """As vLLM's test: drafts from q, accepted/recovered tokens distributed as p (chi-square)."""
    V, gamma, n = 8, 2, 25_000
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    drafts = torch.multinomial(q.expand(n, V), gamma, replacement=True, generator=g)
    P = p.expand(n, gamma + 1, V)
    Q = q.expand(n, gamma, V)
    accepted, nxt = rejection_sample(drafts, torch.full((n,), gamma), P, Q, g)
    first = torch.where(accepted > 0, drafts[:, 0], nxt)  # the first output token of every row
    counts = torch.bincount(first, minlength=V).double()
    assert chisquare(counts.numpy(), (p.double() * n).numpy()).pvalue > 0.01
    # a deterministic drafter (q one-hot on its proposal) is lossless too
    fixed = torch.full((n, gamma), 3)
    accepted, nxt = rejection_sample(fixed, torch.full((n,), gamma), P, None, g)
    first = torch.where(accepted > 0, fixed[:, 0], nxt)
    counts = torch.bincount(first, minlength=V).double()
    assert chisquare(counts.numpy(), (p.double() * n).numpy()).pvalue > 0.01
    # with a far-off q the test must be able to fail: q's own distribution is rejected
    assert chisquare(torch.bincount(drafts[:, 0], minlength=V).double().numpy(),
                     (p.double() * n).numpy()).pvalue < 1e-6


def test_padding_past_proposals_is_never_accepted() -> None:
    g = torch.Generator().manual_seed(1)
    V = 5
    p = torch.full((3, 4, V), 1.0 / V)
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3], [0, 0, 0]])
    accepted, _ = rejection_sample(drafts, torch.tensor([3, 1, 0]), p, None, g)
    assert accepted[1] <= 1 and accepted[2] == 0


def test_target_distribution_is_computed_only_where_needed() -> None:
    """Each row's target distribution is asked for at positions 0..accepted (up to its first rejection, or
    the bonus position after its last proposal), once each: never at positions after a rejection."""
    V, n, gamma = 6, 6, 4
    g = torch.Generator().manual_seed(3)
    drafts = torch.randint(0, V, (n, gamma), generator=g)
    P = torch.softmax(torch.randn(n, gamma + 1, V, generator=g), -1)
    P[:3, :gamma] = 0.02 / (V - 1)
    P[:3, :gamma].scatter_(-1, drafts[:3, :, None], 0.98)  # rows 0-2 keep their drafts almost surely
    n_proposed = torch.tensor([4, 2, 0, 4, 3, 1])
    seen: list[tuple[int, int]] = []

    def target(rows: torch.Tensor, j: int) -> torch.Tensor:
        seen.extend((int(r), j) for r in rows)
        return P[rows, j]

    accepted, nxt = rejection_sample(drafts, n_proposed, target, None, g)
    assert sorted(seen) == sorted((r, j) for r in range(n) for j in range(int(accepted[r]) + 1))
    assert accepted[:3].tolist() == [4, 2, 0] and len(seen) < n * (gamma + 1) // 2
    assert bool((accepted <= n_proposed).all()) and nxt.shape == (n,)


@pytest.mark.parametrize("kind", ["ngram", "group", "model"])
def test_sampled_speculation_matches_plain_distribution(engine, draft_folder, kind) -> None:
    """First two sampled tokens with γ=3 vs without: same joint distribution (chi-square, p > 0.001)."""
    assert_speculation_samples_like_plain(engine, engine.encode("Name a colour."), drafters(engine, draft_folder)[kind],
                                          branches=512, seeds=4)


def test_draft_with_another_tokenizer_is_refused(engine, tmp_path) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / "other"
    config = tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w1").save_pretrained(folder)
    with pytest.raises(LattsError, match="another tokenizer"):
        make_drafter(f"model:{folder}", engine.loaded)


def test_unknown_drafter_and_missing_drafter(engine) -> None:
    with pytest.raises(LattsError, match="unknown drafter"):
        make_drafter("eagle", engine.loaded)
    with pytest.raises(LattsError, match="needs a drafter"):
        engine.generate(GenerateRequest(PROMPT, gamma=2))


def test_greedy_accept_equals_one_hot_rejection_sampling() -> None:
    g = torch.Generator().manual_seed(5)
    n, gamma, V = 64, 4, 11
    logits = torch.randn(n, gamma + 1, V, generator=g)
    target = logits.argmax(-1)
    # drafts that agree with the target for a random number of leading positions
    drafts = torch.randint(0, V, (n, gamma), generator=g)
    agree = torch.randint(0, gamma + 1, (n,), generator=g)
    for r in range(n):
        drafts[r, : agree[r]] = target[r, : agree[r]]
        if agree[r] < gamma:  # and disagree right after
            drafts[r, agree[r]] = (target[r, agree[r]] + 1) % V
    n_proposed = torch.randint(0, gamma + 1, (n,), generator=g)
    one_hot = torch.nn.functional.one_hot(target, V).float()
    ref = rejection_sample(drafts, n_proposed, one_hot, None, g)
    got = greedy_accept(drafts, n_proposed, logits)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    assert torch.equal(got[0], torch.minimum(agree, n_proposed))


@pytest.mark.parametrize("drafter", [NGramDrafter, GroupDrafter])
def test_speculation_with_budget_forcing_keeps_the_answer_distribution(engine, drafter) -> None:
    """Whole budget-forced runs (thinking cut at L, answer forced) sampled with and without n-gram speculation:
    the distribution of the extracted answers is the same (chi-square homogeneity, p > 0.001). Speculation
    is only lossless if budget forcing's cuts, ignore strings and forced answer prompts interact with the
    accepted drafts exactly as with one token per step."""
    from latts.config import BudgetForcing
    from latts.tasks import get_task

    task = get_task("arith")
    ids = engine.encode(task.prompt(task.load(limit=3)[2]))
    budget = BudgetForcing(min_think=4, max_think=12, answer_tokens=6)

    def answers(gamma: int) -> Counter:
        c: Counter = Counter()
        for seed in range(3):
            got = engine.generate(GenerateRequest(ids, branches=96,
                                                  sampling=SamplingParams(temperature=0.7, seed=seed),
                                                  gamma=gamma, gamma_policy="fixed", drafter=drafter() if gamma else None,
                                                  budget=budget))
            c.update(task.extract(b.text) for b in got.branches)
        return c

    plain, spec = answers(0), answers(2)
    keys, table = homogeneity_table(plain, spec, 15)
    assert len(keys) >= 3, (plain, spec)
    assert chi2_contingency(table).pvalue > 0.001, (plain, spec)
    # total variation between the grouped distributions (the tail of one-off answers pooled): sampling
    # noise alone puts it near 0.1 with 288 samples a side
    tv = 0.5 * sum(abs(a - b) for a, b in zip(*table)) / 288
    assert tv < 0.2, (tv, table, keys)
    print("answers (plain | speculative):", list(zip(keys + ["other"], *table)), f"TV {tv:.3f}")


def test_sparse_draft_distributions_sample_as_dense_ones() -> None:
    """A drafter's few-token distributions given sparsely: the same acceptances and tokens as dense q."""
    g = torch.Generator().manual_seed(11)
    n, gamma, V = 48, 3, 20
    p = torch.softmax(torch.randn(n, gamma + 1, V, generator=g), -1)
    entries, dense = [], torch.zeros(n, gamma, V)
    drafts = torch.zeros(n, gamma, dtype=torch.long)
    for r in range(n):
        row = []
        for j in range(gamma):
            toks = torch.randperm(V, generator=g)[: 1 + r % 4].tolist()
            w = torch.rand(len(toks), generator=g)
            dist = {t: float(x) for t, x in zip(toks, w / w.sum())}
            row.append(dist)
            for t, x in dist.items():
                dense[r, j, t] = x
            drafts[r, j] = toks[0]
        entries.append(row)
    n_proposed = torch.randint(0, gamma + 1, (n,), generator=g)
    for r in range(n):  # a drafter gives distributions only for the drafts it proposed
        entries[r] = entries[r][: int(n_proposed[r])]
        dense[r, int(n_proposed[r]) :] = 0
    got = rejection_sample(drafts, n_proposed, p, SparseDraftProbs(entries), torch.Generator().manual_seed(3))
    ref = rejection_sample(drafts, n_proposed, p, dense, torch.Generator().manual_seed(3))
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert 0 < int(got[0].sum()) < int(n_proposed.sum())  # some drafts kept, some rejected


def test_group_drafts_come_from_other_branches() -> None:
    """A row drafts what *another* branch wrote after the same context, and sampled rows get its counts as q."""
    d = GroupDrafter(min_n=2)
    prompt = [1, 2, 3]
    d.begin(prompt, 2, 16)
    histories = [prompt + [7, 8, 9, 10, 11], prompt + [5, 7, 8]]
    drafts, n, q = d.propose(histories, 4, SamplingParams(temperature=0), torch.Generator())
    assert q is None  # greedy: one-hot drafts
    # row 1 ends with (7, 8): row 0 continued it with 9, 10, 11 (a 2-token match proposes 1 token)
    assert n.tolist()[1] == 1 and drafts[1, 0] == 9
    drafts, n, q = d.propose(histories, 4, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert drafts[1, 0] == 9 and q.entries[1][0] == {9: 1.0}


def test_sampled_branches_stay_diverse_with_group_speculation(engine) -> None:
    """Same seeds, 16 sampled branches with and without group speculation: no collapse of the branches onto
    shared text (distinct continuations; mean pairwise agreement of tokens position by position)."""
    ids = engine.encode("Write a short sentence about the sea.")

    def stats(gamma: int) -> tuple[int, float]:
        distinct, agree = 0, []
        for seed in range(2):
            got = engine.generate(GenerateRequest(ids, branches=16, max_new_tokens=24, ignore_eos=True,
                                                  sampling=SamplingParams(temperature=0.7, seed=seed), gamma=gamma, gamma_policy="fixed",
                                                  drafter=GroupDrafter() if gamma else None))
            rows = [b.token_ids for b in got.branches]
            distinct += len({tuple(r) for r in rows})
            agree += [sum(x == y for x, y in zip(a, b)) / 24 for i, a in enumerate(rows) for b in rows[i + 1 :]]
        return distinct, sum(agree) / len(agree)

    plain, spec = stats(0), stats(3)
    print("distinct, mean pairwise agreement (plain | group speculation):", plain, spec)
    assert spec[0] >= 30 and plain[0] >= 30  # of 32
    assert spec[1] <= plain[1] + 0.15


def test_pruned_speculative_branches_stay_diverse(engine) -> None:
    """Same seeds, 16 sampled branches on an arith problem with thinking held open for 40 tokens: plain, and
    with group speculation plus pruning at the group's median. The branches that survive pruning are as
    diverse as the same branches without either (distinct texts, mean pairwise agreement of their first 32
    tokens) and their answers spread as widely; a shared random stream would collapse both."""
    from latts.config import Plan
    from latts.tasks import get_task
    from latts.tts.solver import Solver

    task = get_task("arith")
    solver = Solver(engine, task)
    problem = task.load(limit=3)[2]

    def agreement(rows: list[list[int]]) -> float:
        pairs = [sum(x == y for x, y in zip(a[:32], b[:32])) / 32 for i, a in enumerate(rows) for b in rows[i + 1 :]]
        return sum(pairs) / len(pairs)

    pruned_total, lines = 0, []
    for seed in range(2):
        plan = Plan(branches=16, min_think=40, max_think=64, answer_tokens=8, temperature=0.7, seed=seed,
                    early_stop=False)
        plain = solver.solve(problem, plan)
        spec = solver.solve(problem, replace(plan, gamma=3, drafter="group", gamma_policy="fixed", prune=0.5))
        alive = [i for i, b in enumerate(spec.branches) if b.finish_reason != "pruned"]
        pruned_total += 16 - len(alive)
        rows = [spec.branches[i].token_ids for i in alive]
        same = [plain.branches[i].token_ids for i in alive]
        answers = {spec.branch_answers[i] for i in alive}
        answers_plain = {plain.branch_answers[i] for i in alive}
        lines.append((seed, len(alive), len({tuple(r) for r in rows}), round(agreement(rows), 3),
                      round(agreement(same), 3), len(answers), len(answers_plain)))
        assert len({tuple(r) for r in rows}) == len(alive)  # no two surviving branches wrote the same text
        assert agreement(rows) <= agreement(same) + 0.15
        assert len(answers) >= min(3, len(answers_plain))
    print("seed, survivors, distinct texts, agreement (spec+prune | same branches plain), distinct answers "
          "(spec+prune | plain):", lines)
    assert pruned_total >= 2  # the pruning arm pruned
