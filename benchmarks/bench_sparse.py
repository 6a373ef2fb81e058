"""Sparse Jacobians: rayjac.jacfwd(f, sparsity="auto") against sparsejac 0.2 and dense JAX.

Each (case, implementation) runs in its own process, as in bench_core.py: inputs are built, the
peak RSS counter is reset (/proc/self/clear_refs) and the first call's peak above the resting RSS
is its peak memory; the warm time is the median of the calls after it. rayjac runs first and
saves the pattern it detected (and its values), so sparsejac is given that very pattern and the
dense run can check rayjac's values entry by entry.

    pip install sparsejac==0.2.0 networkx      # benchmark-only baseline, never imported by rayjac
    python benchmarks/bench_sparse.py          # the whole table (a few minutes)
    python benchmarks/bench_sparse.py --quick  # small sizes (n <= 1024), a smoke run
    python benchmarks/bench_sparse.py --only tri --impls rayjac,sparsejac  # no dense runs

Columns:
  nnz / colours     detected nonzeros; colours of rayjac / of sparsejac (networkx largest_first on
                    the column-intersection graph S^T S, built as sparsejac builds it)
  rayjac first s    first call: detection + colouring + compile + compute, (detect_s + color_s)
                    from pattern.times
  ... warm ms       median of the warm calls, J.data.block_until_ready() (BCOO) for sparse ones
  sparsejac first s jacfwd(f, pattern) (its networkx colouring) + jit compile + first call
The network cases hold a random connectivity (16 inputs per unit, 0.1 % at n = 16384) as a dense
matrix, in a Variable that f only reads ("network_variable") or closed over ("network_closure"):
both must give the same nnz and colours, since a read-only Variable is a constant of the call.
rayjac's kernel runs the product with W on W's nonzeros (rayjac/core/_products.py); sparsejac,
given the same pattern, runs the dense product once per colour.
  speed-up          dense warm / rayjac warm
  ... peak MiB      peak RSS during the first call, above the resting RSS of the process
  max err           relative to max |J|: rayjac J v against jax.jvp for two random v; sparsejac
                    against rayjac entry by entry; dense against rayjac at every entry, and
                    the nonzeros of dense outside the pattern ("missed")
Dense jax.jit(jax.jacfwd(f)) is skipped where n^2 float32 exceeds DENSE_LIMIT, and for the
network cases above n = DENSE_NETWORK_LIMIT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import _rss  # noqa: E402 - one peak-RSS reader for every benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [("tridiagonal", 16384), ("lorenz96", 65536), ("brusselator", 8192),
         ("neurons", 16384), ("brusselator", 131072), ("network_variable", 16384),
         ("network_closure", 16384)]  # (name, n)
QUICK = [("tridiagonal", 1024), ("lorenz96", 1024), ("brusselator", 512), ("neurons", 1024),
         ("network_variable", 1024), ("network_closure", 1024)]
DEGREE = 16  # inputs per unit of the network cases: 0.1 % of 16384
IMPLS = ("rayjac", "sparsejac", "dense")  # in this order: the later ones read rayjac's pattern
DENSE_LIMIT = 6 * 2 ** 30  # bytes of the n x n float32 Jacobian; jacfwd also holds an n x n basis
# Dense jacfwd of the network cases is an n x n x n product (8.8 TFLOP at n = 16384, minutes per
# call here): it runs only up to this n.
DENSE_NETWORK_LIMIT = 4096


def build(name: str, n: int):
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    if name == "tridiagonal":  # x[i-1] - 2x[i] + x[i+1] + x sin x, zero boundary
        def f(x):
            xp = jnp.pad(x, 1)
            return xp[:-2] - 2 * x + xp[2:] + x * jnp.sin(x)
        return f, jax.random.normal(key, (n,))
    if name == "lorenz96":  # the shipped job, forcing closed over as a (constant) Variable
        sys.path.insert(0, ROOT)
        from jobs.lorenz96 import make
        problem = make(n=n)
        return problem.func, problem.args[0]
    if name == "brusselator":  # asdex docs/how-to/brusselator.md, n = 2 N^2, periodic grid
        side, alpha = int(round((n // 2) ** 0.5)), 10.0
        dx = 1.0 / side

        def lap(w):
            return (jnp.roll(w, 1, 0) + jnp.roll(w, -1, 0) + jnp.roll(w, 1, 1)
                    + jnp.roll(w, -1, 1) - 4 * w) / dx ** 2

        def f(uv):
            u, v = uv[:side * side].reshape(side, side), uv[side * side:].reshape(side, side)
            du = 1.0 + u ** 2 * v - 4.4 * u + alpha * lap(u)
            dv = 3.4 * u - u ** 2 * v + alpha * lap(v)
            return jnp.concatenate([du.ravel(), dv.ravel()])
        grid = jnp.linspace(0, 1, side, endpoint=False)
        xx, yy = jnp.meshgrid(grid, grid)
        u0, v0 = 22.0 * (yy * (1 - yy)) ** 1.5, 27.0 * (xx * (1 - xx)) ** 1.5
        return f, jnp.concatenate([u0.ravel(), v0.ravel()])
    if name == "neurons":  # uncoupled Hodgkin-Huxley neurons, state (4, n/4): 4x4 blocks
        sys.path.insert(0, ROOT)
        from jobs.hodgkin_huxley import _rates, C_M, E_K, E_L, E_NA, G_K, G_L, G_NA
        count = n // 4

        def f(x):
            v, m, h, k = x.reshape(4, count)
            (am, bm), (ah, bh), (an, bn) = _rates(v)
            i_ion = G_NA * m ** 3 * h * (v - E_NA) + G_K * k ** 4 * (v - E_K) + G_L * (v - E_L)
            return jnp.concatenate([(10.0 - i_ion) / C_M, am * (1 - m) - bm * m,
                                    ah * (1 - h) - bh * h, an * (1 - k) - bn * k])
        rest = jnp.repeat(jnp.array([-65.0, 0.05, 0.6, 0.32]), count)
        return f, rest + 0.01 * jax.random.normal(key, (n,)) * jnp.abs(rest)
    if name.startswith("network"):  # -x + W tanh(x), W random with DEGREE inputs per unit
        import numpy as np
        import rayjac
        rng = np.random.default_rng(0)
        weights = np.zeros((n, n), np.float32)  # dense, as models hold it: n^2 floats
        weights[np.repeat(np.arange(n), DEGREE), rng.integers(0, n, n * DEGREE)] = \
            rng.normal(size=n * DEGREE) / DEGREE ** 0.5
        w = jax.block_until_ready(jnp.asarray(weights))  # on the device before the clock
        if name == "network_variable":  # in a Variable that f only reads (BrainPy style)
            var = rayjac.Variable(w)
            return (lambda x: -x + var.value @ jnp.tanh(x)), jax.random.normal(key, (n,))
        return (lambda x: -x + w @ jnp.tanh(x)), jax.random.normal(key, (n,))  # a constant
    raise ValueError(name)


def child(name: str, n: int, impl: str, repeats: int, store: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    f, x = build(name, n)
    jax.block_until_ready(jax.jit(lambda y: y + 1)(x))  # the runtime is up
    if impl == "rayjac":
        import rayjac
        make = lambda: rayjac.jacfwd(f, sparsity="auto")  # noqa: E731
        ready = lambda J: J.data.block_until_ready()  # noqa: E731
    elif impl == "sparsejac":
        import scipy.sparse as ssp
        import sparsejac
        from jax.experimental import sparse as jsparse
        saved = np.load(store)
        pattern = ssp.coo_array((np.ones(saved["rows"].size, np.float32),
                                 (saved["rows"], saved["cols"])), shape=(n, n))
        make = lambda: jax.jit(sparsejac.jacfwd(  # noqa: E731
            f, jsparse.BCOO.from_scipy_sparse(pattern)))  # colours here, in the first call
        ready = lambda J: J.data.block_until_ready()  # noqa: E731
    else:
        make = lambda: jax.jit(jax.jacfwd(f))  # noqa: E731
        ready = jax.block_until_ready
    resting = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    fn = make()
    J = fn(x)
    ready(J)
    first = time.perf_counter() - start
    peak = _rss("VmHWM") - resting
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ready(fn(x))
        times.append(time.perf_counter() - start)
    out = {"first_s": first, "median_s": statistics.median(times), "peak_bytes": max(peak, 0)}
    # Checks, after the measurements so they weigh on neither time nor peak.
    if impl == "rayjac":
        pattern = fn.sparsity(x)
        rows, cols = np.asarray(J.indices[:, 0]), np.asarray(J.indices[:, 1])
        np.savez(store, rows=pattern.rows, cols=pattern.cols, J_rows=rows, J_cols=cols,
                 J_data=np.asarray(J.data))
        err = 0.0
        for k in range(2):  # J v against one jvp: cheap, and catches missed nonzeros too
            v = jax.random.normal(jax.random.PRNGKey(k + 1), x.shape)
            ref = jax.jvp(f, (x,), (v,))[1]
            err = max(err, float(jnp.max(jnp.abs(J @ v - ref)) / jnp.max(jnp.abs(ref))))
        out.update(nnz=pattern.nnz, colors=pattern.num_colors, shape=list(J.shape),
                   detect_s=pattern.times.get("detect_s"), color_s=pattern.times.get("color_s"),
                   err=f"Jv rel {err:.1e}")
    elif impl == "sparsejac":
        import networkx
        graph = (pattern.T @ pattern).astype(bool)  # its _input_connectivity_from_sparsity
        coloring = networkx.greedy_color(networkx.from_scipy_sparse_array(graph), "largest_first")
        mine = ssp.coo_array((np.asarray(J.data), tuple(np.asarray(J.indices).T)), (n, n))
        ref = ssp.coo_array((saved["J_data"], (saved["J_rows"], saved["J_cols"])), (n, n))
        rel = abs(mine.tocsr() - ref.tocsr()).max() / max(abs(ref.data).max(initial=0), 1e-30)
        out.update(colors=len(set(coloring.values())), err=f"vs rayjac rel {rel:.1e}")
    else:
        dense, saved = np.asarray(J), np.load(store)
        rows, cols = saved["J_rows"], saved["J_cols"]
        missed = int(np.count_nonzero(dense)) - int(np.count_nonzero(dense[rows, cols]))
        rel = np.abs(dense[rows, cols] - saved["J_data"]).max() / max(np.abs(dense).max(), 1e-30)
        out.update(err=f"vs dense rel {rel:.1e}, {missed} missed")
    return out


def run_case(name: str, n: int, impl: str, repeats: int, store: str, timeout: float) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, __file__, "--child", name, str(n), impl, str(repeats), store]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if proc.returncode:  # one failed cell, not a failed table; the traceback goes to stderr
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[{name} n={n} {impl}] {tail}", file=sys.stderr)
        return {"error": "error: " + tail[:60].replace("|", "/")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import jax
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"jax {jax.__version__}, CPU backend")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per subprocess")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help="comma-separated implementations to run (rayjac always runs)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n, impl, repeats, store = args.child
        print(json.dumps(child(name, int(n), impl, int(repeats), store)))
        return
    cases = [c for c in (QUICK if args.quick else CASES) if not args.only or args.only in c[0]]
    timeout = args.timeout or (120 if args.quick else 900)
    print(machine())
    header = ("case", "n", "nnz", "colours (rayjac / sparsejac)", "rayjac first s (detect + colour)",
              "rayjac warm ms", "sparsejac warm ms", "dense warm ms", "speed-up vs dense",
              "rayjac MiB", "sparsejac MiB", "dense MiB", "sparsejac first s", "max err")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for name, n in cases:
        with tempfile.TemporaryDirectory() as tmp:
            store, r = os.path.join(tmp, "pattern.npz"), {}
            for impl in IMPLS:
                if impl != "rayjac" and impl not in args.impls.split(","):
                    r[impl] = {"error": "not run"}
                elif impl != "rayjac" and "error" in r["rayjac"]:
                    r[impl] = {"error": "no pattern"}  # both need rayjac's saved pattern
                elif impl == "dense" and 4 * n * n > DENSE_LIMIT:
                    r[impl] = {"error": f"does not fit (needs {4 * n * n / 2 ** 30:.0f} GiB)"}
                elif impl == "dense" and name.startswith("network") and n > DENSE_NETWORK_LIMIT:
                    r[impl] = {"error": f"skipped ({2 * n ** 3 / 1e12:.1f} TFLOP per call)"}
                else:
                    r[impl] = run_case(name, n, impl, args.repeats, store, timeout)
        ok = {k: "error" not in v for k, v in r.items()}
        ms = lambda k: f"{1e3 * r[k]['median_s']:.3f}" if ok[k] else r[k]["error"]  # noqa: E731
        mib = lambda k: f"{r[k]['peak_bytes'] / 2 ** 20:.1f}" if ok[k] else "-"  # noqa: E731
        ray, sj = r["rayjac"], r["sparsejac"]
        first = (f"{ray['first_s']:.2f} ({ray['detect_s'] or 0:.2f} + {ray['color_s'] or 0:.3f})"
                 if ok["rayjac"] else ray["error"])
        speed = (f"{r['dense']['median_s'] / ray['median_s']:.0f}x"
                 if ok["rayjac"] and ok["dense"] else "-")
        errs = "; ".join(r[k]["err"] for k in IMPLS if ok[k] and r[k].get("err"))
        row = (name, n, ray.get("nnz", "-"), f"{ray.get('colors', '-')} / {sj.get('colors', '-')}",
               first, ms("rayjac"), ms("sparsejac"), ms("dense"), speed, mib("rayjac"),
               mib("sparsejac"), mib("dense"), f"{sj['first_s']:.2f}" if ok["sparsejac"] else "-",
               errs)
        print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
