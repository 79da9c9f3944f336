"""Real servers on 127.0.0.1 for the tests: started as subprocesses on a free port, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], ready_url: str, log: Path, timeout_s: float = 240.0) -> Iterator[subprocess.Popen]:
    """Start ``cmd``, wait until ``ready_url`` answers 200, yield the process, then stop it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() - t0 > timeout_s:
                    raise RuntimeError(f"{cmd[:3]} not ready after {timeout_s} s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server started by :func:`running` (and its children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def latts_cmd(*args: str) -> list[str]:
    """The ``latts`` CLI of this interpreter's environment."""
    return [sys.executable, "-m", "latts.cli", *args]


def llama_server_cmd(port: int) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on the default model, named as latts names it."""
    from latts.engine.loading.loader import DEFAULT_MODEL, bundled_path

    return [sys.executable, "-m", "latts.engine.models.llamacpp.server", "--model", str(bundled_path(DEFAULT_MODEL)),
            "--model_alias", DEFAULT_MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", "2", "--interrupt_requests", "False"]
