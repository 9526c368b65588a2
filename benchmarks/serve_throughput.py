"""Serving throughput: completion tokens/s of `rlkit serve` at concurrency 1, 4 and 16, as ratios in one run.

Starts `rlkit serve CHECKPOINT --port 0` in a process of its own (OMP_NUM_THREADS=1), then at each level c
sends the same `--requests` non-streamed chat completions (distinct prompts and seeds, temperature 1, top-k
50, max_tokens 64) from c client threads, each taking the next request when its last one is answered, and
divides the completion tokens the server reports (`usage`) by the wall time, and also by the CPU time the
server process used meanwhile (Linux: /proc; on cores shared with other jobs the wall clock counts the time
the server waited for a core, the CPU clock does not). The same seeded requests give the same completions
at every level, so the token counts agree. Concurrent requests share the engine's decode batch
(rlkit.lib.generation.engine), so a step decodes c rows for not much more than the cost of one: the ratio to c = 1 is
the figure to read.

    python benchmarks/serve_throughput.py runs/quickstart [--requests 128] [--max-tokens 64] [--dtype bfloat16] [--quick]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def start(checkpoint, log, dtype):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "serve", str(checkpoint), "--port", "0", "--dtype", dtype],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    while not (found := re.search(r"on http://[\d.]+:(\d+) ", Path(log).read_text())):
        if proc.poll() is not None:
            sys.exit(Path(log).read_text())
        time.sleep(0.1)
    url = f"http://127.0.0.1:{found.group(1)}"
    while True:
        try:
            httpx.get(f"{url}/health")
            return proc, url
        except httpx.TransportError:
            time.sleep(0.05)


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def level(url, concurrency, requests, max_tokens):
    """(completion tokens, seconds) for the same `requests` requests sent by `concurrency` threads, each
    taking the next one as soon as its previous one is answered."""
    todo, tokens = list(range(requests)), []

    def worker():
        with httpx.Client(timeout=600) as client:
            while todo:
                try:
                    i = todo.pop(0)
                except IndexError:
                    return
                body = {"messages": [{"role": "user", "content": f"Tom has {i % 16} apples and buys {i // 16} more. "
                                                                 "How many?"}],
                        "max_tokens": max_tokens, "temperature": 1.0, "top_k": 50, "seed": 1000 + i}
                tokens.append(client.post(f"{url}/v1/chat/completions", json=body).json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start_time = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens), time.perf_counter() - start_time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default="runs/quickstart")
    p.add_argument("--requests", type=int, default=128, help="requests at each level (the same ones)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", help="the server's compute dtype (float32, bfloat16)")
    p.add_argument("--quick", action="store_true", help="2 requests a thread, 16 tokens: a smoke run")
    args = p.parse_args()
    requests, max_tokens = (32, 16) if args.quick else (args.requests, args.max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(args.checkpoint, Path(tmp) / "serve.log", args.dtype)
        try:
            level(url, 1, 2, 8)  # warm-up
            rows = []
            for c in (1, 4, 16):
                cpu = cpu_seconds(proc.pid)
                n, seconds = level(url, c, requests, max_tokens)
                rows.append((c, n, seconds, n / seconds, n / (cpu_seconds(proc.pid) - cpu)))
        finally:
            proc.terminate()
            proc.wait(30)
    base, base_cpu = rows[0][3], rows[0][4]
    print(f"rlkit serve {args.checkpoint} --dtype {args.dtype}: the same {requests} requests at each level, "
          f"max_tokens {max_tokens}")
    print(f"{'concurrency':>11} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'x conc. 1':>9} "
          f"{'tokens/cpu-s':>12} {'x conc. 1':>9}")
    for c, n, seconds, rate, per_cpu in rows:
        print(f"{c:>11} {n:>7} {seconds:>8.2f} {rate:>9.0f} {rate / base:>9.2f} {per_cpu:>12.0f} "
              f"{per_cpu / base_cpu:>9.2f}")


if __name__ == "__main__":
    main()
