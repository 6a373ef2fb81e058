"""rayjac.analysis.spectrum: ARPACK on large sparse Jacobians, LAPACK on a dense stack (SPEC 1.8).

    python benchmarks/bench_spectrum.py          # n = 10^5; a 64 x 256 x 256 stack; map 256 x 1024
    python benchmarks/bench_spectrum.py --quick  # n = 10^4; a 16 x 128 x 128 stack; map 16 x 256
    python benchmarks/bench_spectrum.py --blas-threads 0  # leave OpenBLAS's own thread count

BLAS threads: by default the script re-runs itself with OPENBLAS_NUM_THREADS (and OMP_, MKL_) = 1.
ARPACK's work is level-2 BLAS on vectors of n <= 10^5 and a 256 x 256 LAPACK solve is small, so
threads gain little, and on a shared 2-core machine a threaded OpenBLAS was 3-10x slower here.

Rows:
  network    P (D + N) P^T: N strictly upper triangular (4 random N(0, 0.2^2) entries a row), P a
             random permutation, D = diag(0.5, 0.35, ..., -0.25, then n - 6 values in [-3, -1]).
             A similarity of a triangular matrix, so its eigenvalues are exactly diag(D): the 6
             leading ones are well separated. "max err" is against that closed form.
  lorenz96   the Lorenz-96 Jacobian (J[i, i-2] = -x[i-1], J[i, i-1] = x[i+1] - x[i-2],
             J[i, i] = -1, J[i, i+1] = x[i-1], cyclic) at a state on the F = 8 attractor (RK4,
             dt = 0.01, t = 5 from F + N(0, 1)), for both systems (largest real part, largest
             modulus). No closed form; its spectrum is a dense cloud, so convergence is the
             question: the ARPACK column lists every try.
  laplacian  the 1-D Laplacian, tridiagonal Toeplitz (1, -2, 1): eigenvalues -2 + 2 cos(pi j/(n+1)),
             so its leading ones are ~1/n^2 apart, the hard case for ARPACK: it shows how long
             spectrum takes to give up (RuntimeError), or its error if it does converge.
  stack      spectrum(Js) of a dense (B, n, n) stack (one batched LAPACK call) against a numpy
             loop of eigvals over the points (then the same sort); "max err" is between the two.
  map run    a job (rate network -x + 1.5 W tanh(x), W dense N(0, 1/n), at B random states,
             Problem(..., in_axes=0)) run by rayjac.runs.run with analysis {spectrum: all,
             keep_jacobian: false} and execution.shards 2 on an embedded Ray (2 CPUs, started
             before JAX; a 2-point run of the same job first starts the workers). (a) the driver's
             peak RSS growth over its RSS just before the run (a thread samples
             /proc/self/status every 5 ms; VmHWM reset through /proc/self/clear_refs where
             allowed), target <= 10% of the B float32 Jacobians; (b) its wall time against this
             process doing the same work: jax.vmap(jax.jacfwd(f)) of the B points, then a numpy
             loop of eigvals one matrix at a time (float64), target sharded >= 1.6x faster.
             One timed run each (minutes at full size), so load from other work on the machine
             can favour either; hence also their CPU seconds (/proc, time.process_time) and an
             idle-machine estimate: (Jacobians' CPU / 2 (two threads) + eigvals' CPU) over
             (driver CPU + the busiest worker's CPU). "max err" is between the two spectra.
Times are the median of --repeat calls, interleaved (ARPACK rows and map run: one call each).
"ARPACK tries" is ncv/maxiter -> outcome (seconds) per scipy.sparse.linalg.eigs call, recorded by
wrapping that function. No timing is asserted; the CPU may be shared, see the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import scipy
import scipy.sparse as sp
from scipy.sparse import linalg as spla

from rayjac.analysis import spectrum


def network(n: int, seed: int = 0) -> tuple[sp.csr_array, np.ndarray]:
    """The 'network' matrix of the docstring and its 6 leading eigenvalues."""
    rng = np.random.default_rng(seed)
    lead = 0.5 - 0.15 * np.arange(6)
    rows, cols = rng.integers(0, n, (2, 4 * n))
    upper = rows < cols
    strict = sp.coo_array((0.2 * rng.standard_normal(upper.sum()), (rows[upper], cols[upper])),
                          shape=(n, n))
    diagonal = np.concatenate([lead, rng.uniform(-3.0, -1.0, n - 6)])
    p = rng.permutation(n)
    return sp.csr_array((sp.diags_array(diagonal) + strict).tocsr()[p][:, p]), lead


def laplacian(n: int) -> tuple[sp.csr_array, np.ndarray]:
    """The 1-D Laplacian and its 6 leading eigenvalues."""
    A = sp.diags_array([np.ones(n - 1), np.full(n, -2.0), np.ones(n - 1)], offsets=[-1, 0, 1])
    return sp.csr_array(A), -2 + 2 * np.cos(np.pi * np.arange(1, 7) / (n + 1))


def lorenz96_state(n: int, forcing: float = 8.0, t: float = 5.0, dt: float = 0.01) -> np.ndarray:
    """A state on the Lorenz-96 attractor: RK4 from forcing + N(0, 1)."""
    x = forcing + np.random.default_rng(0).standard_normal(n)

    def f(x):
        return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing

    for _ in range(round(t / dt)):
        k1 = f(x)
        k2 = f(x + dt / 2 * k1)
        k3 = f(x + dt / 2 * k2)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + f(x + dt * k3))
    return x


def lorenz96_jacobian(x: np.ndarray) -> sp.csr_array:
    """The sparse Jacobian of dx_i/dt = (x[i+1] - x[i-2]) x[i-1] - x[i] + F at x."""
    n, i = len(x), np.arange(len(x))
    cols = np.stack([(i - 2) % n, (i - 1) % n, i, (i + 1) % n], axis=1)
    back1, fwd1, back2 = np.roll(x, 1), np.roll(x, -1), np.roll(x, 2)
    vals = np.stack([-back1, fwd1 - back2, -np.ones(n), back1], axis=1)
    return sp.csr_array((vals.ravel(), (np.repeat(i, 4), cols.ravel())), shape=(n, n))


class ArpackLog:
    """Wraps scipy.sparse.linalg.eigs (which spectrum calls) to record each try."""

    def __init__(self):
        self.tries, self._eigs = [], spla.eigs
        spla.eigs = self._recording_eigs

    def _recording_eigs(self, *args, **kwargs):
        start, outcome = time.perf_counter(), "ok"
        try:
            return self._eigs(*args, **kwargs)
        except spla.ArpackNoConvergence as err:
            outcome = f"no conv ({len(err.eigenvalues)}/{kwargs['k']})"
            raise
        finally:
            seconds = time.perf_counter() - start
            self.tries.append(f"{kwargs['ncv']}/{kwargs['maxiter']} -> {outcome} ({seconds:.1f} s)")

    def take(self) -> str:
        tries, self.tries = self.tries, []
        return "; ".join(tries)


def sparse_row(name: str, J, k: int, log: ArpackLog, exact=None, system="continuous") -> dict:
    """One ARPACK call of spectrum on J, timed, with its tries and error (if `exact`)."""
    start = time.perf_counter()
    try:
        lam, converged = spectrum(J, k=k, system=system), "yes"
    except RuntimeError:
        lam, converged = None, "no (RuntimeError)"
    seconds = time.perf_counter() - start
    err = "-" if exact is None or lam is None else f"{np.abs(lam - exact).max():.1e}"
    lead = "-" if lam is None else f"{lam[0]:.4f}"
    return {"case": f"{name} ({system})", "shape": f"{J.shape[0]} x {J.shape[1]}", "k": k,
            "s": seconds, "converged": converged, "tries": log.take(), "err": err, "leading": lead}


def stack_rows(B: int, n: int, repeat: int) -> list[dict]:
    """spectrum on a dense (B, n, n) stack against a numpy loop of eigvals."""
    Js = np.random.default_rng(1).standard_normal((B, n, n)) / np.sqrt(n) - np.eye(n)

    def loop():
        lam = np.stack([np.linalg.eigvals(J) for J in Js])
        return np.take_along_axis(lam, np.argsort(-lam.real, axis=1, kind="stable"), axis=1)

    calls = {"stack: spectrum(Js)": lambda: spectrum(Js), "stack: numpy loop": loop}
    times, results = {name: [] for name in calls}, {}
    for _ in range(repeat):  # interleaved, so that a change in load hits both alike
        for name, fn in calls.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    rows = [{"case": name, "shape": f"{B} x {n} x {n}", "k": "None",
             "s": statistics.median(times[name]), "converged": "-", "tries": "-",
             "leading": f"{results[name][0, 0]:.4f}"} for name in calls]
    a, b = results.values()
    err = np.abs(np.sort_complex(a) - np.sort_complex(b)).max()
    for row in rows:
        row["err"] = f"{err:.1e}"
    return rows


MAP_JOB = """
import jax
import jax.numpy as jnp
import rayjac

