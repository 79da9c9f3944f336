"""The ``hf`` engine (transformers' own forward and cache behind latts' model interface) on a small
random-weight GPT-2, an architecture latts' torch engine does not have: greedy rows token-identical to HF
``generate`` at B=1 and B=4 through latts' Engine, speculation (ragged rows, rolled-back drafts, re-packed
cache) greedy-identical too, and sampling reproducible by seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latts.config import SamplingParams
from latts.engine.speculation.drafters import make_drafter
from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, LoadedModel, hf_folder, load
from latts.errors import LattsError
from latts.request import GenerateRequest

N = 32  # tokens per row


def _tiny_gpt2(folder: Path, seed: int, layers: int) -> Path:
    """A random GPT-2 with the default model's tokenizer (same vocabulary). Weights drawn wider than GPT-2's
    0.02 so that its next-token distributions depend on the context (at 0.02 it repeats one token)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(hf_folder(DEFAULT_MODEL))
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=layers, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=512,
                        initializer_range=0.3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    return _tiny_gpt2(tmp_path_factory.mktemp("gpt2-tiny"), seed=0, layers=2)


@pytest.fixture(scope="module")
def gpt2(gpt2_folder: Path) -> LoadedModel:
    return load(str(gpt2_folder), "float32")


@pytest.fixture(scope="module")
def reference(gpt2_folder: Path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(gpt2_folder, dtype=torch.float32).eval()


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_auto_picks_the_hf_engine_and_says_why(gpt2: LoadedModel, gpt2_folder: Path) -> None:
    assert gpt2.engine == "hf"
    assert "no gpt2" in gpt2.engine_reason
    assert "slow path" in gpt2.weights and "hf engine" in gpt2.report
    assert gpt2.measured_with().engine.startswith("hf-transformers-")
    with pytest.raises(LattsError, match="architecture 'gpt2'.*use --engine hf"):
        load(str(gpt2_folder), "float32", engine="torch")


@pytest.mark.parametrize("branches", [1, 4])
def test_greedy_rows_match_hf_generate(gpt2: LoadedModel, reference, branches: int) -> None:
    engine = Engine(gpt2)
    ids = engine.encode("Explain step by step how to compute 17 * 23.")
    ref = hf_greedy(reference, ids, N)
    assert len(set(ref)) > N // 2  # a context-dependent continuation, not one repeated token
    got = engine.generate(GenerateRequest(ids, branches=branches, max_new_tokens=N, sampling=None, ignore_eos=True))
    assert [b.token_ids for b in got.branches] == [ref] * branches


def test_speculation_with_a_draft_model_stays_greedy_identical(gpt2: LoadedModel, reference, tmp_path: Path) -> None:
    """The target's first layer drafts (its own HF folder): rows accept different numbers of drafts (ragged
    verifies, rolled-back slots, a re-packed cache), and every row must still be HF's greedy continuation."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    draft_folder = tmp_path / "draft"
    draft = GPT2LMHeadModel.from_pretrained(gpt2.hf_path)
    draft.transformer.h = draft.transformer.h[:1]
    draft.config.n_layer = 1
    draft.save_pretrained(draft_folder)
    AutoTokenizer.from_pretrained(gpt2.hf_path).save_pretrained(draft_folder)
    engine = Engine(gpt2)
    ids = engine.encode("List some fruits, one per line.")
    n = 48
    ref = hf_greedy(reference, ids, n)
    drafter = make_drafter(f"model:{draft_folder}", gpt2)
    got = engine.generate(GenerateRequest(ids, branches=2, max_new_tokens=n, sampling=None, ignore_eos=True,
                                          gamma=3, gamma_policy="fixed", drafter=drafter))
    assert [b.token_ids for b in got.branches] == [ref] * 2
    assert 0 < got.spec.acceptance_rate < 1  # some drafts accepted, some rolled back
    assert drafter.cache.repacks > 0  # the draft's rolled-back slots were squeezed out on the way


def test_sampling_is_reproducible_by_seed(gpt2: LoadedModel) -> None:
    engine = Engine(gpt2)
    ids = engine.encode("Write a short poem.")

    def run(seed: int) -> list[list[int]]:
        params = SamplingParams(temperature=1.0, seed=seed)
        return [b.token_ids for b in engine.generate(GenerateRequest(ids, branches=4, max_new_tokens=24,
                                                                     sampling=params)).branches]

    first = run(3)
    assert run(3) == first
    assert run(4) != first
    assert len({tuple(r) for r in first}) > 1  # rows sample independently


def test_checkpoint_probes_fork_rows(gpt2: LoadedModel, reference) -> None:
    """Forcing answers at checkpoints copies a row into a new one (move_row past the live rows)."""
    from latts.config import BudgetForcing

    engine = Engine(gpt2)
    ids = engine.encode("What is 7 + 5?")
    got = engine.generate(GenerateRequest(ids, branches=2, max_new_tokens=64, sampling=None, ignore_eos=True,
                                          budget=BudgetForcing(max_think=32), checkpoints=(8, 16)))
    from latts.engine.budget import Forcing

    answer = len(Forcing.build(engine.tokenizer, BudgetForcing(max_think=32)).answer)
    assert len(got.probes) == 4
    for probe in got.probes:
        fork = probe.checkpoint
        assert probe.token_ids[:fork] == got.branches[probe.parent].token_ids[:fork]
        # after the forced answer prompt, each token is HF's greedy choice for the probe's own context
        seq = torch.tensor([ids + probe.token_ids])
        with torch.no_grad():
            best = reference(seq).logits[0, len(ids) - 1 : -1].argmax(-1).tolist()
        own = list(range(fork + answer, len(probe.token_ids)))
        assert own, "the probe should have answered something"
        assert [probe.token_ids[j] for j in own] == [best[j] for j in own]
