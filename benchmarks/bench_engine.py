"""The Ray engine on this machine, all cases side by side in one run:

(a) parallel efficiency: a compute-bound Jacobian on one worker pinned to one core against two
    workers pinned to one core each: T(1) / (2 x T(2));
(b) overhead: rayjac.jacfwd(f, shards=2) against jax.jit(jax.jacfwd(f)) in this (unpinned)
    process on the whole machine;
(c) the fixed cost of a warm sharded call on a tiny function;
(d) the bytes moved per call: inputs broadcast once (an unchanged array is not re-sent),
    shards returned.

    python benchmarks/bench_engine.py [--n 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import ray


def timed(fn, repeats: int) -> float:
    import jax
    jax.block_until_ready(fn())  # warm: compiled, actors up, program shipped
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bytes_moved(jf, x) -> tuple[int, int]:
    """(bytes put into the object store, bytes of shards returned) for one call."""
    import ray
    put, real_put = [], ray.put

    def counting_put(value):
        put.append(value.nbytes if hasattr(value, "nbytes") else 0)  # arrays, not programs
        return real_put(value)

    ray.put = counting_put
    try:
        stream = jf.stream((x,))
        returned = sum(r.nbytes for _, rows in stream.shards for r in rows)
    finally:
        ray.put = real_put
    return sum(put), returned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # before JAX starts
    import jax
    import jax.numpy as jnp
    import rayjac

    n = args.n
    w = rayjac.Variable(jax.random.normal(jax.random.PRNGKey(0), (n, n)) / jnp.sqrt(n))
    x = jax.random.normal(jax.random.PRNGKey(1), (n,))
    f = lambda x: jnp.tanh(w.value @ x)  # noqa: E731  (W: a Variable, broadcast per call)

    baseline = jax.jit(jax.jacfwd(f))
    one, two = rayjac.jacfwd(f, shards=1), rayjac.jacfwd(f, shards=2)
    t_jax = timed(lambda: baseline(x), args.repeats)
    t1 = timed(lambda: one(x), args.repeats)
    t2 = timed(lambda: two(x), args.repeats)
    values = [w.value, w.value * 1.0]  # equal values, two arrays: W is "new" at every call

    def two_new_w():
        w.value = values[0] if w.value is values[1] else values[1]
        return two(x)
    t2_new = timed(two_new_w, args.repeats)
    tiny = rayjac.jacfwd(lambda x: jnp.sin(x) * 2, shards=2)
    t_tiny = timed(lambda: tiny(jnp.ones(4)), 20)
    w.value = w.value * 1.0
    put_new, returned = bytes_moved(two, x)
    put_same, _ = bytes_moved(two, x)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, Ray {ray.__version__}, jax {jax.__version__}")
    print(f"f = tanh(W @ x), W a Variable, n = {n}: Jacobian {n * n * 4 / 2**20:.0f} MiB "
          "float32\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| (a) T(1 worker, 1 core) | {t1:.3f} s | |")
    print(f"| (a) T(2 workers, 1 core each) | {t2:.3f} s | |")
    print(f"| (a) parallel efficiency T1 / (2 T2) | {t1 / (2 * t2):.2f} | >= 0.85 |")
    print(f"| (b) jax.jit(jax.jacfwd(f)), whole machine | {t_jax:.3f} s | |")
    print(f"| (b) overhead shards=2 / jax | {t2 / t_jax:.3f} | <= 1.15 |")
    print(f"| (b) the same when W changes at every call (re-sent) | {t2_new / t_jax:.3f} | |")
    print(f"| (c) warm call, tiny function, shards=2 | {1e3 * t_tiny:.1f} ms | <= 50 ms |")
    print(f"| (d) inputs put per call, W changed | {put_new / 2**20:.2f} MiB | once |")
    print(f"| (d) inputs put per call, W unchanged | {put_same / 2**20:.2f} MiB | |")
    print(f"| (d) shards returned per call | {returned / 2**20:.2f} MiB | = Jacobian |")
    ray.shutdown()


if __name__ == "__main__":
    main()
