"""The openai backend against a real llama.cpp server (llama-cpp-python's, on the default GGUF, on
127.0.0.1): branches, budget forcing, the deadline, solve, a concurrent eval that survives the server
dying, and the error messages. ``make test`` installs ``llama-cpp-python[server]``."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from latts.backends.openai import OpenAIBackend
from latts.config import BudgetForcing, SamplingParams
from latts.errors import LattsError
from latts.engine.loading.loader import DEFAULT_MODEL
from latts.config import Plan
from latts.provenance import MeasuredWith
from latts.request import GenerateRequest
from latts.tts.solver import Solver
from servers import free_port, latts_cmd, llama_server_cmd, running

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (make test installs it)")

QUESTION = "What is 7 + 5? Answer with just the number."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with running(llama_server_cmd(port), f"http://127.0.0.1:{port}/v1/models", log):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def backend(server) -> OpenAIBackend:
    return OpenAIBackend(server, DEFAULT_MODEL, slots=1)


def test_branch_mode_is_detected_not_trusted(backend) -> None:
    # llama-cpp-python's server drops `n` silently: asking for two choices returns one
    assert backend.branch_mode == "requests"


def test_branches_sample_differently_and_stream_timestamps(backend) -> None:
    gen = backend.generate(GenerateRequest("Write one sentence about the sea.", branches=3, max_new_tokens=12,
                                           sampling=SamplingParams(temperature=1.0, seed=3)))
    assert [b.finish_reason for b in gen.branches] == ["length"] * 3 or all(
        b.finish_reason in ("length", "eos") for b in gen.branches)
    texts = [b.text for b in gen.branches]
    assert len(set(texts)) == 3, texts  # a distinct seed per branch, or voting would be pointless
    for b in gen.branches:
        assert b.token_times == sorted(b.token_times) and len(b.token_times) >= 1
        assert 1 <= b.n_tokens <= 14
    assert gen.prompt_tokens > 5 and gen.prefill_s > 0


def test_long_prompt_at_four_branches(backend) -> None:
    """A 300+-token prompt, four branches: the server answers every one (llama.cpp 0.3.36's server died at such
    prompts on Intel CPUs with AMX until latts' launcher avoided its AMX matmul)."""
    story = " ".join(f"On day {d} the baker sold {3 * d + 7} loaves and {d % 5 + 2} cakes to the village."
                     for d in range(1, 19))
    gen = backend.generate(GenerateRequest(story + " How many loaves did the baker sell on day 12?", branches=4,
                                           max_new_tokens=16, sampling=SamplingParams(temperature=0.7, seed=5)))
    assert gen.prompt_tokens >= 300
    assert len(gen.branches) == 4 and all(b.n_tokens >= 1 and b.text for b in gen.branches)
    assert len({b.text for b in gen.branches}) >= 2  # four sampled answers, not one repeated


def test_greedy_is_reproducible(backend) -> None:
    a = backend.generate(GenerateRequest("Count from 1 to 5.", max_new_tokens=16))
    b = backend.generate(GenerateRequest("Count from 1 to 5.", max_new_tokens=16))
    assert a.branches[0].text == b.branches[0].text and a.branches[0].text


def test_stop_string_ends_a_branch_before_it(backend) -> None:
    gen = backend.generate(GenerateRequest("Count from 1 to 20, separated by commas.", max_new_tokens=64,
                                           stop=["7"]))
    b = gen.branches[0]
    assert b.finish_reason == "stop" and "7" not in b.text and "6" in b.text


def test_budget_forcing_forces_answers_at_max_think(backend) -> None:
    budget = BudgetForcing(min_think=0, max_think=12, answer_tokens=8)
    gen = backend.generate(GenerateRequest("Explain step by step how to add 17 and 25.", branches=2,
                                           budget=budget, sampling=SamplingParams(temperature=0.7, seed=1)))
    for b in gen.branches:
        assert b.forced == "max_think" and b.think_tokens == 12
        assert "Final answer: \\boxed{" in b.text
        assert b.finish_reason in ("answered", "eos")
        answer = b.text.split("\\boxed{", 1)[1]
        assert len(backend.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 8 + 1


def test_budget_forcing_suppresses_early_stops(backend) -> None:
    budget = BudgetForcing(min_think=24, max_think=400, answer_tokens=6)
    gen = backend.generate(GenerateRequest(QUESTION, branches=1, budget=budget,
                                           sampling=SamplingParams(temperature=0.0)))
    b = gen.branches[0]
    assert b.ignored >= 1 and "Wait" in b.text  # the bare answer ends fast; s1 makes it go on
    # it went on until it had thought min_think tokens, then ended by itself (far below max_think)
    assert b.finish_reason == "eos" and b.forced is None, (b.finish_reason, b.forced, b.text)
    # the thinking count is every segment's tokens plus the ignore strings', exactly
    count = lambda text: len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    segments = b.text.split(budget.ignore)
    assert len(segments) == b.ignored + 1, b.text  # the model never wrote the ignore string itself
    wait = count(budget.ignore)
    assert b.think_tokens == sum(count(s) for s in segments) + b.ignored * wait, (b.think_tokens, b.text)
    # and min_think was judged on that count: the last stop came below it, the end at or above it
    assert sum(count(s) for s in segments[:-1]) + (b.ignored - 1) * wait < 24 <= b.think_tokens


def test_deadline_forces_answers_in_time(backend) -> None:
    budget = BudgetForcing(min_think=1900, max_think=1900, answer_tokens=8)
    t0 = time.monotonic()
    gen = backend.generate(GenerateRequest("Tell me a long story.", branches=2, budget=budget,
                                           deadline=t0 + 4.0, sampling=SamplingParams(temperature=0.7)))
    took = time.monotonic() - t0
    assert took <= 4.0 * 1.05
    assert all(b.finish_reason in ("answered", "deadline", "eos") for b in gen.branches)
    assert any(b.forced == "deadline" for b in gen.branches)


def test_solve_votes_over_remote_branches(backend) -> None:
    solver = Solver(backend, "arith")
    t0 = time.monotonic()
    sol = solver.solve(QUESTION, Plan(branches=3, max_think=24, temperature=0.7, seed=0, early_stop=False),
                       deadline_s=15)
    assert time.monotonic() - t0 <= 15 * 1.05
    assert len(sol.branch_answers) == 3
    assert sum(c for _, c in sol.votes) + sol.abstained == 3
    answered = [a for a in sol.branch_answers if a is not None]
    assert len(answered) == 3 - sol.abstained
    if sol.answer is not None:
        assert sol.votes[0][0] == sol.answer and sol.answer in answered


def test_plan_with_another_gamma_is_refused(backend) -> None:
    with pytest.raises(LattsError, match="speculation is set when it starts"):
        backend.generate(GenerateRequest("hi", gamma=3))


def test_a_server_that_speculates_warms_up_and_profiles_with_its_own_gamma(server) -> None:
    # the user says the server drafts 2 tokens a step: warm-up and profile must ask for that γ, not 0
    from latts.latency.remote_profiler import profile_remote

    spec = OpenAIBackend(server, DEFAULT_MODEL, slots=1, server_gamma=2)
    assert spec.warmup() > 0
    prof = profile_remote(spec, branches=(1,), contexts=(32,), tokens=4, repeats=1)
    assert [(s.branches, s.context) for s in prof.steps] == [(1, 34)] and prof.machine["server_gamma"] == 2
    # no local kernels measured it: the record names the server's model, and no local engine will match it
    assert prof.measured_with == MeasuredWith(f"remote:{DEFAULT_MODEL}", "remote", "remote", 0)


def test_checkpoint_probes_are_refused(backend) -> None:
    with pytest.raises(LattsError, match="checkpoint probes need the embedded engine"):
        backend.generate(GenerateRequest("hi", budget=BudgetForcing(max_think=20), checkpoints=(5,)))


def test_unknown_model_and_unreachable_server_are_one_line_errors(server) -> None:
    with pytest.raises(LattsError, match="'qwen-72b' is not served by .*it serves: smollm2-135m-instruct"):
        OpenAIBackend(server, "qwen-72b", tokenizer=DEFAULT_MODEL)
    with pytest.raises(LattsError, match="cannot reach the server at http://127.0.0.1:"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", DEFAULT_MODEL)


def test_http_errors_surface_the_servers_message(backend) -> None:
    # past the server's 2048-token context: llama-cpp-python fails the stream after its HTTP 200, so the
    # backend asks again unstreamed to get the server's own words
    with pytest.raises(LattsError, match=r"answered HTTP 400: .*maximum context length is 2048"):
        backend.generate(GenerateRequest("word " * 3000, chat=False, max_new_tokens=4))


def test_cli_solve_through_the_server(server) -> None:
    done = subprocess.run(latts_cmd("solve", QUESTION, "--backend", "openai", "--base-url", server, "--task",
                                    "arith", "-B", "2", "--max-think", "24", "--deadline", "20", "--slots", "1",
                                    "--json"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["model"] == DEFAULT_MODEL and doc["plan"]["branches"] == 2 and len(doc["branches"]) == 2
    assert doc["latency_s"] <= 20 * 1.05


def test_concurrent_eval_resumes_after_the_server_dies(tmp_path) -> None:
    """`latts eval --backend openai --concurrency 2`: the server is killed mid-run; the eval fails with one
    line, keeps what finished, and a rerun against a new server completes the grid without repeats."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    out = tmp_path / "eval.jsonl"
    cmd = latts_cmd("eval", "--task", "arith", "--limit", "8", "-B", "2", "--max-think", "24", "--seeds", "0",
                    "--out", str(out), "--backend", "openai", "--base-url", url, "--concurrency", "2", "--slots", "1")
    with running(llama_server_cmd(port), url + "/models", tmp_path / "a.log") as server_proc:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240 and (not out.exists() or not out.read_text().strip()):
            time.sleep(0.2)
        assert out.exists() and out.read_text().strip(), "no record before the server was stopped"
        server_proc.kill()
        stdout, stderr = proc.communicate(timeout=240)
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert proc.returncode == 2, (stdout, stderr)  # the server died mid-run: one line, exit 2
    assert "error:" in stderr and "Traceback" not in stderr
    assert "cannot reach the server" in stderr or "ended a stream" in stderr, stderr
    assert 1 <= len(first) < 8
    with running(llama_server_cmd(port), url + "/models", tmp_path / "b.log"):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["problem_id"] for r in records) == sorted({r["problem_id"] for r in records})
    assert len(records) == 8
    assert records[: len(first)] == first  # what finished before the failure is kept as it was
    for r in records:
        assert len(r["branch_answers"]) == 2
        assert sum(c for _, c in r["votes"]) == sum(a is not None for a in r["branch_answers"])


def test_profile_of_the_server_fits_a_latency_model(backend) -> None:
    from latts.latency.remote_profiler import profile_remote

    prof = profile_remote(backend, branches=(1, 2), contexts=(32, 128), tokens=8, repeats=1)
    assert [(s.branches, s.context) for s in prof.steps] == [(1, 36), (2, 36), (1, 132), (2, 132)]
    assert all(0 < s.seconds < 5 for s in prof.steps)
    assert [p.tokens for p in prof.prefills] == [32, 128]
    assert prof.machine["backend"] == "openai" and prof.machine["branch_mode"] == "requests"
    model = prof.fit()
    assert model.median_error(prof.steps) < 1.0  # it fits something; its accuracy is the benchmark's business


def test_latts_serve_on_the_remote_backend(server, tmp_path) -> None:
    import openai

    port = free_port()
    cmd = latts_cmd("serve", "--port", str(port), "--task", "arith", "--backend", "openai", "--base-url", server,
                    "--slots", "1", "--default-budget", "10")
    with running(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log"):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        t0 = time.monotonic()
        r = client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": QUESTION}],
                                           extra_body={"latency_budget": 10, "branches": 2, "max_think": 16})
        assert time.monotonic() - t0 <= 10 * 1.05
    extra = r.model_extra["latts"]
    assert extra["plan"]["branches"] == 2 and len(extra["branch_answers"]) == 2
    assert sum(c for _, c in extra["votes"]) + extra["abstained"] == 2
