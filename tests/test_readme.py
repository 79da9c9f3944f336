"""Every ```python block of README.md runs as written, against the real thing.

The blocks are found by parsing README.md, so an edited example is tested as it now reads. Each block runs
in its own Python process (as a reader would run it) and the test fails if it raises. A block that talks
to a server on 127.0.0.1 gets a real one, started here on a free port; only the URL's port is changed:
``OpenAIBackend`` examples get llama.cpp's server (llama-cpp-python), other OpenAI clients ``latts serve``
started with the flags of the README's own ``latts serve`` command line.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import free_port, latts_cmd, llama_server_cmd, running

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
LOCAL_URL = re.compile(r"http://127\.0\.0\.1:\d+")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One ```python block of the README: where it starts, its code, and what it needs to run against."""

    line: int
    code: str

    @property
    def needs(self) -> str:
        """``"llama.cpp"``, ``"latts serve"`` (a local server the code connects to) or ``"nothing"``."""
        if not LOCAL_URL.search(self.code):
            return "nothing"
        return "llama.cpp" if "OpenAIBackend" in self.code else "latts serve"


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, in order, with the line each one's code starts on."""
    return [Block(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def serve_args(text: str, port: int) -> list[str]:
    """The arguments of the README's ``latts serve`` command line, on ``port`` instead of its own."""
    found = re.search(r"^latts serve\b([^#\n]*)", text, re.MULTILINE)
    args = shlex.split(found.group(1)) if found else []
    if "--port" in args:
        del args[args.index("--port") : args.index("--port") + 2]
    return ["serve", *args, "--port", str(port)]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples_of_each_kind() -> None:
    found = [(b.line, b.needs) for b in BLOCKS]
    assert {needs for _, needs in found} == {"nothing", "latts serve", "llama.cpp"}, found


def test_blocks_and_serve_command_are_parsed() -> None:
    text = "intro\n```python\nprint(1)\n```\n```\nlatts serve --port 8000 --task arith  # note\n```\n"
    assert readme_blocks(text) == [Block(3, "print(1)\n")]
    assert serve_args(text, 9) == ["serve", "--task", "arith", "--port", "9"]


@pytest.fixture(scope="module")
def latts_serve(tmp_path_factory) -> str:
    """A real ``latts serve`` on 127.0.0.1, started as the README says but on a free port: its origin."""
    port = free_port()
    log = tmp_path_factory.mktemp("readme-serve") / "serve.log"
    with running(latts_cmd(*serve_args(README.read_text(encoding="utf-8"), port)),
                 f"http://127.0.0.1:{port}/health", log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def llama_cpp(tmp_path_factory) -> str:
    """llama-cpp-python's server on the default model on 127.0.0.1: its origin."""
    port = free_port()
    log = tmp_path_factory.mktemp("readme-llama") / "server.log"
    with running(llama_server_cmd(port), f"http://127.0.0.1:{port}/v1/models", log):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}:{b.needs}" for b in BLOCKS])
def test_python_block_runs(block: Block, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    code = block.code
    if block.needs == "llama.cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip(f"README.md:{block.line} talks to llama.cpp's server: llama_cpp is not importable "
                        "here (make test installs llama-cpp-python[server])")
        code = LOCAL_URL.sub(request.getfixturevalue("llama_cpp"), code)
    elif block.needs == "latts serve":
        code = LOCAL_URL.sub(request.getfixturevalue("latts_serve"), code)
    script = tmp_path / f"readme_{block.line}.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 0, f"README.md:{block.line} raised:\n{proc.stderr[-3000:]}"
