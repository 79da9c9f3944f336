"""Load test of ``latts serve``: N concurrent OpenAI clients for a fixed time, with mixed latency budgets.

Starts ``latts serve`` on 127.0.0.1 (or uses ``--url``), then each client sends chat completions back
to back, each with a budget drawn uniformly from [--min-budget, --max-budget] seconds; half of the
clients (--streaming) ask with ``stream: true`` and time the stream's end (its ``[DONE]``). Prints
requests served, deliberate 503s (cannot be answered in time), other errors, and percentiles of
latency ÷ budget, streamed and not. Exits non-zero on any 5xx other than the deliberate 503, on a
stream that ends without its final chunk, or on any answer that came later than its budget + 5%.

    python benchmarks/serve_load.py                 # 8 clients, 60 s, budgets 2-10 s, arith questions
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 16
    python benchmarks/serve_load.py --competing 1 --late 0.10   # beside a process that keeps a core busy
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import free_port, latts_cmd, running  # noqa: E402

MODEL = "smollm2-135m-instruct"


@dataclass
class Result:
    """One request as the client saw it."""

    status: int
    budget: float
    latency: float
    answer: str | None = None
    branches: int = 0
    error: str = ""
    server_s: float = 0.0  # the server's own arrival-to-response time
    solve_s: float = 0.0  # of which the solve itself
    streamed: bool = False
    chunks: int = 0  # streamed: chunks received


def ask_streaming(client, q: str, budget: float, t0: float) -> Result:
    """One streamed request: read every chunk; the last carries finish_reason, usage and the latts object."""
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                                 stream=True, extra_body={"latency_budget": budget}))
    wall = time.monotonic() - t0
    last = chunks[-1] if chunks else None
    if last is None or not last.choices or last.choices[0].finish_reason != "stop" or last.usage is None:
        return Result(-1, budget, wall, error="stream ended without its final chunk", streamed=True)
    extra = last.model_extra["latts"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if content != (extra["answer"] or ""):
        return Result(-1, budget, wall, error=f"streamed content {content!r} != answer {extra['answer']!r}",
                      streamed=True)
    return Result(200, budget, wall, extra["answer"], extra["plan"]["branches"], server_s=extra["latency_s"],
                  solve_s=extra["solve_s"], streamed=True, chunks=len(chunks))


def client_loop(base: str, questions: list[str], stop_at: float, seed: int, lo: float, hi: float,
                out: list[Result], lock: threading.Lock, streaming: bool = False) -> None:
    """Send requests back to back until ``stop_at`` (streamed ones if ``streaming``); append what happened."""
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=hi * 3 + 30)
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        budget = round(rng.uniform(lo, hi), 2)
        q = rng.choice(questions)
        t0 = time.monotonic()
        try:
            if streaming:
                res = ask_streaming(client, q, budget, t0)
                with lock:
                    out.append(res)
                continue
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                               extra_body={"latency_budget": budget})
            extra = r.model_extra["latts"]
            res = Result(200, budget, time.monotonic() - t0, extra["answer"], extra["plan"]["branches"],
                         server_s=extra["latency_s"], solve_s=extra["solve_s"])
        except openai.APIStatusError as exc:
            res = Result(exc.status_code, budget, time.monotonic() - t0, error=str(exc)[:200], streamed=streaming)
        except openai.APIConnectionError as exc:
            res = Result(0, budget, time.monotonic() - t0, error=f"connection: {exc}"[:200], streamed=streaming)
        except openai.APIError as exc:  # an error event inside a stream
            res = Result(-1, budget, time.monotonic() - t0, error=f"in stream: {exc}"[:200], streamed=streaming)
        with lock:
            out.append(res)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def run(base: str, args: argparse.Namespace) -> int:
    """Drive the load against ``base``; print the table; the exit code."""
    from latts.tasks import get_task

    questions = [p.question for p in get_task("arith").load(limit=50)]
    results: list[Result] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.duration
    threads = [threading.Thread(target=client_loop, args=(base, questions, stop_at, i, args.min_budget,
                                                          args.max_budget, results, lock, i < args.streaming))
               for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    served = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status == 503]
    other = [r for r in results if r.status not in (200, 503)]
    LATE = 1 + args.late
    late = [r for r in served if r.latency > r.budget * LATE]
    late_503 = [r for r in refused if r.latency > r.budget * LATE]
    print(f"latts serve load: {args.clients} clients ({args.streaming} streaming), {wall:.0f} s, "
          f"budgets {args.min_budget:g}-{args.max_budget:g} s, {args.competing} competing busy processes")
    print()
    print("| requests | streamed | served (200) | 503 (cannot be answered in time) | other errors | "
          f"answers late (> budget + {args.late:.0%}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {len(results)} | {sum(r.streamed for r in results)} | {len(served)} | {len(refused)} | {len(other)} | "
          f"{len(late)} |")
    print()
    if served:
        print("| served: latency ÷ budget | requests | p50 | p95 | p99 | max |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, rs in (("all", served), ("streamed", [r for r in served if r.streamed]),
                         ("not streamed", [r for r in served if not r.streamed])):
            ratio = [r.latency / r.budget for r in rs]
            if ratio:
                print(f"| {name} | {len(rs)} | {pct(ratio, 50):.3f} | {pct(ratio, 95):.3f} | {pct(ratio, 99):.3f} | "
                      f"{max(ratio):.3f} |")
        print()
        by_budget = {}
        for r in results:
            by_budget.setdefault(min(int(r.budget // 2) * 2, int(args.max_budget) - 2), []).append(r)
        print("| budget s | requests | served | 503 | mean branches | mean latency s (served) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for lo in sorted(by_budget):
            rs = by_budget[lo]
            ok = [r for r in rs if r.status == 200]
            print(f"| {lo}-{lo + 2} | {len(rs)} | {len(ok)} | {sum(r.status == 503 for r in rs)} | "
                  f"{statistics.mean([r.branches for r in ok]) if ok else 0:.1f} | "
                  f"{statistics.mean([r.latency for r in ok]) if ok else 0:.2f} |")
        print()
    if refused:
        print(f"503s came after {pct([r.latency / r.budget for r in refused], 50):.2f} of their budget (median); "
              f"{len(late_503)} came later than budget + {args.late:.0%}")
        print(f"example 503: {refused[0].error}")
    failed = []
    if other:
        failed.append(f"{len(other)} responses other than 200/503, e.g. {other[0].status}: {other[0].error}")
    for r in late:
        print(f"late{' (streamed)' if r.streamed else ''}: budget {r.budget:.2f} s, client saw {r.latency:.3f} s, "
              f"server {r.server_s:.3f} s (solve {r.solve_s:.3f} s)")
    if late:
        failed.append(f"{len(late)} answers later than budget + {args.late:.0%} (worst {max(r.latency / r.budget for r in late):.3f}x)")
    if late_503:
        failed.append(f"{len(late_503)} refusals later than budget + {args.late:.0%}")
    if not served:
        failed.append("no request was served")
    for f in failed:
        print(f"FAILED: {f}")
    if not failed:
        print(f"ok: no 5xx but deliberate 503s, no answer later than its budget + {args.late:.0%}")
    return 1 if failed else 0


def main() -> int:
    """Parse arguments, start the server unless --url, run the load."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running latts serve (default: start one)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--streaming", type=int, default=None, help="how many clients stream (default: half)")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--min-budget", type=float, default=2.0)
    ap.add_argument("--max-budget", type=float, default=10.0)
    ap.add_argument("--competing", type=int, default=0,
                    help="processes that keep a core busy each beside the server during the load")
    ap.add_argument("--late", type=float, default=0.05, help="an answer later than budget x (1 + this) fails")
    args = ap.parse_args()
    args.streaming = args.clients // 2 if args.streaming is None else min(args.streaming, args.clients)
    if args.url:
        return run_beside_busy(args.url.rstrip("/"), args)
    port = free_port()
    log = Path("/tmp") / f"latts-serve-load-{port}.log"
    cmd = latts_cmd("serve", "--port", str(port), "--task", "arith", "--max-budget", str(max(args.max_budget, 10)))
    with running(cmd, f"http://127.0.0.1:{port}/health", log):
        print(log.read_text().strip().splitlines()[-1] if log.read_text().strip() else "")
        return run_beside_busy(f"http://127.0.0.1:{port}", args)


def run_beside_busy(base: str, args: argparse.Namespace) -> int:
    """:func:`run`, with ``args.competing`` processes keeping a core busy each for its duration."""
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.competing)]
    try:
        return run(base, args)
    finally:
        for p in busy:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
