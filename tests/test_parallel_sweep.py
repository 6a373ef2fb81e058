"""Sweeps on the cluster (rayjac.runs._scheduler): concurrent runs off the driver, equal to one at a
time, mixing in-process and sharded runs, a lost runner retried, and the progress output.

All on the session's 2-CPU Ray; the runs of a sweep share it with their own shard workers.
"""

import os
import re
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import calls_by_point, job_package
from rayjac.cli import main
from rayjac.runs import parse_config
from rayjac.runs import RUNS_TABLE, load_problem, run
from rayjac.store import load

JOB = '''
import os
import pathlib
import time
import uuid

import jax.numpy as jnp
import rayjac

def make(n=3, calls=None, rendezvous=None, die_once=None, fail_at=None, wander=None):
    """Marks each call (n and pid); optionally waits for a second run's call, or dies once, or
    moves the runner to another folder (as a runner on a node without the driver's folder)."""
    pathlib.Path(calls).mkdir(exist_ok=True)
    (pathlib.Path(calls) / f"{n}-{os.getpid()}-{uuid.uuid4().hex}").touch()
    if rendezvous:  # wait until another run's factory runs too (up to 60 s)
        folder = pathlib.Path(rendezvous)
        folder.mkdir(exist_ok=True)
        (folder / uuid.uuid4().hex).touch()
        deadline = time.monotonic() + 60
        while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        if len(list(folder.iterdir())) < 2:
            raise RuntimeError("no other run started while this one waited")
    if die_once and not os.path.exists(die_once) and n == 4:
        open(die_once, "w").close()
        os._exit(1)  # the process running the run dies, once
    if wander and n == 4:
        pathlib.Path(wander).mkdir(exist_ok=True)
        os.chdir(wander)
    if fail_at == n:
        raise ValueError(f"n={n} is unlucky")
    w = rayjac.Variable(jnp.linspace(0.5, 1.5, n))

    def f(x):
        return jnp.sin(w.value * x) * jnp.cumsum(x)

    return rayjac.Problem(f, args=(jnp.arange(1.0, n + 1.0),), variables={"w": w})
'''


@pytest.fixture
def job(tmp_path, monkeypatch, ray_local):
    """A fresh job module in tmp_path (the cwd); returns (problem ref, calls folder)."""
    monkeypatch.chdir(tmp_path)
    return job_package(tmp_path, JOB) + ":make", tmp_path / "calls"


def sweep(problem, calls, path, grid, parallel_runs=None, **params):
    return parse_config({"problem": problem, "name": "toy", "output": {"path": path},
                         "params": {"calls": str(calls), **params},
                         "execution": {"parallel_runs": parallel_runs}, "sweep": grid})


def jacobians(folder):
    rows = pq.read_table(Path(folder) / RUNS_TABLE).to_pylist()
    return {row["run_id"]: np.asarray(load(Path(folder) / row["path"]).jacobian) for row in rows}


def test_runs_go_concurrently_off_the_driver_mixing_sharded_and_in_process(job, tmp_path):
    problem, calls = job
    grid = {"params.n": [3, 4], "execution.shards": [None, 2]}
    records = run(sweep(problem, calls, "mixed", grid, rendezvous=str(tmp_path / "rv")))
    assert [r.status for r in records] == ["done"] * 4, [r.error for r in records]
    by_point = calls_by_point(calls)
    assert sorted(by_point) == [3, 4] and all(len(p) == 2 for p in by_point.values())
    assert os.getpid() not in {pid for pids in by_point.values() for pid in pids}
    got = jacobians("mixed")
    for n in (3, 4):
        p = load_problem(problem, {"n": n, "calls": str(tmp_path / "driver-calls")})
        want = jax.jacfwd(p.func)(*p.args)
        np.testing.assert_allclose(got[f"n-{n}_shards-null"], want, rtol=1e-6)
        np.testing.assert_allclose(got[f"n-{n}_shards-2"], got[f"n-{n}_shards-null"],
                                   rtol=1e-6, atol=1e-7)


