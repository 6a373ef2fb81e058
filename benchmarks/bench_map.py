"""``jf.map`` (Jacobians at B points) against the ideal ``jax.jit(jax.vmap(jax.jacfwd(f)))`` and
against a loop of single ``rayjac.jacfwd`` calls, on this machine, in one run:

(a) dense tanh(W x): warm ``jf.map(xs)`` / ideal (goal <= 1.15x), and its speed-up over the loop
    as a fraction of the ideal's (goal >= 0.7);
(b) sparse block-diagonal population, ``sparsity="auto"``: the ideal is ``jax.jit(jax.vmap())``
    of the single in-process sparse call's nonzeros (dense is B n^2 floats); speed-ups over a loop
    of single sparse calls (goal >= 0.7 of the ideal's), and the map's peak RSS (goal < 2 GiB);
(c) softmax(W x): peak RSS above the result (the process's resting RSS and the B m n result
    subtracted), batch_size=64 against batch_size=None (goal: at least 5x lower);
(d) shards=2 (two 1-core Ray workers) against the in-process map on the whole machine (2 cores),
    for a map whose points cost >= 50 ms each (goal: at most 1.2x); parallel efficiency =
    in-process time / sharded time, both on the same 2 cores.

Every case runs in its own process (``resource.getrusage`` peak RSS); times are warm, the best
of ``--repeats`` runs (of more, up to 1000, while they take under 2 s each in all), the runs of
the implementations compared interleaved.

    python benchmarks/bench_map.py            # the full sizes (a few minutes)
    python benchmarks/bench_map.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

FULL = {"dense": [(256, 1024), (64, 1024)], "sparse": (4096, 256, 64), "memory": (512, 2048),
        "shards": (128, 16, 1000)}
QUICK = {"dense": [(64, 128), (32, 128)], "sparse": (512, 32, 32), "memory": (128, 512),
         "shards": (64, 8, 100)}


def build(name: str, n: int, extra: int = 0):
    import jax
    import jax.numpy as jnp
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    if name == "tanh":
        w = jax.random.normal(k1, (n, n)) / jnp.sqrt(n)
        return lambda x: jnp.tanh(w @ x)
    if name == "softmax":
        w = jax.random.normal(k1, (n, n)) / jnp.sqrt(n)
        return lambda x: jax.nn.softmax(w @ x)
    if name == "population":  # extra: neurons per block; blocks coupled only within themselves
        blocks = n // extra
        w = jax.random.normal(k1, (blocks, extra, extra)) / jnp.sqrt(extra)
        return lambda x: -x + jnp.tanh(jnp.einsum("bij,bj->bi", w, x.reshape(blocks, extra))
                                       ).reshape(n)
    if name == "recurrent":  # extra: steps of a recurrent map, each point ~ steps n^3 flops
        w = jax.random.normal(k1, (n, n)) / jnp.sqrt(n)
        return lambda x: jax.lax.fori_loop(0, extra, lambda i, h: jnp.tanh(w @ h + x), x)
    raise ValueError(name)


def points(count: int, n: int):
    import jax
    return jax.random.normal(jax.random.PRNGKey(1), (count, n))


def best(fn, repeats: int, min_s: float = 2.0) -> float:
    """The best warm time of at least ``repeats`` runs, more while they take under ``min_s``
    in all (fast cases: the best of many, against the noise of a shared machine)."""
    return race({"fn": fn}, repeats, min_s)["fn"]


def race(fns: dict, repeats: int, min_s: float = 2.0) -> dict:
    """``best`` of each function, their runs interleaved so that a busy spell of the machine
    slows all of them alike."""
    import jax
    for fn in fns.values():
        jax.block_until_ready(fn())  # warm: compiled
    times: dict = {name: [] for name in fns}
    rounds, spent = 0, 0.0
    while rounds < repeats or (spent < min_s * len(fns) and rounds < 1000):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
            spent += times[name][-1]
        rounds += 1
    return {name: min(t) for name, t in times.items()}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def child_dense(n: int, count: int, repeats: int) -> dict:
    import jax
    import rayjac
    f, xs = build("tanh", n), points(count, n)
    ideal = jax.jit(jax.vmap(jax.jacfwd(f)))
    jf = rayjac.jacfwd(f)
    loop = lambda: [jf(x) for x in xs]  # noqa: E731
    times = race({"ideal": lambda: ideal(xs), "map": lambda: jf.map(xs)}, repeats)
    return {**times, "map b=128": best(lambda: jf.map(xs, batch_size=128), repeats),
            "loop": best(loop, max(1, repeats // 2))}


def child_sparse(n: int, count: int, block: int, repeats: int) -> dict:
    import jax
    import rayjac
    f, xs = build("population", n, block), points(count, n)
    jf = rayjac.jacfwd(f, sparsity="auto")
    pattern = jf.sparsity(xs[0])
    resting = rss_mib()
    jax.block_until_ready(jf.map(xs).data)
    jax.block_until_ready(jf.map(xs).data)
    peak = peak_mib() - resting  # before the ideal and the loop run here
    ideal = jax.jit(jax.vmap(lambda x: jf(x).data))
    times = race({"ideal": lambda: ideal(xs), "map": lambda: jf.map(xs).data}, repeats)
    return {**times, "peak_mib": peak, "nnz": pattern.nnz, "colors": pattern.num_colors,
            "loop": best(lambda: [jf(x).data for x in xs], max(1, repeats // 2))}


def child_memory(n: int, count: int, batch_size: int | None) -> dict:
    import jax
    import rayjac
    f, xs = build("softmax", n), points(count, n)
    jf = rayjac.jacfwd(f)
    jax.block_until_ready(jax.jit(lambda y: y + 1)(xs))  # the runtime is up
    resting = rss_mib()
    start = time.perf_counter()
    jac = jax.block_until_ready(jf.map(xs, batch_size=batch_size))
    seconds = time.perf_counter() - start
    result = jac.nbytes / 2 ** 20
    return {"above_mib": peak_mib() - resting - result, "result_mib": result, "s": seconds}


def child_shards(n: int, count: int, steps: int, repeats: int) -> dict:
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # before JAX starts
    import jax
    import rayjac
    from rayjac import engine
    f, xs = build("recurrent", n, steps), points(count, n)
    local, sharded = rayjac.jacfwd(f), rayjac.jacfwd(f, shards=2)
    one = best(lambda: local(xs[0]), repeats)
    times = race({"local": lambda: local.map(xs), "sharded": lambda: sharded.map(xs)}, repeats)
    t_local, t_sharded = times["local"], times["sharded"]
    jax.block_until_ready(sharded.map(xs))
    pool = engine.ENGINE.pool(engine.WorkerOptions())
    calls = [ray.get(a.describe.remote())["last_call"] for a in pool.actors]
    span = max(end for _, end in calls) - min(start for start, _ in calls)
    busy = sum(end - start for start, end in calls)
    ray.shutdown()
    return {"point_ms": 1e3 * one, "local": t_local, "sharded": t_sharded,
            "overlap": busy / (2 * span) if span else 0.0}


def run_child(*spec) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, env={**os.environ, "RAYJAC_QUIET": "1"})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        kind, *spec = json.loads(args.child)
        child = {"dense": child_dense, "sparse": child_sparse, "memory": child_memory,
                 "shards": child_shards}[kind]
        print(json.dumps(child(*spec)))
        return
    sizes, r = (QUICK if args.quick else FULL), args.repeats
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; times warm, best of >= {r}\n")
    print("| case | ideal s | jf.map s | map / ideal | loop s | map speed-up / ideal's | "
          "other |")
    print("|---|---|---|---|---|---|---|")
    for n, count in sizes["dense"]:
        t = run_child("dense", n, count, r)
        print(f"| (a) dense tanh(Wx) n={n} B={count} | {t['ideal']:.4f} | {t['map']:.4f} | "
              f"{t['map'] / t['ideal']:.2f}x | {t['loop']:.3f} | "
              f"{t['ideal'] / t['map']:.2f} | batch_size=128: {t['map b=128']:.4f} s |")
    n, count, block = sizes["sparse"]
    m = t = run_child("sparse", n, count, block, r)
    print(f"| (b) sparse population n={n} B={count} ({m['nnz']} nnz, {m['colors']} colours) | "
          f"{t['ideal']:.4f} | {m['map']:.4f} | {m['map'] / t['ideal']:.2f}x | {t['loop']:.3f} "
          f"| {t['ideal'] / m['map']:.2f} | peak RSS {m['peak_mib']:.0f} MiB |")
    n, count = sizes["memory"]
    whole, small = run_child("memory", n, count, None), run_child("memory", n, count, 64)
    print(f"| (c) softmax(Wx) n={n} B={count}, memory above the {whole['result_mib']:.0f} MiB "
          f"result | | | | | | batch_size=None {whole['above_mib']:.0f} MiB ({whole['s']:.1f} s)"
          f", batch_size=64 {small['above_mib']:.0f} MiB ({small['s']:.1f} s): "
          f"{whole['above_mib'] / max(small['above_mib'], 1):.1f}x lower |")
    n, count, steps = sizes["shards"]
    t = run_child("shards", n, count, steps, r)
    print(f"| (d) shards=2, recurrent n={n} x {steps} steps, B={count} "
          f"({t['point_ms']:.0f} ms a point alone) | in process {t['local']:.3f} | shards=2 "
          f"{t['sharded']:.3f} | {t['sharded'] / t['local']:.2f}x | | | parallel efficiency "
          f"{t['local'] / t['sharded']:.2f} (the two workers' kernels overlap "
          f"{t['overlap']:.0%}) |")

if __name__ == "__main__":
    main()
