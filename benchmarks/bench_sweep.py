"""Sweeps on this machine's embedded Ray, all cases side by side in one run:

(a) concurrency: 16 points of a compute-bound in-process job (~1 s each on one core) with
    ``execution.parallel_runs: 1`` against the default (as many as the cluster fits);
(b) the fixed cost per run: 200 points of a tiny job (Lorenz-96, n = 8), the sweep's total time
    divided by its points (factory, compile, primal, Jacobian, writing, bookkeeping);
(c) mixing: a sweep of sharded runs (``shards: 2``) next to in-process ones;
(d) programs shared: the marginal cost per point of same-structure points (Lorenz-96 n = 8,
    sweeps of 20 and 220 points: the difference divided by 200), a 10,000-point sweep end to
    end, and two structures interleaved (n = 8 and 9), checked against one run per point and
    counting the programs compiled.

Runners are started by a warm-up sweep first, as a sweep of many points amortises them; the
cold start is shown on its own.

    python benchmarks/bench_sweep.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import ray

JOB = '''
import jax
import jax.numpy as jnp
import rayjac

def make(n=1536, seed=0):
    """tanh(W @ x): a dense n x n Jacobian, n JVPs of a matrix-vector product."""
    key = jax.random.PRNGKey(seed)
    w = rayjac.Variable(jax.random.normal(key, (n, n)) / jnp.sqrt(n))
    x = jax.random.normal(jax.random.fold_in(key, 1), (n,))
    return rayjac.Problem(lambda x: jnp.tanh(w.value @ x), args=(x,), variables={"w": w})
'''


SUMMARY: list[str] = []  # the last sweep's summary line


def sweep(folder: str, problem: str, grid: dict, **execution) -> float:
    """Runs a fresh sweep; returns its wall time (s). Every run must succeed."""
    from rayjac.runs import parse_config
    from rayjac.runs import run

    cfg = parse_config({"problem": problem, "name": "bench", "jacfwd": {"argnums": 0},
                        "execution": execution, "output": {"path": folder}, "sweep": grid})
    start = time.perf_counter()
    records = run(cfg, progress=lambda line: SUMMARY.append(line))
    took = time.perf_counter() - start
    failed = [r for r in records if r.status != "done"]
    if failed:
        sys.exit(f"{len(failed)} runs failed, e.g. {failed[0].run_id}: {failed[0].error}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few points: a smoke run")
    args = parser.parse_args()
    heavy, tiny, mixed = (4, 20, 2) if args.quick else (16, 200, 4)
    n = 768 if args.quick else 1792

    work = tempfile.mkdtemp(prefix="rayjac-bench-sweep-")
    os.makedirs(f"{work}/benchjobs")
    open(f"{work}/benchjobs/__init__.py", "w").close()
    with open(f"{work}/benchjobs/dense.py", "w") as f:
        f.write(JOB)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.symlink(f"{repo}/jobs", f"{work}/jobs")
    os.chdir(work)  # the runners import the jobs from the driver's folder
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # before JAX starts
    t_ray = time.perf_counter() - start
    import jax

    dense, l96 = "benchjobs.dense:make", "jobs.lorenz96:make"
    t_cold = sweep("warm", dense, {"params.seed": [0, 1]}, parallel_runs=None)
    t_one = sweep("a-one", dense, {"params.n": [n], "params.seed": list(range(heavy))},
                  parallel_runs=1)
    t_all = sweep("a-all", dense, {"params.n": [n], "params.seed": list(range(heavy))})
    t_tiny = sweep("b-all", l96, {"params.n": [8], "params.seed": list(range(tiny))})
    t_tiny1 = sweep("b-one", l96, {"params.n": [8], "params.seed": list(range(tiny // 4))},
                    parallel_runs=1)
    half = max(1, mixed // 2)
    t_mixed = sweep("c-mixed", dense, {"params.n": [n // 2], "params.seed": list(range(half)),
                                       "execution.shards": [None, 2]})
    same = _sharded_equals_in_process("c-mixed", n // 2, half)

    seeds = lambda a, b: {"params.n": [8], "params.seed": list(range(a, b))}  # noqa: E731
    sweep("d-warm", l96, seeds(-2, 0))  # runners and their programs warm, as in a long sweep
    t_20 = sweep("d-20", l96, seeds(0, 20))
    t_220 = sweep("d-220", l96, seeds(100, 320))
    marginal = (t_220 - t_20) / 200
    big = 1000 if args.quick else 10_000
    t_big = sweep("d-big", l96, seeds(1000, 1000 + big))
    big_line = SUMMARY[-1]
    interleaved = {"params.seed": list(range(40 if args.quick else 100)), "params.n": [8, 9]}
    t_two = sweep("d-two", l96, interleaved)
    programs = int(SUMMARY[-1].rsplit(", ", 1)[1].split()[0])
    two_same = _equals_runs_of_their_own("d-two", l96, interleaved, every=10)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, Python "
          f"{platform.python_version()}, Ray {ray.__version__}, jax {jax.__version__}")
    print(f"embedded Ray started in {t_ray:.1f} s; the first sweep (2 points of (a), runners "
          f"cold) took {t_cold:.1f} s\n")
    print("| case | points | wall | per point | target |")
    print("|---|---|---|---|---|")
    print(f"| (a) tanh(W@x) n={n}, parallel_runs: 1 | {heavy} | {t_one:.1f} s | "
          f"{t_one / heavy:.2f} s | |")
    print(f"| (a) the same, default (null) | {heavy} | {t_all:.1f} s | {t_all / heavy:.2f} s | |")
    print(f"| (a) speed-up, default over one at a time | | {t_one / t_all:.2f}x | | >= 1.7x |")
    print(f"| (b) Lorenz-96 n=8, default: cost per run | {tiny} | {t_tiny:.1f} s | "
          f"{1e3 * t_tiny / tiny:.0f} ms | <= 100 ms |")
    print(f"| (b) the same, parallel_runs: 1 | {tiny // 4} | {t_tiny1:.1f} s | "
          f"{1e3 * t_tiny1 / (tiny // 4):.0f} ms | |")
    print(f"| (c) n={n // 2}, shards: [null, 2] mixed, default | {2 * half} | {t_mixed:.1f} s | "
          f"{t_mixed / (2 * half):.2f} s | sharded == in-process: {same} |")
    print(f"| (d) Lorenz-96 n=8: 20 points | 20 | {t_20:.2f} s | | |")
    print(f"| (d) the same, 220 points | 220 | {t_220:.2f} s | | |")
    print(f"| (d) marginal cost per point, (220 - 20) / 200 | | | {1e3 * marginal:.1f} ms | "
          "<= 15 ms |")
    print(f"| (d) {big:,} points end to end | {big:,} | {t_big:.0f} s | "
          f"{1e3 * t_big / big:.1f} ms | < 180 s (10,000) |")
    print(f"| (d) n = 8 and 9 interleaved | {2 * len(interleaved['params.seed'])} | "
          f"{t_two:.1f} s | {1e3 * t_two / (2 * len(interleaved['params.seed'])):.1f} ms | "
          f"{programs} programs for 2 structures (<= 2 each); == runs of their own: "
          f"{two_same} |")
    print(f"\n{big:,}-point sweep: {big_line}")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


def _equals_runs_of_their_own(folder: str, problem: str, grid: dict, every: int) -> bool:
    """Every ``every``-th point of a sweep equals a run of its own (``run_one``)."""
    import numpy as np

    from rayjac import load
    from rayjac.runs import expand_sweep, parse_config, run_one

    cfg = parse_config({"problem": problem, "name": "bench", "jacfwd": {"argnums": 0},
                        "output": {"path": folder}, "sweep": grid})
    for run_ in expand_sweep(cfg)[::every]:
        alone = run_.config.model_copy(update={"output": run_.config.output.model_copy(
            update={"path": f"alone/{run_.run_id}"})})
        run_one(alone, run_.point)
        if not np.array_equal(load(alone.output.path).jacobian,
                              load(run_.config.output.path).jacobian):
            return False
    return True


def _sharded_equals_in_process(folder: str, n: int, points: int) -> bool:
    import numpy as np

    from rayjac import load

    run = f"{folder}/n-{n}_seed-{{}}_shards-{{}}"
    return all(np.allclose(load(run.format(s, 2)).jacobian, load(run.format(s, "null")).jacobian,
                           rtol=1e-5, atol=1e-6) for s in range(points))


if __name__ == "__main__":
    main()