def test_one_at_a_time_gives_the_same_results_as_all_at_once(job, tmp_path):
    problem, calls = job
    grid = {"params.n": [3, 4, 5]}
    assert {r.status for r in run(sweep(problem, calls, "many", grid,
                                        rendezvous=str(tmp_path / "rv")))} == {"done"}
    one_calls = tmp_path / "one-calls"
    records = run(sweep(problem, one_calls, "one", grid, parallel_runs=1))
    assert {r.status for r in records} == {"done"}
    pids = {pid for p in calls_by_point(one_calls).values() for pid in p}
    assert len(pids) == 1 and os.getpid() not in pids  # one runner, one run after another
    many, one = jacobians("many"), jacobians("one")
    assert sorted(many) == sorted(one) == ["n-3", "n-4", "n-5"]
    for run_id in many:
        np.testing.assert_array_equal(many[run_id], one[run_id])
        assert many[run_id].dtype == one[run_id].dtype


def test_a_runner_lost_mid_run_is_retried(job, tmp_path):
    problem, calls = job
    marker = tmp_path / "died"
    records = run(sweep(problem, calls, "lost", {"params.n": [3, 4]}, die_once=str(marker)))
    assert marker.exists()
    assert [r.status for r in records] == ["done", "done"], [r.error for r in records]
    assert len(calls_by_point(calls)[4]) == 2  # the lost attempt, then the retry
    p = load_problem(problem, {"n": 4, "calls": str(tmp_path / "driver-calls")})
    np.testing.assert_allclose(load("lost/n-4").jacobian, jax.jacfwd(p.func)(*p.args),
                               rtol=1e-6)
    assert [r["status"] for r in pq.read_table(f"lost/{RUNS_TABLE}").to_pylist()] == ["done"] * 2


def test_a_result_written_where_the_driver_cannot_see_it_is_a_failed_run(job, tmp_path):
    problem, calls = job
    elsewhere = tmp_path / "other-node"
    records = run(sweep(problem, calls, "unshared", {"params.n": [3, 4]},
                        wander=str(elsewhere)))
    assert [r.status for r in records] == ["done", "failed"]
    assert records[1].error.startswith("ResultNotShared: the run finished, but its folder "
                                       "unshared/n-4 is not there as seen from this driver")
    assert "shares" in records[1].error
    assert (elsewhere / "unshared" / "n-4" / "metadata.json").exists()  # where it went
    rows = pq.read_table(f"unshared/{RUNS_TABLE}").to_pylist()
    assert [r["status"] for r in rows] == ["done", "failed"]


def write_config(tmp_path, problem, calls, **params):
    params_text = ", ".join(f"{k}: {v}" for k, v in params.items())
    path = tmp_path / "sweep.yaml"
    path.write_text(f"problem: {problem}\nname: toy\noutput: {{path: cli}}\n"
                    f"params: {{calls: {calls}, {params_text}}}\n"
                    "sweep: {params.n: [3, 4, 5]}\n")
    return str(path)


def test_cli_prints_one_line_per_finished_run_when_not_a_terminal(job, tmp_path, capsys,
                                                                monkeypatch):
    problem, calls = job
    monkeypatch.delenv("RAYJAC_QUIET")
    config = write_config(tmp_path, problem, calls, fail_at=4)
    assert main(["run", config]) == 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert sorted(line.split()[1] for line in lines) == ["n-3:", "n-4:", "n-5:"]
    assert "[" not in out and re.search(r"n-4: FAILED: FactoryError: the job factory \S+:make "
                                        r"raised ValueError when called with params \{.*\}: "
                                        r"n=4 is unlucky", err)
    assert "2 of 3 runs done, 1 failed; table: cli/runs.parquet" in err
    assert re.search(r"failed: n-4: FactoryError: .* raised ValueError .*: n=4 is unlucky", err)

    monkeypatch.setenv("RAYJAC_QUIET", "1")  # silences the progress, not the failures
    assert main(["run", config]) == 1
    _, err = capsys.readouterr()
    assert re.fullmatch(r"failed: n-4: FactoryError: the job factory \S+:make raised "
                        r"ValueError when called with params \{.*\}: n=4 is unlucky\. .*",
                        err.strip())
    assert len(calls_by_point(calls)[4]) == 2 and len(calls_by_point(calls)[3]) == 1
