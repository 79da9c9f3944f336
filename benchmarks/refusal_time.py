"""How long ``latts <command> --engine torch`` takes to refuse a GGUF of an architecture the torch engine does
not run (the requirement: within a second, naming the engine that can), process start and imports included.

For each command, the median wall time of --repeats runs of ``python -m latts.cli`` on a header-only phi3 GGUF
written here. Prints a table; exits 1 when a median reaches --target seconds (default 1.0) or when a run does
not refuse with exit code 2 and a message naming ``--engine llamacpp``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

COMMANDS = (["generate", "hi"], ["solve", "1+1"], ["profile"], ["optimize", "--deadline", "5"], ["eval"], ["demo"],
            ["serve"])


def phi3_header(path: Path) -> Path:
    """A GGUF of architecture phi3 with one small F32 tensor: all a refusal reads."""
    writer = gguf.GGUFWriter(path, "phi3")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros(256, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def refusal_seconds(command: list[str], model: Path, env: dict[str, str]) -> float:
    """Wall seconds of one refused run; raises SystemExit when it was not the expected refusal."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "latts.cli", *command, "--engine", "torch", "--model", str(model)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, timeout=120)
    seconds = time.perf_counter() - t0
    if proc.returncode != 2 or "--engine llamacpp" not in proc.stderr:
        raise SystemExit(f"{' '.join(command)}: not the expected refusal (exit {proc.returncode}): {proc.stderr}")
    return seconds


def main() -> int:
    """Time the refusals, print the table, return 1 when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target", type=float, default=1.0, help="seconds a median must stay under")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = phi3_header(Path(tmp) / "tiny-phi3.gguf")
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"), "NO_COLOR": "1"}
        print(f"| command | median s | max s | target < {args.target} s |")
        print("| --- | --- | --- | --- |")
        missed = 0
        for command in COMMANDS:
            times = [refusal_seconds(command, model, env) for _ in range(args.repeats)]
            ok = statistics.median(times) < args.target
            missed += not ok
            print(f"| latts {command[0]} | {statistics.median(times):.2f} | {max(times):.2f} | {'ok' if ok else 'MISSED'} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
