"""The GPU actor path for real, on a machine with a GPU (run by gpu_check.sh; about 2 minutes).

Checks, each a row of the printed table: JAX sees the GPU; two shard workers with
``num_gpus=0.5`` share one GPU, each with its memory capped to its share
(``XLA_PYTHON_CLIENT_MEM_FRACTION``) and running on the GPU; their sharded Jacobian equals the
in-process one; and the warm in-process time of a dense, a sparse and a many-point Jacobian on
the GPU against ``jax.jacfwd`` (or ``jax.vmap(jax.jacfwd)``) in the same process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time

import numpy as np


def best(fn, repeats: int = 5) -> float:
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import ray

    ray.init(address="local", include_dashboard=False)  # before JAX starts (fork safety)
    import jax
    import jax.numpy as jnp

    import rayjac
    from rayjac.engine import ENGINE, WorkerOptions

    rows = []
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip() or "?"
    rows.append(("JAX sees a GPU", bool(gpus), card))

    n = 2048
    w = jax.random.normal(jax.random.key(0), (n, n)) / np.sqrt(n)
    f = lambda x: jnp.tanh(w @ x)  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, n)
    options = WorkerOptions(num_cpus=1, num_gpus=0.5)
    stream = rayjac.jacfwd(f, shards=2, chunk_size=512).stream((x,), workers=options)
    shards = dict(stream.shards)
    sharded = np.concatenate([shards[k][0] for k in sorted(shards)]).T
    local = np.asarray(jax.jacfwd(f)(x))
    rows.append(("sharded (2 workers x 0.5 GPU) == in process",
                 bool(np.allclose(sharded, local, rtol=1e-4, atol=1e-5)),
                 f"max |diff| {np.abs(sharded - local).max():.2e}"))
    pool = ENGINE.pool(options)
    info = ray.get([a.describe.remote() for a in pool.actors])
    fractions = [i["env"].get("XLA_PYTHON_CLIENT_MEM_FRACTION") for i in info]
    rows.append(("two workers on one GPU, memory capped", len(info) == 2 and
                 all(fr == "0.450" for fr in fractions), f"fractions {fractions}"))
    on_gpu = ray.get([a.__ray_call__.remote(lambda self: __import__("jax").default_backend())
                      for a in pool.actors])
    rows.append(("workers compute on the GPU", all(b == "gpu" for b in on_gpu), str(on_gpu)))

    jf = rayjac.jacfwd(f)
    ideal = jax.jit(jax.jacfwd(f))
    t_r, t_j = best(lambda: jf(x)), best(lambda: ideal(x))
    rows.append((f"dense tanh(W x), n={n}: rayjac / jax.jacfwd", True,
                 f"{t_r * 1e3:.2f} ms / {t_j * 1e3:.2f} ms = {t_r / t_j:.2f}x"))

    m = 1 << 16
    stencil = lambda u: jnp.roll(u, 1) - 2 * u + jnp.roll(u, -1) + u ** 3  # noqa: E731
    u = jnp.linspace(0.0, 1.0, m)
    sparse = rayjac.jacfwd(stencil, sparsity="auto")
    t_s = best(lambda: sparse(u).data)
    rows.append((f"sparse stencil, n={m} (3 colours): rayjac warm", True, f"{t_s * 1e3:.2f} ms"))

    xs = jax.random.normal(jax.random.key(1), (256, 256))
    v = jax.random.normal(jax.random.key(2), (256, 256)) / 16
    g = lambda z: jnp.tanh(v @ z)  # noqa: E731
    jm = rayjac.jacfwd(g)
    batched = jax.jit(jax.vmap(jax.jacfwd(g)))
    t_m, t_v = best(lambda: jm.map(xs)), best(lambda: batched(xs))
    rows.append(("jf.map, B=256, n=256: rayjac / jit(vmap(jacfwd))", True,
                 f"{t_m * 1e3:.2f} ms / {t_v * 1e3:.2f} ms = {t_m / t_v:.2f}x"))

    print(f"GPU check on {platform.node()}: {card}; jax {jax.__version__}, ray {ray.__version__}")
    print("| check | ok | detail |\n|---|---|---|")
    for name, ok, detail in rows:
        print(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
    ray.shutdown()
    if not all(ok for _, ok, _ in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("RAYJAC_QUIET", "1")
    main()
