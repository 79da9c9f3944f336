"""Batched speculative decoding on MATH-500 prompts: speedup over plain decoding per (B, γ, drafter).

For every mode (greedy, sampled T=0.7), drafter (ngram, model = the default model's first N
layers saved as its own HF folder), B and γ, decodes --tokens new tokens (EOS ignored, so every
configuration does the same work) for each of --prompts MATH-500 problems and prints tokens/s per
row, speedup over γ=0 at the same B, acceptance rate α and mean accepted length (bonus included).
At B=1 (greedy) it also times HF assisted generation with the same drafters
(``prompt_lookup_num_tokens``, ``assistant_model``) and HF plain greedy.

Drafters: ``ngram`` (prompt lookup in the row's own text), ``group`` (every branch's text, drafts drawn from
its continuation counts when sampling), ``model``; each under the γ policies of --policies: ``fixed`` verifies
every draft offered, ``cost`` (rows named ``drafter+cost``) only those this machine's measured costs say pay.

Targets (exit 1 when one is missed): the best drafter reaches >= 1.3x at B=1 (greedy) and
>= 1.15x at B=8 (greedy); sampled (T=0.7) >= 1.25x at B=8 and >= 1.15x at B=16 (speculation must pay on sampled branches too); latts at B=1 is
at least as fast as HF assisted generation with the same drafter (best γ of each side).

It also prints the ceiling this machine's forward costs (the engine's cost shape, measured at warm-up)
put on speculation at each (B, γ): a round's tokens over a verify of B·(γ + 1) positions against a plain
step, with every draft accepted (and at α = 0.6) and drafting taken as free; a sampled target above it
is named so, since no drafter can reach it here.

Speedups are ratios within one run: for each mode and B, every prompt runs plain decoding and
every speculative configuration in turn before the next prompt (this machine's speed drifts for
minutes), and each configuration's speedup is against the γ=0 run interleaved with it.

The full grid takes about four hours on a 2-core CPU, longer than one sitting, and the machine
changes between sittings. So each (mode, B) group is appended to --results (JSON Lines,
``benchmarks/results/`` in the repository) when it finishes, with the CPU it ran on: a rerun skips
what is stored (an interrupted group is run again; ``--here`` runs the selected groups again on this
machine) and prints the table from every stored group, naming each group's machine. A speedup is
only ever a ratio within one group, on one machine, and the HF comparison uses HF rows from the
machine of the latts row it is compared with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch

from latts.config import SamplingParams
from latts.engine.speculation.drafters import GroupDrafter, NGramDrafter, make_drafter
from latts.engine.engine import Engine
from latts.engine.loading.loader import DEFAULT_MODEL, cache_root, hf_folder, load
from latts.engine.loading.machine import cpu_name
from latts.engine.speculation.gamma_policy import CostShape
from latts.request import GenerateRequest

MODES = {"greedy": SamplingParams(temperature=0.0), "sampled": SamplingParams(temperature=0.7, seed=0)}


def math500_prompts(n: int) -> list[str]:
    """The first n MATH-500 problems shipped with latts, with a step-by-step instruction."""
    rows = resources.files("latts.data").joinpath("math500.jsonl").read_text().splitlines()[:n]
    return [json.loads(r)["problem"] + "\nPlease reason step by step." for r in rows]


def draft_folder(layers: int) -> Path:
    """The default model cut to its first ``layers`` layers, saved once as a separate HF folder."""
    folder = cache_root() / f"bench-draft-{layers}-layers"
    if not (folder / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = hf_folder(DEFAULT_MODEL)
        hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        hf.model.layers = hf.model.layers[:layers]
        hf.config.num_hidden_layers = layers
        hf.save_pretrained(folder)
        AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


class Results:
    """Measured configurations of this benchmark, appended to a JSON Lines file as they finish.

    Only rows taken with the same ``key`` (e.g. weights, prompts, tokens, draft) are reused; each new
    row also records ``stamp`` (the machine it ran on).
    """

    def __init__(self, path: Path, key: dict, stamp: dict | None = None) -> None:
        self.path, self.key, self.stamp = path, key, stamp or {}
        self.rows: dict[tuple, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a torn last line from an interrupted run
                if all(r.get(k) == v for k, v in key.items()):
                    self.rows[(r["mode"], r["drafter"], r["B"], r["gamma"])] = r

    def get(self, mode: str, drafter: str, B: int, gamma: int) -> dict | None:
        """The stored row, if one was measured already (the latest, when several were)."""
        return self.rows.get((mode, drafter, B, gamma))

    def put(self, row: dict) -> dict:
        """Store a new measurement (appended and flushed at once); returns it."""
        row = {**self.key, **self.stamp, **row}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.rows[(row["mode"], row["drafter"], row["B"], row["gamma"])] = row
        return row


def policy_of(name: str) -> str:
    """The γ policy of a configuration: ``ngram+cost`` runs the cost policy, a plain name every draft."""
    return "cost" if name.endswith("+cost") else "fixed"


def run_group(engine: Engine, prompts: list[list[int]], B: int, configs: list[tuple[str, object, int]],
              params: SamplingParams, tokens: int) -> dict[tuple[str, int], dict]:
    """Plain decoding (γ=0) and every ``(drafter name, drafter, γ)`` in ``configs`` at batch size ``B``.

    Interleaved: each prompt runs every configuration in turn (starting one further along per
    prompt) before the next prompt starts, so this machine's drift and stalls, which last seconds to
    minutes, hit every configuration alike and the speedups stay ratios within one run.
    Returns tokens/s per row (decode only and end to end), α and mean accepted length per
    ``(name, γ)``, with plain decoding under ``("-", 0)``.
    """
    runs = [("-", None, 0), *configs]
    sums = {(name, gamma): [0.0, 0.0, 0, 0, 0] for name, _, gamma in runs}
    for i, ids in enumerate(prompts):
        for name, drafter, gamma in runs[i % len(runs):] + runs[: i % len(runs)]:
            g = engine.generate(GenerateRequest(ids, branches=B, max_new_tokens=tokens, sampling=params,
                                                ignore_eos=True, gamma=gamma, gamma_policy=policy_of(name),
                                                drafter=drafter if gamma else None))
            acc = sums[(name, gamma)]
            acc[0] += g.decode_s
            acc[1] += g.latency_s
            if g.spec is not None:
                acc[2] += g.spec.rounds
                acc[3] += g.spec.proposed
                acc[4] += g.spec.accepted
        print(f"    B={B}: prompt {i + 1}/{len(prompts)} done in every configuration", flush=True)
    out = {}
    for key, (decode_s, latency_s, rounds, proposed, accepted) in sums.items():
        out[key] = {
            "tps_row": tokens * len(prompts) / decode_s,
            "tps_row_e2e": tokens * len(prompts) / latency_s,
            "alpha": accepted / proposed if proposed else None,
            "mean_len": (accepted + rounds) / rounds if rounds else None,
        }
    return out


CEILING_GAMMAS = (1, 2, 3, 4, 6)  # the γ of the ceiling table, whichever --gammas ran


def ceiling(shape: CostShape, B: int, gamma: int, alpha: float = 1.0) -> float:
    """The speedup over plain steps of B rows that γ drafts a row could give at most, by this machine's
    measured forward costs: a round's expected tokens a row (each draft accepted with probability α,
    one token more from the verify) over a verify of B·(γ + 1) positions, against a plain step of B rows.
    Drafting and acceptance are taken as free, so real rounds only do worse."""
    tokens = sum(alpha ** i for i in range(gamma + 1))
    return tokens * shape.plain(B) / shape(B * (gamma + 1))


def run_hf(hf, prompts: list[list[int]], tokens: int, **kwargs) -> float:
    """HF generate, greedy, B=1: tokens/s (prefill included, as HF reports no split)."""
    total = 0.0
    for ids in prompts:
        t = time.perf_counter()
        with torch.inference_mode():
            hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                        pad_token_id=0, **kwargs)
        total += time.perf_counter() - t
    return tokens * len(prompts) / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--gammas", default="0,1,2,3,4,6,8")
    ap.add_argument("--drafters", default="ngram,group,model")
    ap.add_argument("--policies", default="fixed,cost",
                    help="γ policies: fixed (every draft offered is verified) and/or cost (drafts that pay, see "
                         "latts.engine.speculation.gamma_policy); a cost row is named drafter+cost")
    ap.add_argument("--modes", default="greedy,sampled")
    ap.add_argument("--draft-layers", type=int, default=6)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF assisted-generation comparison")
    ap.add_argument("--here", action="store_true",
                    help="measure again on this machine the selected groups stored from another machine "
                         "(the new rows replace them in the table; the file keeps both)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "spec_decode.jsonl",
                    help="measurements so far (JSON Lines, kept in the repository: the grid takes longer "
                         "than one sitting); a rerun resumes from them")
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    gammas = sorted({0, *(int(x) for x in args.gammas.split(","))})
    drafter_names = args.drafters.split(",")
    modes = args.modes.split(",")

    loaded = load(DEFAULT_MODEL, args.dtype)
    engine = Engine(loaded)
    engine.warmup()
    prompts = [engine.encode(p) for p in math500_prompts(args.prompts)]
    folder = draft_folder(args.draft_layers)
    made = {}
    if "ngram" in drafter_names:
        made["ngram"] = NGramDrafter()
    if "group" in drafter_names:
        made["group"] = GroupDrafter()
    if "model" in drafter_names:
        made["model"] = make_drafter(f"model:{folder}", loaded)
    policies = args.policies.split(",")
    drafters = {(name if policy == "fixed" else f"{name}+cost"): d for name, d in made.items() for policy in policies}
    print(f"{loaded.name} ({str(loaded.dtype).removeprefix('torch.')}), {len(prompts)} MATH-500 prompts, "
          f"{args.tokens} new tokens, draft = first {args.draft_layers} layers", flush=True)

    # "order": rows timed one configuration after another (older files) are not comparable;
    # "spec": nor latts rows from before the ragged verify and the n-gram drafter's trust by match
    # length, nor draft-model rows from before the draft ran its target's fast weight formats
    # rows from any machine are reused when the weight formats match ("auto" picks bf16 only where
    # the CPU has native bf16, so an fp32-only machine measures its own grid)
    key = {"dtype": loaded.weights, "prompts": len(prompts), "tokens": args.tokens,
           "draft_layers": args.draft_layers, "order": "interleaved"}
    here = cpu_name()
    store = Results(args.results, {**key, "spec": "ragged, ngram n/2, fast draft"}, {"cpu": here})
    rows = []
    for mode in modes:
        for B in batches:
            configs = [(name, drafter, gamma) for name, drafter in drafters.items() for gamma in gammas[1:]]
            todo = [c for c in configs if (stored := store.get(mode, c[0], B, c[2])) is None
                    or (args.here and stored["cpu"] != here)]
            if todo:
                print(f"  {mode} B={B}: γ=0 and {len(todo)} speculative configurations, interleaved", flush=True)
                got = run_group(engine, prompts, B, todo, MODES[mode], args.tokens)
                base = store.put({"mode": mode, "drafter": "-", "B": B, "gamma": 0, **got[("-", 0)]})
                for name, _, gamma in todo:
                    r = got[(name, gamma)]
                    store.put({"mode": mode, "drafter": name, "B": B, "gamma": gamma, **r,
                               "speedup": r["tps_row"] / base["tps_row"], "base_tps_row": base["tps_row"]})
            for name in drafters:
                group = [store.get(mode, name, B, gamma) for gamma in gammas[1:]]
                # each drafter's rows carry the γ=0 run interleaved with them (and its machine)
                rows.append({"cpu": group[0]["cpu"], "mode": mode, "drafter": "-", "B": B, "gamma": 0,
                             "tps_row": group[0]["base_tps_row"], "speedup": 1.0, "alpha": None, "mean_len": None})
                rows.extend(group)

    # per drafter: (the machine of latts' best B=1 greedy row, tok/s of that row and of HF on that machine)
    hf_rows: dict[str, tuple[str, dict[str, float]]] = {}
    if "greedy" in modes and 1 in batches:
        from transformers import AutoModelForCausalLM

        hf = None
        for name in (n for n in drafters if n in ("ngram", "model")):
            ours = max((r for r in rows if r["mode"] == "greedy" and r["B"] == 1 and r["drafter"] == name),
                       key=lambda r: r["tps_row_e2e"])
            wanted = {"HF greedy": {}}
            if name == "ngram":
                wanted.update({f"HF prompt lookup γ={g}": {"prompt_lookup_num_tokens": g} for g in (3, 8)})
            else:
                wanted["HF assistant model"] = {"assistant_model": folder}
            hf_store = Results(args.results, {**key, "cpu": ours["cpu"]})
            tps = {"latts (best γ)": ours["tps_row_e2e"]}
            hf_rows[name] = (ours["cpu"], tps)
            for hf_name, kwargs in wanted.items():
                got = hf_store.get("hf", hf_name, 1, 0)
                if got is None and ours["cpu"] == here and not args.no_hf:
                    if hf is None:
                        hf = AutoModelForCausalLM.from_pretrained(hf_folder(DEFAULT_MODEL), dtype=torch.float32).eval()
                    if "assistant_model" in kwargs:
                        kwargs = {"assistant_model": AutoModelForCausalLM.from_pretrained(
                            kwargs["assistant_model"], dtype=torch.float32).eval()}
                    got = hf_store.put({"mode": "hf", "drafter": hf_name, "B": 1, "gamma": 0,
                                        "tps": run_hf(hf, prompts, args.tokens, **kwargs)})
                if got is not None:
                    tps[hf_name] = got["tps"]

    print()
    print("| machine | mode | drafter | B | γ | tok/s per row | speedup vs γ=0 | α | mean accepted length |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        a = f"{r['alpha']:.3f}" if r["alpha"] is not None else "—"
        m = f"{r['mean_len']:.2f}" if r["mean_len"] is not None else "—"
        print(f"| {r['cpu']} | {r['mode']} | {r['drafter']} | {r['B']} | {r['gamma']} | {r['tps_row']:.1f} | "
              f"{r['speedup']:.2f}x | {a} | {m} |")
    for name, (machine, tps) in hf_rows.items():
        print()
        print(f"| B=1, greedy, {name} drafter, on {machine} | tok/s (prefill included) |")
        print("| --- | --- |")
        for k, v in tps.items():
            print(f"| {k} | {v:.1f} |")

    print()
    print("γ optimum per B (best drafter):")
    for mode in modes:
        for B in batches:
            cand = [r for r in rows if r["mode"] == mode and r["B"] == B]
            best = max(cand, key=lambda r: r["speedup"])
            print(f"  {mode} B={B}: γ={best['gamma']} ({best['drafter']}) {best['speedup']:.2f}x")

    shape = engine.speculator.cost_shape
    if shape is not None:  # measured at warm-up (context 64): what the machine allows at all
        print()
        print("| B | γ | verify / plain step | ceiling, every draft accepted | ceiling at α = 0.6 |")
        print("| --- | --- | --- | --- | --- |")
        for B in batches:
            for gamma in CEILING_GAMMAS:
                print(f"| {B} | {gamma} | {shape(B * (gamma + 1)) / shape.plain(B):.2f} | "
                      f"{ceiling(shape, B, gamma):.2f}x | {ceiling(shape, B, gamma, 0.6):.2f}x |")

    failures = []
    # greedy B=1 and 8; sampled B=8 and 16 (sampled branches: the paper's regime)
    for mode, B, need in (("greedy", 1, 1.3), ("greedy", 8, 1.15), ("sampled", 8, 1.25), ("sampled", 16, 1.15)):
        if mode in modes and B in batches:
            got = max(r["speedup"] for r in rows if r["mode"] == mode and r["B"] == B)
            top = max(ceiling(shape, B, g) for g in CEILING_GAMMAS) if shape is not None else None
            above = f" (above this machine's ceiling of {top:.2f}x)" if top is not None and top < need else ""
            print(f"target {mode} B={B} >= {need}x: {got:.2f}x {'ok' if got >= need else 'MISSED'}{above}")
            if got < need:
                failures.append(f"{mode} B={B} best speedup {got:.2f}x < {need}x")
    for name, (machine, tps) in hf_rows.items():
        # end to end (prefill included) on both sides, same machine
        theirs = [v for k, v in tps.items() if k.startswith(("HF prompt lookup", "HF assistant model"))]
        if not theirs:
            failures.append(f"no HF assisted generation measured on {machine} to compare latts {name} with")
            continue
        ok = tps["latts (best γ)"] >= max(theirs)
        print(f"target latts B=1 {name} >= HF with the same drafter: {tps['latts (best γ)']:.1f} vs "
              f"{max(theirs):.1f} tok/s {'ok' if ok else 'MISSED'}")
        if not ok:
            failures.append(f"latts {name} at B=1 is slower than HF assisted generation")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "hf": hf_rows}, indent=2))
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
