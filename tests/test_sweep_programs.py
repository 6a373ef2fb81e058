"""Sweeps that compile once (rayjac.runs._structure, _batch, _table): points keyed by the
structure of their jaxpr share one compiled program and run as one jf.map, each written as its
own run; results equal one run per point; failures stay with their point; runs.parquet is
compacted from an append-only log.

Most cases run a chunk in this process (``Chunk.run``, what a runner does) against
``run_one`` per point; one sweep runs on the session's Ray.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import job_package
from rayjac import load
from rayjac.runs import RUNS_TABLE, expand_sweep, load_problem, parse_config, read_runs_table
from rayjac.runs import run, run_one
from rayjac.runs._batch import Chunk
from rayjac.runs._structure import trace
from rayjac.runs._table import RUNS_LOG, RunsLog, column_types

JOBS = '''
import jax
import jax.numpy as jnp
import numpy as np
import rayjac

def make(n=4, g=1.0, seed=0, flip=False, fail_at=None, boom=None, scan_g=False):
    """A small model whose values (g, seed, the Variable, the closure array) change per point;
    ``flip`` changes its Python control flow, ``n`` its shapes."""
    if fail_at is not None and g == fail_at:
        raise ValueError(f"g={g} is unlucky")
    rng = np.random.default_rng(seed)
    w = rayjac.Variable(jnp.asarray(rng.normal(size=(n, n)), jnp.float32) * (np.eye(n) + np.eye(n, k=1)))
    bias = jnp.asarray(rng.normal(size=n), jnp.float32)  # a closure array
    scale = rayjac.Variable(jnp.float32(1.0 + seed))

    def f(x):
        y = jnp.tanh(w.value @ x) * g + bias * scale.value
        if flip:
            y = -y[::-1]
        if boom is not None:
            y = y + jax.pure_callback(_check, jax.ShapeDtypeStruct((), jnp.float32), g * 1.0,
                                      vmap_method="sequential")
        if scan_g:
            y = jax.lax.scan(lambda c, _: (c * g, None), y, None, length=2)[0]
        return y, jnp.sum(y ** 2)

    x = jnp.asarray(rng.normal(size=n), jnp.float32)
    return rayjac.Problem(f, args=(x,), variables={"w": w, "scale": scale})

BOOM = 3.0

def _check(g):
    if float(g) == BOOM:
        raise RuntimeError("the callback refuses g=3")
    return np.float32(0.0)
'''


@pytest.fixture
def jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return job_package(tmp_path, JOBS) + ":make"


def sweep_config(problem, path, grid, overwrite=True, **sections):
    jacfwd = {"argnums": 0, "has_aux": True, "return_value": True, **sections.pop("jacfwd", {})}
    return parse_config({"problem": problem, "name": "t", "jacfwd": jacfwd,
                         "output": {"path": path, "overwrite": overwrite}, "sweep": grid,
                         **sections})


def chunk_run(config):
    """Runs every point as one runner's chunk; returns (Done by run id, the Chunk)."""
    runs = expand_sweep(config)
    chunk = Chunk()
    done = list(chunk.run([(i, r.config, r.point) for i, r in enumerate(runs)], None))
    return {runs[d.index].run_id: d for d in done}, chunk


def dense(matrix):
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def assert_same_as_alone(config, folder):
    """Each point's stored result equals a run of its own (run_one) written to ``folder``."""
    for run_ in expand_sweep(config):
        alone = run_.config.model_copy(update={"output": run_.config.output.model_copy(
            update={"path": f"{folder}/{run_.run_id}"})})
        run_one(alone, run_.point)
        got, want = load(run_.config.output.path), load(alone.output.path)
        np.testing.assert_array_equal(dense(got.matrix()), dense(want.matrix()))
        for part in ("value", "aux"):
            for a, b in zip(jax.tree_util.tree_leaves(getattr(got, part)),
                            jax.tree_util.tree_leaves(getattr(want, part))):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        meta, other = got.metadata, want.metadata
        assert meta["sweep_point"] == run_.point and meta["config"]["output"]["path"].endswith(
            run_.run_id)
        assert {**meta["config"], "output": None} == {**other["config"], "output": None}


# ------------------------------------------------------------------------------- structure keys

def key(problem, **params):
    return trace(load_problem(problem, params), "options").key


def test_points_that_differ_only_in_values_share_a_key(jobs):
    base = key(jobs, g=1.0, seed=0)
    # g is a literal, seed changes the Variables, the closure array and the argument
    assert key(jobs, g=2.5, seed=0) == base == key(jobs, g=1.0, seed=3)


