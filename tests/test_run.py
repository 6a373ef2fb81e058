"""Running configs (rayjac.runs): single runs, factories, grad_vars, sweeps and resume."""

import json
import re
import uuid

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import job_package
from rayjac.runs import ConfigError, parse_config
from rayjac.runs import RUNS_TABLE, FactoryError, load_problem, run, run_one
from rayjac.store import load

JOB = '''
import pathlib
import uuid
import jax.numpy as jnp
import rayjac

def make(n=3, counter=None, fail_at=None, scale=1.0):
    if counter:  # one file per call: safe when runs of a sweep call it at the same time
        pathlib.Path(counter).mkdir(exist_ok=True)
        (pathlib.Path(counter) / f"{n}-{uuid.uuid4().hex}").touch()
    if fail_at is not None and n == fail_at and pathlib.Path("fail.flag").exists():
        raise ValueError(f"n={n} is unlucky")
    w = rayjac.Variable(jnp.linspace(1.0, 2.0, n))
    b = rayjac.Variable(jnp.zeros(2))

    def f(x):
        return scale * jnp.sin(w.value * x) + jnp.sum(b.value)

    return rayjac.Problem(f, args=(jnp.arange(1.0, n + 1.0),), variables={"w": w, "b": b})

def not_a_problem(**params):
    return 42
'''


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A fresh job package in tmp_path (the cwd); returns (module name, counter folder)."""
    monkeypatch.chdir(tmp_path)
    return job_package(tmp_path, JOB), tmp_path / "calls"


def calls(counter):
    return len(list(counter.iterdir())) if counter.exists() else 0


def config(module, **sections):
    return parse_config({"problem": f"{module}:make", "name": "toy", **sections})


def test_single_run_stores_the_jacobian_and_metadata(job):
    module, _ = job
    cfg = config(module, params={"n": 4}, jacfwd={"argnums": 0, "return_value": True},
                 execution={"chunk_size": 3})
    (record,) = run(cfg)
    assert record.status == "done" and record.error is None and record.point == {}
    result = load(record.path)
    problem = load_problem(cfg.problem, cfg.params)
    np.testing.assert_allclose(result.jacobian, jax.jacfwd(problem.func)(*problem.args),
                               rtol=1e-6)
    np.testing.assert_allclose(result.value, problem.func(*problem.args), rtol=1e-6)
    meta = result.metadata
    assert meta["config"] == json.loads(cfg.model_dump_json())
    assert {"rayjac", "ray", "jax", "pyarrow"} <= set(meta["versions"])
    assert {"factory_s", "primal_s"} <= set(meta["timings"])


def test_run_from_a_path_with_overrides(job, tmp_path):
    module, _ = job
    path = tmp_path / "c.yaml"
    path.write_text(f"problem: {module}:make\noutput: {{path: out/a}}\n")
    (record,) = run(path, ["params.n=5", "output.path=out/b"])
    assert record.path == str(tmp_path / "out" / "b")
    assert load(record.path).jacobian.shape == (5, 5)


@pytest.mark.parametrize("grad_vars, argnums, shapes", [
    ("w", None, [(3, 3)]),
    (["b", "w"], None, [(3, 2), (3, 3)]),
    (["w"], [0], [(3, 3), (3, 3)]),
])
def test_grad_vars_name_problem_variables(job, grad_vars, argnums, shapes):
    module, _ = job
    cfg = config(module, jacfwd={"grad_vars": grad_vars, "argnums": argnums})
    jac = load(run_one(cfg)).jacobian
    assert [leaf.shape for leaf in jax.tree_util.tree_leaves(jac)] == shapes
    if isinstance(grad_vars, list) and argnums is None:
        assert isinstance(jac, list)


def test_unknown_grad_var_lists_the_available_names(job):
    module, counter = job
    cfg = config(module, jacfwd={"grad_vars": ["w", "weights", "bias"]})
    with pytest.raises(ConfigError, match=r"jacfwd.grad_vars: .*:make has no variable "
                                          r"'weights', 'bias'; its variables are: w, b"):
        run_one(cfg)


@pytest.mark.parametrize("ref, params, message", [
    ("no_such_module_xyz:make", {}, r"problem: cannot import 'no_such_module_xyz' .*No module "
                                    r"named 'no_such_module_xyz'.*PYTHONPATH"),
    ("{module}:nope", {}, r"problem: module '.*toy' \(.*toy.py\) has no function 'nope'"),
    ("{module}:make", {"m": 3}, r"params: .*:make rejected the parameters \['m'\]: "
                                r".*unexpected keyword argument 'm'"),
    ("{module}:not_a_problem", {}, r"problem: .*:not_a_problem returned int, expected a "
                                   r"rayjac.Problem"),
])
def test_factory_errors_are_config_errors(job, ref, params, message):
    module, _ = job
    with pytest.raises(ConfigError, match=message):
        load_problem(ref.format(module=module), params)


def test_destination_is_checked_before_the_factory_runs(job):
    module, counter = job
    cfg = config(module, params={"counter": str(counter)})
    run_one(cfg)
    assert calls(counter) == 1
    with pytest.raises(FileExistsError, match="A result already exists"):
        run_one(cfg)
    assert calls(counter) == 1
    overwrite = config(module, params={"counter": str(counter)}, output={"overwrite": True})
    run_one(overwrite)
    assert calls(counter) == 2


# ----------------------------------------------------------------------------------- sweeps
# Sweeps run their points on Ray runners (rayjac.runs._scheduler), two at once on the session's Ray.

@pytest.fixture(autouse=True)
def _ray(request):
    if "sweep" in request.node.name:
        request.getfixturevalue("ray_local")


def sweep_config(module, counter, **extra):
    return config(module, params={"counter": str(counter), "fail_at": 3, **extra},
                  output={"path": "sweep"},
                  sweep={"params.n": [2, 3, 4], "execution.chunk_size": [None, 2]})


def read_table(tmp_path):
    return pq.read_table(tmp_path / "sweep" / RUNS_TABLE)


def test_sweep_writes_one_folder_per_point_and_a_typed_runs_table(job, tmp_path):
    module, counter = job
    lines = []
    records = run(sweep_config(module, counter), progress=lines.append)
    assert [r.status for r in records] == ["done"] * 6 and calls(counter) == 6
    table = read_table(tmp_path)
    assert table.schema.names == ["run_id", "params.n", "execution.chunk_size", "status",
                                  "error", "path"]
    assert table.schema.field("params.n").type == pa.int64()
    assert table.schema.field("execution.chunk_size").type == pa.int64()
    rows = table.to_pylist()
    assert rows[1] == {"run_id": "n-2_chunk_size-2", "params.n": 2, "execution.chunk_size": 2,
                       "status": "done", "error": None, "path": "n-2_chunk_size-2"}
    assert rows[0]["execution.chunk_size"] is None
    for row in rows:
        result = load(tmp_path / "sweep" / row["path"])
        assert result.jacobian.shape == (row["params.n"],) * 2
        assert result.metadata["sweep_point"] == {"params.n": row["params.n"],
                                                  "execution.chunk_size":
                                                      row["execution.chunk_size"]}
    # One line per finished run, in the order they end, then the summary.
    assert [line.split(" ")[0] for line in lines[:-1]] == [f"[{k}/6]" for k in range(1, 7)]
    assert sorted(line.split(" ")[1] for line in lines[:-1]) == sorted(
        f"{r['run_id']}:" for r in rows)
    assert all(" done in " in line for line in lines[:-1])
    assert lines[-1].startswith("6 of 6 runs done, 0 failed; table: ")


def test_sweep_records_failures_goes_on_and_resumes(job, tmp_path):
    module, counter = job
    (tmp_path / "fail.flag").write_text("")
    records = run(sweep_config(module, counter))
    assert [r.status for r in records] == ["done", "done", "failed", "failed", "done", "done"]
    unlucky = (r"FactoryError: the job factory \S+:make raised ValueError when called with "
               r"params \{.*\}: n=3 is unlucky\. Fix the factory or the params")
    assert re.match(unlucky, records[2].error)
    assert calls(counter) == 6
    rows = read_table(tmp_path).to_pylist()
    assert [r["status"] for r in rows] == [r.status for r in records]
    assert re.match(unlucky, rows[3]["error"])
    assert not (tmp_path / "sweep" / "n-3_chunk_size-2").exists()

    # Rerun: only the failed runs are computed again (and fail again).
    run(sweep_config(module, counter))
    assert calls(counter) == 8

    # Fixed, and one finished folder deleted: those three are computed, the rest skipped.
    (tmp_path / "fail.flag").unlink()
    import shutil
    shutil.rmtree(tmp_path / "sweep" / "n-4_chunk_size-null")
    records = run(sweep_config(module, counter))
    assert [r.status for r in records] == ["done"] * 6
    assert calls(counter) == 11
    assert [r["status"] for r in read_table(tmp_path).to_pylist()] == ["done"] * 6


def test_runs_table_is_written_after_every_run_sweep(job, tmp_path):
    module, counter = job
    cfg = config(module, params={"counter": str(counter)}, output={"path": "sweep"},
                 execution={"parallel_runs": 1}, sweep={"params.n": [2, 3, 4, 5]})

    def interrupt_after_two(line):
        if line.startswith("[2/4]"):
            raise KeyboardInterrupt  # as Ctrl-C in the driver, between two runs

    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=interrupt_after_two)
    rows = read_table(tmp_path).to_pylist()
    assert [(r["run_id"], r["status"]) for r in rows] == [("n-2", "done"), ("n-3", "done")]
    assert not [p.name for p in (tmp_path / "sweep").iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["n-2", "n-3", "runs.lock",
                                                                    RUNS_TABLE]
    assert calls(counter) == 2


def test_sweep_refuses_to_skip_a_result_from_another_config(job, tmp_path):
    module, counter = job
    run(sweep_config(module, counter))
    changed = sweep_config(module, counter, scale=2.0)
    records = run(changed)
    assert {r.status for r in records} == {"failed"}
    assert "computed from another problem, params, jacfwd or analysis options" in records[0].error
    assert calls(counter) == 6
    overwrite = config(module, params={"counter": str(counter), "scale": 2.0},
                       output={"path": "sweep", "overwrite": True},
                       sweep={"params.n": [2, 3, 4], "execution.chunk_size": [None, 2]})
    assert {r.status for r in run(overwrite)} == {"done"}
    assert calls(counter) == 12


def test_a_rerun_sweep_removes_the_leftovers_of_a_killed_run(job, tmp_path):
    module, counter = job
    cfg = config(module, params={"counter": str(counter)}, output={"path": "sweep"},
                 sweep={"params.n": [2, 3]})
    folder = tmp_path / "sweep"
    folder.mkdir()
    # What a run killed mid-write leaves: its hidden temporary folder (with files), a folder
    # set aside while replacing, and the runs table's temporary file.
    (folder / ".n-2.tmp-0123456789ab").mkdir()
    (folder / ".n-2.tmp-0123456789ab" / "jacobian.arrow").write_bytes(b"half")
    (folder / ".n-3.old-ba9876543210").mkdir()
    (folder / f".{RUNS_TABLE}.tmp-00000000abcd").write_bytes(b"half")
    kept = [".n-2.tmp-user", ".other.tmp-0123456789ab", ".notes"]  # not ours: never deleted
    for name in kept:
        (folder / name).write_text("mine")
    assert [r.status for r in run(cfg)] == ["done", "done"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*kept, "n-2", "n-3", "runs.lock", RUNS_TABLE])
    assert calls(counter) == 2


def test_mixed_type_sweep_values_are_stored_as_json_text(job, tmp_path):
    module, _ = job
    cfg = config(module, output={"path": "sweep"}, sweep={"params.scale": [1, "x", 2.5]})
    records = run(cfg)
    assert [r.status for r in records] == ["done", "failed", "done"]
    table = read_table(tmp_path)
    assert table.schema.field("params.scale").type == pa.string()
    assert table.column("params.scale").to_pylist() == ["1", '"x"', "2.5"]


def test_sweep_keeps_a_result_it_cannot_read_and_redoes_a_partial_one(job, tmp_path):
    module, counter = job
    run(sweep_config(module, counter))
    unreadable = tmp_path / "sweep" / "n-2_chunk_size-null"
    (unreadable / "jacobian.arrow").write_bytes(b"not arrow")  # metadata.json is still there
    partial = tmp_path / "sweep" / "n-3_chunk_size-null"
    (partial / "metadata.json").unlink()  # as a crash mid-copy to an object store leaves it
    records = run(sweep_config(module, counter))
    assert [r.status for r in records] == ["failed", "done", "done", "done", "done", "done"]
    assert "cannot be read" in records[0].error and "it is kept" in records[0].error
    assert (unreadable / "jacobian.arrow").read_bytes() == b"not arrow"
    assert load(partial).jacobian.shape == (3, 3)
    assert calls(counter) == 7


def test_errors_inside_a_job_module_keep_their_type_and_traceback(tmp_path, monkeypatch):
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "def make(n=2):\n    return len(n)  # a bug: TypeError inside the factory\n")
    (tmp_path / f"{name}_imp.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FactoryError, match=rf"{name}:make raised TypeError when called with "
                       r"params \{'n': 3\}: object of type 'int' has no len") as raised:
        load_problem(f"{name}:make", {"n": 3})
    assert isinstance(raised.value.__cause__, TypeError)  # its type and traceback, kept
    assert raised.value.__cause__.__traceback__ is not None
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_problem(f"{name}_imp:make", {})