def make(n=1024, points=256, gain=1.5, seed=0):
    key = jax.random.PRNGKey(seed)
    w = jax.random.normal(key, (n, n)) / jnp.sqrt(n)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (points, n))
    return rayjac.Problem(lambda x: -x + gain * (w @ jnp.tanh(x)), args=(xs,), in_axes=0)
"""


class PeakRSS:
    """This process's peak resident memory above its level at the start, in bytes: a thread
    samples VmRSS, and VmHWM (reset at the start where the kernel allows) catches what falls
    between samples."""

    def __enter__(self) -> "PeakRSS":
        self._stop, self.hwm_reset = threading.Event(), _clear_hwm()
        self.start = self.peak = _status("VmRSS")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _status("VmRSS"))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset:
            self.peak = max(self.peak, _status("VmHWM"))

    growth = property(lambda self: self.peak - self.start)


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def _clear_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            return f.write("5") == 1  # resets VmHWM to the current RSS
    except OSError:
        return False


def start_ray() -> str:
    """An embedded Ray (2 CPUs) started before JAX, in a folder holding the map's job package
    (the workers import it from the driver's folder); returns that folder."""
    import ray

    work = tempfile.mkdtemp(prefix="rayjac-bench-spectrum-")
    os.makedirs(f"{work}/benchjobs")
    open(f"{work}/benchjobs/__init__.py", "w").close()
    with open(f"{work}/benchjobs/rate_map.py", "w") as f:
        f.write(MAP_JOB)
    os.chdir(work)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [work, os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAYJAC_QUIET", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    return work


def map_config(B: int, n: int, folder: str):
    from rayjac.runs import parse_config

    return parse_config({"problem": "benchjobs.rate_map:make", "name": "map",
                         "params": {"n": n, "points": B}, "jacfwd": {"argnums": 0},
                         "execution": {"shards": 2},
                         "analysis": {"spectrum": "all", "keep_jacobian": False},
                         "output": {"path": folder, "overwrite": True}})


def numpy_loop(B: int, n: int) -> tuple[np.ndarray, tuple, tuple]:
    """What BrainPy users do: the B Jacobians in this process (vmap of jax.jacfwd), then eigvals
    one matrix at a time; returns the sorted spectra, the two wall times and CPU times."""
    import jax

    from rayjac.runs import load_problem

    problem = load_problem("benchjobs.rate_map:make", {"n": n, "points": B})
    start, cpu = time.perf_counter(), time.process_time()
    Js = np.asarray(jax.vmap(jax.jacfwd(problem.func))(*problem.args))
    jacobians, jac_cpu = time.perf_counter() - start, time.process_time() - cpu
    lam = np.stack([np.linalg.eigvals(J.astype(np.float64)) for J in Js])
    lam = np.take_along_axis(lam, np.argsort(-lam.real, axis=1, kind="stable"), axis=1)
    times = (jacobians, time.perf_counter() - start - jacobians)
    return lam, times, (jac_cpu, time.process_time() - cpu - jac_cpu)


def worker_cpu_s() -> list[float]:
    """CPU seconds (user + system) of each shard worker so far, from /proc (one node)."""
    import ray

    from rayjac.engine import ENGINE

    seconds = []
    for info in ray.get([a.describe.remote() for pool in ENGINE.pools for a in pool.actors]):
        with open(f"/proc/{info['pid']}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # utime, stime: fields 14, 15
        seconds.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return seconds


def map_rows(B: int, n: int) -> tuple[list[dict], dict]:
    """The map run's memory and speed against the numpy loop, with their targets."""
    import json

    from rayjac import load
    from rayjac.runs import run

    start = time.perf_counter()
    run(map_config(2, n, "warm-up"))  # starts the two workers, compiles the driver's primal
    cold = time.perf_counter() - start
    workers = worker_cpu_s()
    with PeakRSS() as rss:
        start, cpu = time.perf_counter(), time.process_time()
        run(map_config(B, n, "map"))
        sharded, driver_cpu = time.perf_counter() - start, time.process_time() - cpu
    workers = [after - before for before, after in zip(workers, worker_cpu_s())]
    res = load("map")
    lam, (t_jac, t_eig), (c_jac, c_eig) = numpy_loop(B, n)
    idle = (c_jac / 2 + c_eig) / (driver_cpu + max(workers))
    err = np.abs(np.sort_complex(res.spectrum) - np.sort_complex(lam)).max()
    jac_bytes = B * n * n * 4
    speedup = (t_jac + t_eig) / sharded
    with open("map/metadata.json") as f:
        timings = json.load(f)["timings"]
    shape = f"{B} x {n} x {n}"
    rows = [
        {"case": "(a) driver peak RSS growth, shards: 2", "shape": shape,
         "measured": f"{rss.growth / 2**20:.0f} MiB = {100 * rss.growth / jac_bytes:.1f}% "
                     f"of the Jacobians ({jac_bytes / 2**20:.0f} MiB)",
         "target": "<= 10%", "met": rss.growth <= 0.1 * jac_bytes},
        {"case": "(b) map run, shards: 2 (spectra on the workers)", "shape": shape,
         "measured": f"{sharded:.1f} s", "target": "", "met": ""},
        {"case": "(b) numpy loop in one process (jacfwd + eigvals)", "shape": shape,
         "measured": f"{t_jac + t_eig:.1f} s ({t_jac:.1f} s Jacobians + {t_eig:.1f} s eigvals)",
         "target": "", "met": ""},
        {"case": "(b) speed-up of the map run", "shape": "", "measured": f"{speedup:.2f}x",
         "target": ">= 1.6x", "met": speedup >= 1.6},
        {"case": "(b) CPU seconds: map run (driver; each worker) vs numpy loop (Jacobians + "
                 "eigvals)", "shape": "",
         "measured": f"{driver_cpu:.1f}; {', '.join(f'{w:.1f}' for w in workers)} vs "
                     f"{c_jac:.1f} + {c_eig:.1f}", "target": "", "met": ""},
        {"case": "(b) idle-machine estimate from CPU seconds", "shape": "",
         "measured": f"{idle:.2f}x", "target": "", "met": ""}]
    notes = {"cold": cold, "timings": timings, "err": err, "jacobian": res.jacobian,
             "hwm": rss.hwm_reset, "spectrum": res.spectrum.shape}
    return rows, notes


def print_map_table(rows: list[dict], notes: dict) -> None:
    print()
    print(f"map run: the first (2-point) run with cold workers took {notes['cold']:.1f} s; the "
          f"run's timings: " + ", ".join(f"{k} {v:.1f}" for k, v in notes["timings"].items()
                                         if isinstance(v, float)))
    print(f"spectrum {notes['spectrum']}, max err against the loop {notes['err']:.1e}, "
          f"load(...).jacobian is {notes['jacobian']}, VmHWM reset: {notes['hwm']}")
    print()
    print("| case | points x shape | measured | target | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['shape']} | {r['measured']} | {r['target']} | {r['met']} |")


_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def with_blas_threads(threads: int) -> None:
    """Re-run this script with the BLAS thread count fixed: BLAS reads it once, when loaded."""
    if threads == 0 or all(os.environ.get(v) == str(threads) for v in _THREAD_VARS):
        return
    env = dict(os.environ, **{v: str(threads) for v in _THREAD_VARS})
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def print_table(rows: list[dict], args) -> None:
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset (OpenBLAS default)")
    print(f"spectrum benchmark: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end, "
          f"OPENBLAS_NUM_THREADS={threads}, numpy {np.__version__}, scipy {scipy.__version__}"
          f"{' (--quick)' if args.quick else ''}")
    print()
    print("| case | shape | k | seconds | converged | ARPACK tries: ncv/maxiter -> outcome "
          "| max err | leading eigenvalue |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['shape']} | {r['k']} | {r['s']:.2f} | {r['converged']} | "
              f"{r['tries']} | {r['err']} | {r['leading']} |")


def spectrum_rows(n: int, B: int, m: int, repeat: int) -> list[dict]:
    """The rows of rayjac.spectrum alone: ARPACK on sparse n x n, LAPACK on a B x m x m stack."""
    log = ArpackLog()
    A, lead = network(n)
    rows = [sparse_row("network", A, 6, log, exact=lead)]
    J = lorenz96_jacobian(lorenz96_state(n))
    rows += [sparse_row("lorenz96", J, 6, log, system=s) for s in ("continuous", "discrete")]
    L, exact = laplacian(n)
    rows.append(sparse_row("laplacian", L, 6, log, exact=exact))
    return rows + stack_rows(B, m, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--map-only", action="store_true", help="only the map run")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of the stack rows")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (default 1); 0 leaves the environment as it is")
    args = parser.parse_args()
    with_blas_threads(args.blas_threads)
    n, (B, m) = (10_000, (16, 128)) if args.quick else (100_000, (64, 256))
    map_B, map_n = (16, 256) if args.quick else (256, 1024)
    work = start_ray()  # before JAX starts
    rows = [] if args.map_only else spectrum_rows(n, B, m, args.repeat)
    map_table = map_rows(map_B, map_n)
    print_table(rows, args)
    print_map_table(*map_table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