def test_control_flow_shapes_and_nested_literals_give_their_own_keys(jobs):
    base = key(jobs, g=1.0)
    assert key(jobs, g=1.0, flip=True) != base  # an `if` on a parameter
    assert key(jobs, g=1.0, n=5) != base  # a shape parameter
    # g inside a scan body is not lifted: another value is another program
    assert key(jobs, g=1.0, scan_g=True) != key(jobs, g=2.0, scan_g=True)
    assert key(jobs, g=2.0, scan_g=True) == key(jobs, g=2.0, scan_g=True, seed=1)


def test_a_custom_rule_made_per_point_is_never_shared():
    import rayjac
    from rayjac.runs._structure import trace as trace_

    def make(g):
        @jax.custom_jvp
        def h(x):
            return jnp.sin(x)
        h.defjvp(lambda p, t: (h(p[0]), g * t[0]))  # its derivative depends on g
        return rayjac.Problem(h, args=(jnp.ones(3),))

    assert trace_(make(2.0), "o").key != trace_(make(3.0), "o").key
    relu = lambda g: rayjac.Problem(lambda x: jax.nn.relu(x) * g, args=(jnp.ones(3),))  # noqa
    assert trace_(relu(2.0), "o").key == trace_(relu(3.0), "o").key  # jax's own rule


# ---------------------------------------------------------------- batches equal runs of their own

def test_a_chunk_equals_one_run_per_point_and_compiles_once_per_structure(jobs, tmp_path):
    grid = {"params.n": [4, 5], "params.g": [0.5, 2.0], "params.seed": [0, 1, 2],
            "params.flip": [False, True]}
    config = sweep_config(jobs, "sweep", grid)
    done, chunk = chunk_run(config)
    assert all(d.error is None for d in done.values()), done
    programs = {d.program for d in done.values()}
    assert len(programs) == 4 and chunk.built == 4  # (n, flip): 4 structures, 24 points
    assert_same_as_alone(config, tmp_path / "alone")
    meta = load("sweep/n-4_g-2.0_seed-1_flip-false").metadata
    assert meta["program"]["key"] in programs and meta["program"]["lifted"] >= 1


def test_a_later_chunk_reuses_the_program_and_lifts_what_changed(jobs):
    chunk = Chunk()
    first = sweep_config(jobs, "a", {"params.g": [0.5, 2.0]})
    assert all(d.error is None for d in chunk.run(
        [(i, r.config, r.point) for i, r in enumerate(expand_sweep(first))], None))
    again = sweep_config(jobs, "b", {"params.g": [3.0, 4.0, 5.0]})
    list(chunk.run([(i, r.config, r.point) for i, r in enumerate(expand_sweep(again))], None))
    assert chunk.built == 1
    # the seed was the same in every point so far (baked in); now it changes: one more program
    seeds = sweep_config(jobs, "c", {"params.seed": [4, 5]})
    list(chunk.run([(i, r.config, r.point) for i, r in enumerate(expand_sweep(seeds))], None))
    assert chunk.built == 2
    problem = load_problem(seeds.problem, {"seed": 5})
    np.testing.assert_allclose(np.asarray(load("c/seed-5").value),
                               np.asarray(problem.func(*problem.args)[0]), rtol=1e-6)


@pytest.mark.parametrize("jacfwd", [{"argnums": None, "grad_vars": "w"},
                                    {"argnums": [0], "has_aux": False, "return_value": False}])
def test_options_grad_vars_and_argnums_lists_equal_runs_of_their_own(jobs, tmp_path, jacfwd):
    config = sweep_config(jobs, "sweep", {"params.g": [0.5, 2.0], "params.seed": [0, 1]},
                          jacfwd=jacfwd)
    done, chunk = chunk_run(config)
    assert all(d.error is None for d in done.values()) and chunk.built == 1, done
    assert_same_as_alone(config, tmp_path / "alone")


