"""The ``latts`` console script, run for real in a subprocess.

Bad input must end as exactly one ``error: ...`` line on stderr with exit code 2 and no traceback.
Only two tests here load the model (``generate --json`` and, not at all, ``models``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from latts.engine.loading.loader import DEFAULT_MODEL


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # deterministic, uncoloured output whatever the caller's terminal settings are
    for key in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        env.pop(key, None)
    env["NO_COLOR"] = "1"
    return env


def run_latts(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m latts.cli ARGS`` (what the ``latts`` script runs) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "latts.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit code 2, no traceback, a single ``error:`` line on stderr naming one of ``words``."""
    stderr = proc.stderr.strip()
    assert proc.returncode == 2, f"rc={proc.returncode}\nstdout={proc.stdout!r}\nstderr={proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    assert stderr.count("\n") == 0, f"expected one line, got:\n{proc.stderr}"
    assert stderr.startswith("error:"), stderr
    assert any(w.lower() in stderr.lower() for w in words), f"none of {words} in {stderr!r}"
    assert proc.stdout == ""
    return stderr


# (argv after "generate", words one of which the error must mention)
PRE_LOAD_CASES = [
    pytest.param(["", "-B", "2"], ("empty prompt",), id="empty-prompt"),
    pytest.param(["  \t \n "], ("empty prompt",), id="whitespace-prompt"),
    pytest.param(["hi", "-B", "0"], ("branches",), id="branches-0"),
    pytest.param(["hi", "-B", "100000"], ("branches",), id="branches-100000"),
    pytest.param(["hi", "--max-tokens", "0"], ("max tokens",), id="max-tokens-0"),
    pytest.param(["hi", "--temperature", "-1"], ("temperature",), id="temperature-neg"),
    pytest.param(["hi", "--top-p", "0"], ("top-p",), id="top-p-0"),
    pytest.param(["hi", "--top-p", "1.5"], ("top-p",), id="top-p-1.5"),
    pytest.param(["hi", "--top-k", "-1"], ("top-k",), id="top-k-neg"),
    pytest.param(["hi", "--deadline", "0"], ("deadline",), id="deadline-0"),
    pytest.param(["hi", "--dtype", "float64"], ("dtype",), id="dtype-float64"),
]
MODEL_CASES = [
    pytest.param(["hi", "--model", "/nonexistent/path"], ("unknown model", "not found"), id="model-missing-path"),
    pytest.param(["hi", "--model", "no-such-model-name"], ("unknown model", "not found"), id="model-unknown-name"),
]


@pytest.mark.parametrize(("argv", "words"), PRE_LOAD_CASES + MODEL_CASES)
def test_bad_generate_input_is_one_line_error(argv: list[str], words: tuple[str, ...]) -> None:
    proc = run_latts("generate", *argv)
    line = assert_one_line_error(proc, *words)
    if argv[1:2] == ["--model"]:
        assert f"'{argv[2]}'" in line  # names what it could not find


@pytest.mark.parametrize(("argv", "words"), PRE_LOAD_CASES)
def test_argument_errors_come_before_model_resolution(argv: list[str], words: tuple[str, ...]) -> None:
    """With an unusable model too, the argument error still wins: it is found before any model work."""
    proc = run_latts("generate", *argv, "--model", "/nonexistent/path")
    line = assert_one_line_error(proc, *words)
    assert "unknown model" not in line


def test_error_message_is_printed_verbatim() -> None:
    """A model path with square brackets must be echoed as is, not read as rich markup."""
    path = "/nonexistent/[red]x[/red]/m[/]"
    proc = run_latts("generate", "hi", "--model", path)
    line = assert_one_line_error(proc, "unknown model")
    assert path in line


def test_models_lists_the_bundled_default() -> None:
    proc = run_latts("models", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert DEFAULT_MODEL in proc.stdout
    assert "bundled GGUF" in proc.stdout


def test_generate_json_end_to_end() -> None:
    """The one CLI test that loads the model: greedy, 2 branches, 8 tokens, fp32, JSON out."""
    proc = run_latts(
        "generate", "What is 2+2?", "-B", "2", "--max-tokens", "8", "--temperature", "0",
        "--dtype", "float32", "--json", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    doc = json.loads(lines[0])

    assert doc["model"] == DEFAULT_MODEL
    assert doc["dtype"] == "float32"
    assert doc["prompt"] == "What is 2+2?"
    assert doc["prompt_tokens"] > 5
    assert doc["load_s"] >= 0 and doc["warmup_s"] >= 0

    branches = doc["branches"]
    assert len(branches) == 2
    assert [b["index"] for b in branches] == [0, 1]
    for b in branches:
        assert isinstance(b["token_ids"], list)
        assert 1 <= len(b["token_ids"]) <= 8
        assert all(isinstance(t, int) and t >= 0 for t in b["token_ids"])
        assert b["n_tokens"] == len(b["token_ids"])
        assert isinstance(b["text"], str) and b["text"]
        assert b["finish_reason"] in {"eos", "stop", "length"}
        if b["finish_reason"] == "length":
            assert len(b["token_ids"]) == 8
        assert isinstance(b["tokens_per_s"], (int, float)) and b["tokens_per_s"] >= 0
        assert len(b["token_times"]) == len(b["token_ids"])
    # temperature 0 is greedy: both branches of the same prompt decode the same tokens
    assert branches[0]["token_ids"] == branches[1]["token_ids"]
    assert branches[0]["text"] == branches[1]["text"]
    assert doc["total_tokens"] == sum(len(b["token_ids"]) for b in branches)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["solve", "hi", "--base-url", "http://127.0.0.1:1/v1"], ("need --backend openai",)),
        (["eval", "--backend", "nope"], ("unknown backend 'nope'",)),
        (["profile", "--backend", "openai"], ("needs --base-url",)),
        (["serve", "--backend", "openai", "--base-url", "ftp://x"], ("must start with http",)),
        (["solve", "hi", "--backend", "openai", "--base-url", "http://127.0.0.1:1/v1"], ("cannot reach the server",)),
        (["eval", "--concurrency", "4"], ("--concurrency > 1 needs --backend openai",)),
        (["eval", "--surface", "--backend", "openai", "--base-url", "http://127.0.0.1:1/v1"], ("--surface needs",)),
        (["serve", "--default-budget", "0"], ("deadline must be > 0",)),
        (["serve", "--max-budget", "1", "--default-budget", "5"], ("--max-budget",)),
        (["serve", "--port", "70000"], ("--port",)),
    ],
)
def test_backend_and_serve_options_are_checked(argv: list[str], words: tuple[str, ...]) -> None:
    assert_one_line_error(run_latts(*argv), *words)


def test_kernels_that_cannot_be_built_are_said_once_on_stderr(tmp_path) -> None:
    """No compiler (a fresh cache, CXX pointing nowhere): the command still answers, on torch's ops, and says
    once on stderr why and what it costs."""
    env = _env()
    env.update(XDG_CACHE_HOME=str(tmp_path), CXX=str(tmp_path / "no-such-compiler"))
    env.pop("LATTS_NO_KERNELS", None)
    proc = subprocess.run([sys.executable, "-m", "latts.cli", "generate", "What is 2+2?", "--max-tokens", "4",
                           "--json"], capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["engine_build"] == "torch-ops" and "native" not in doc["weights"]
    warnings = [line for line in proc.stderr.splitlines() if "kernels are not available" in line]
    assert len(warnings) == 1, proc.stderr
    assert "no-such-compiler" in warnings[0] and "slower" in warnings[0]
    assert "Error building extension" not in proc.stderr  # the compiler's whole output is not dumped
