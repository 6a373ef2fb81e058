"""In-process rayjac.jacfwd against jax.jit(jax.jacfwd(f)): median time and peak memory.

Each (case, implementation) runs in its own process: inputs are built, the peak RSS counter is
reset (/proc/self/clear_refs), and the first call's peak above the resting RSS (compilation
included: a few MiB) is its peak memory; the time is the median of the calls after it.

    python benchmarks/bench_core.py            # the whole table
    python benchmarks/bench_core.py --quick    # small sizes only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = [  # (name, n, chunk_size for the chunked column)
    ("tanh(W@x)", 256, 64),
    ("tanh(W@x)", 1024, 256),
    ("tanh(W@x)", 4096, 512),
    ("elementwise", 4096, 512),
    ("mlp-3", 1024, 256),
    ("outer", 512, 8),
    ("outer", 1024, 8),
]
IMPLS = ("jax", "rayjac", "rayjac-chunked")


def build(name: str, n: int):
    import jax
    import jax.numpy as jnp
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (n,))
    if name == "tanh(W@x)":
        w = jax.random.normal(keys[1], (n, n)) / jnp.sqrt(n)
        return (lambda x: jnp.tanh(w @ x)), x
    if name == "elementwise":
        return (lambda x: jnp.sin(x) * jnp.exp(-x ** 2)), x
    if name == "mlp-3":
        sizes = [n, 512, 512, 64]
        ws = [jax.random.normal(k, (b, a)) / jnp.sqrt(a)
              for k, a, b in zip(keys[1:], sizes[:-1], sizes[1:])]

        def mlp(x):
            for w in ws[:-1]:
                x = jnp.tanh(w @ x)
            return ws[-1] @ x
        return mlp, x
    if name == "outer":
        return (lambda x: jnp.tanh(0.1 * jnp.outer(x, x)) @ x), x
    raise ValueError(name)


def _rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(name: str, n: int, impl: str, chunk: int, repeats: int) -> dict:
    import jax
    import rayjac
    f, x = build(name, n)
    fn = {"jax": lambda: jax.jit(jax.jacfwd(f)),
          "rayjac": lambda: rayjac.jacfwd(f),
          "rayjac-chunked": lambda: rayjac.jacfwd(f, chunk_size=chunk)}[impl]()
    jax.block_until_ready(jax.jit(lambda y: y + 1)(x))  # the runtime is up
    resting = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current RSS
    jax.block_until_ready(fn(x))  # compile and first run: XLA keeps freed buffers in RSS
    peak = _rss("VmHWM") - resting
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "peak_bytes": max(peak, 0)}


def run_case(name: str, n: int, impl: str, chunk: int, repeats: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, __file__, "--child", name, str(n), impl, str(chunk), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n, impl, chunk, repeats = args.child
        print(json.dumps(child(name, int(n), impl, int(chunk), int(repeats))))
        return
    cases = [c for c in CASES if (not args.quick or c[1] <= 512)
             and (not args.only or args.only in c[0])]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    header = ("case", "n", "chunk", "jax ms", "rayjac/jax", "chunked/jax", "jax MiB",
              "rayjac MiB", "chunked MiB", "jax/chunked mem")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, n, chunk in cases:
        r = {impl: run_case(name, n, impl, chunk, args.repeats) for impl in IMPLS}
        t = {k: v["median_s"] for k, v in r.items()}
        mib = {k: v["peak_bytes"] / 2 ** 20 for k, v in r.items()}
        row = (name, n, chunk, f"{1e3 * t['jax']:.2f}", f"{t['rayjac'] / t['jax']:.3f}",
               f"{t['rayjac-chunked'] / t['jax']:.3f}", f"{mib['jax']:.1f}",
               f"{mib['rayjac']:.1f}", f"{mib['rayjac-chunked']:.1f}",
               f"{mib['jax'] / max(mib['rayjac-chunked'], 0.1):.1f}x")
        print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