def test_sparse_points_get_the_exact_pattern_of_a_run_of_their_own(jobs, tmp_path):
    """One pattern per batch: points whose connectivity (a read-only Variable) differs are
    batched apart, so each pattern is as tight as a run of its own; g alone is shared."""
    config = sweep_config(jobs, "sweep", {"params.g": [0.5, 2.0], "params.seed": [0, 1]},
                          jacfwd={"sparsity": "auto"}, params={"n": 6})
    done, chunk = chunk_run(config)
    assert all(d.error is None for d in done.values()) and chunk.built == 2, done
    assert len({d.program for d in done.values()}) == 2
    assert_same_as_alone(config, tmp_path / "alone")
    for run_ in expand_sweep(config):
        got = load(run_.config.output.path).sparsity
        want = load(tmp_path / "alone" / run_.run_id).sparsity
        assert got.num_colors == want.num_colors == 2 and got.nnz == want.nnz


def test_a_spectrum_per_point_equals_runs_of_their_own(jobs, tmp_path):
    config = sweep_config(jobs, "sweep", {"params.g": [0.5, 2.0, 4.0]},
                          analysis={"spectrum": "all"})
    done, _ = chunk_run(config)
    assert all(d.error is None for d in done.values())
    for run_ in expand_sweep(config):
        problem = load_problem(config.problem, run_.config.params)
        want = np.linalg.eigvals(np.asarray(jax.jacfwd(lambda x: problem.func(x)[0])(
            *problem.args)))
        got = np.asarray(load(run_.config.output.path).spectrum).reshape(-1)
        np.testing.assert_allclose(np.sort_complex(got), np.sort_complex(want), rtol=1e-4,
                                   atol=1e-5)


# ----------------------------------------------------------------------------------- failures

def test_a_failing_factory_fails_only_its_point(jobs):
    config = sweep_config(jobs, "sweep", {"params.g": [0.5, 2.0, 3.0]}, params={"fail_at": 2.0})
    done, _ = chunk_run(config)
    assert done["g-2.0"].error.startswith("FactoryError: the job factory")
    assert done["g-0.5"].error is None and done["g-3.0"].error is None
    assert done["g-0.5"].program == done["g-3.0"].program is not None


def test_values_that_make_the_batch_raise_fail_only_their_point(jobs, tmp_path):
    config = sweep_config(jobs, "sweep", {"params.g": [1.0, 2.0, 3.0, 4.0]},
                          params={"boom": True})
    done, _ = chunk_run(config)
    assert "the callback refuses g=3" in done["g-3.0"].error
    assert [done[f"g-{g}"].error for g in (1.0, 2.0, 4.0)] == [None] * 3
    assert not os.path.exists("sweep/g-3.0")
    problem = load_problem(jobs, {"g": 4.0, "boom": True})
    np.testing.assert_allclose(np.asarray(load("sweep/g-4.0").value),
                               np.asarray(problem.func(*problem.args)[0]), rtol=1e-6)


# ------------------------------------------------------------------------------ the runs log

class Record:
    def __init__(self, run_id, status="done", program=None):
        self.run_id, self.point, self.status = run_id, {"params.g": float(run_id[2:])}, status
        self.error, self.path, self.stability, self.program = None, run_id, None, program


def test_the_log_is_read_with_the_table_and_compacted_on_resume(tmp_path):
    folder = str(tmp_path / "sweep")
    records = [Record(f"g-{g}") for g in range(6)]
    types = column_types([type("R", (), {"point": r.point})() for r in records])
    log = RunsLog(folder, types, flush_s=0.0, compact_s=3600)
    log.close(records[:2])  # runs.parquet with 2 rows
    for r in records[2:5]:
        log.add(r, lambda: records)  # each flushed to the log at once
    assert len(os.listdir(f"{folder}/{RUNS_LOG}")) == 3
    assert pq.read_table(f"{folder}/{RUNS_TABLE}").num_rows == 2  # not rewritten per run
    redone = Record("g-1", status="failed")
    log.add(redone, lambda: records)
    table = read_runs_table(folder)  # the table and the log: the newest row of each run
    assert table.column("run_id").to_pylist() == ["g-0", "g-1", "g-2", "g-3", "g-4"]
    assert table.column("status").to_pylist()[1] == "failed"
    # a driver killed here: the next one compacts what it logged before anything else
    RunsLog(folder, types).resume()
    assert not os.path.exists(f"{folder}/{RUNS_LOG}")
    assert pq.read_table(f"{folder}/{RUNS_TABLE}").equals(table)


# --------------------------------------------------------------------------- a sweep on Ray

def test_a_sweep_of_two_interleaved_shapes_on_ray(jobs, tmp_path, ray_local):
    grid = {"params.g": [0.5, 1.0, 2.0, 3.0, 4.0, 5.0], "params.n": [4, 5]}  # n alternates
    config = sweep_config(jobs, "sweep", grid, overwrite=False)
    lines = []
    records = run(config, progress=lines.append)
    assert [r.status for r in records] == ["done"] * 12, [r.error for r in records]
    assert len({r.program for r in records}) == 2
    summary = lines[-1]
    assert summary.startswith("12 of 12 runs done, 0 failed; table: sweep/runs.parquet; "
                              "12 runs of 2 structure(s), ")
    compiled = int(summary.split(", ")[-1].split()[0])
    assert 2 <= compiled <= 4  # at most once per structure in each of the 2 runners
    assert_same_as_alone(config, tmp_path / "alone")
    table = pq.read_table("sweep/runs.parquet")
    assert table.column("status").to_pylist() == ["done"] * 12
    assert not os.path.exists(f"sweep/{RUNS_LOG}")
    # a rerun skips every point (resume unchanged)
    again = run(config, progress=lines.append)
    assert [r.status for r in again] == ["done"] * 12
    assert lines[-2].endswith("done already, skipped")
    assert json.loads(open("sweep/g-0.5_n-4/metadata.json").read())["program"]["key"]
    # the same structures again, in another folder: the idle runners kept their programs
    lines.clear()
    records = run(sweep_config(jobs, "other", grid, overwrite=False), progress=lines.append)
    assert [r.status for r in records] == ["done"] * 12
    assert lines[-1].endswith("12 runs of 2 structure(s), 0 program(s) compiled"), lines[-1]


# ------------------------------------------------------------------- every shipped sweep config

SHIPPED = {"lorenz96_sweep.yaml": ["sweep.params.n=[8, 12]"],
           "rate_network_stability.yaml": ["params.n=64", "params.p_connect=0.1",
                                           "sweep.params.gain=[0.5, 0.9, 1.1, 1.5]"]}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_sweep_equals_one_run_per_point(name, tmp_path, monkeypatch, ray_local):
    from rayjac.runs import load_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(repo)
    config = load_config(f"{repo}/configs/{name}",
                         [*SHIPPED[name], f"output.path={tmp_path}/sweep"])
    done, _ = chunk_run(config)
    assert all(d.error is None for d in done.values()), done
    for run_ in expand_sweep(config):
        alone = run_.config.model_copy(update={"output": run_.config.output.model_copy(
            update={"path": f"{tmp_path}/alone/{run_.run_id}"})})
        run_one(alone, run_.point)
        got, want = load(run_.config.output.path), load(alone.output.path)
        if want.jacobian is not None:
            np.testing.assert_array_equal(dense(got.matrix()), dense(want.matrix()))
        if want.spectrum is not None:  # ARPACK: the same eigenvalues, to its tolerance
            np.testing.assert_allclose(np.sort_complex(np.ravel(got.spectrum)),
                                       np.sort_complex(np.ravel(want.spectrum)), rtol=1e-4,
                                       atol=1e-5)
            assert (got.stability.column("stable").to_pylist()
                    == want.stability.column("stable").to_pylist())


WRITES = '''
import jax.numpy as jnp
import rayjac

def make(g=1.0):
    """Writes its Variable (a step counter and a state), as BrainPy models do."""
    state = rayjac.Variable(jnp.asarray([1.0, 0.0, 2.0], jnp.float32))
    steps = rayjac.Variable(jnp.float32(0.0))

    def f(x):
        state.value = state.value * x * g
        steps.value = steps.value + 1.0
        return state.value + steps.value

    return rayjac.Problem(f, args=(jnp.ones(3, jnp.float32),),
                          variables={"state": state, "steps": steps})
'''


@pytest.mark.parametrize("sparsity", [None, "auto"])
def test_a_function_that_writes_its_variables_equals_runs_of_their_own(
        tmp_path, monkeypatch, sparsity):
    monkeypatch.chdir(tmp_path)
    problem = job_package(tmp_path, WRITES) + ":make"
    config = sweep_config(problem, "sweep", {"params.g": [0.5, 2.0]},
                          jacfwd={"sparsity": sparsity, "has_aux": False})
    done, chunk = chunk_run(config)
    assert all(d.error is None for d in done.values()) and chunk.built == 1, done
    assert_same_as_alone(config, tmp_path / "alone")
    if sparsity:  # a written Variable is no constant: its zero does not prune, as alone
        assert load("sweep/g-0.5").sparsity.nnz == load(tmp_path / "alone/g-0.5").sparsity.nnz
