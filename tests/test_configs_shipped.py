"""Every shipped config in configs/ validates, builds its problem, and runs end to end."""

from pathlib import Path

import jax
import numpy as np
import pytest

from rayjac.runs import load_config
from rayjac.runs import expand_sweep
from rayjac.runs import load_problem, run
from rayjac.store import load

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Keeps the sweeps' grids and the big networks small; every other shipped config runs as it is.
SMALL = {"lorenz96_sweep.yaml": ["sweep.params.n=[8, 12]"],
         "lorenz96_sparse.yaml": ["params.n=64"], "gray_scott_sparse.yaml": ["params.n=12"],
         "wilson_cowan_sparse.yaml": ["params.n_exc=80", "params.n_inh=20"],
         "rate_network_map.yaml": ["params.n=64", "params.p_connect=0.1", "params.points=6",
                                   "execution.batch_size=4"],
         "rate_network_stability.yaml": ["params.n=64", "params.p_connect=0.1",
                                         "sweep.params.gain=[0.9, 1.1]"]}


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_the_shipped_configs_are_there():
    names = {path.stem for path in CONFIGS}
    assert {"quickstart", "lorenz96", "hodgkin_huxley", "mlp", "gray_scott", "lorenz96_sparse",
            "gray_scott_sparse"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_its_problem_builds(path, in_repo):
    config = load_config(path)
    assert config.name == path.stem
    assert config.output.path == f"results/{config.name}"
    for _, _, run_config in expand_sweep(config):
        problem = load_problem(run_config.problem, run_config.params)
        names = run_config.jacfwd.grad_vars
        names = [names] if isinstance(names, str) else names or []
        assert set(names) <= set(problem.variables)
        argnums = run_config.jacfwd.argnums
        for index in [argnums] if isinstance(argnums, int) else argnums or []:
            assert index < len(problem.args)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_runs_in_process(path, in_repo, tmp_path):
    overrides = [f"output.path={tmp_path / 'out'}", "execution.shards=null",
                 *SMALL.get(path.name, [])]
    config = load_config(path, overrides)
    records = run(config)
    assert {record.status for record in records} == {"done"}
    for _, _, run_config in expand_sweep(config):
        result = load(run_config.output.path)
        problem = load_problem(run_config.problem, run_config.params)
        kept = run_config.analysis.keep_jacobian
        assert (result.spectrum is not None) == (run_config.analysis.spectrum is not None)
        assert (result.jacobian is not None) == kept
        assert (result.sparsity is not None) == (run_config.jacfwd.sparsity is not None and kept)
        assert result.points == (len(next(iter(problem.states.values())))
                                 if problem.states else None)
        out = jax.eval_shape(problem.func, *problem.args) if not problem.is_map else None
        for leaf in jax.tree_util.tree_leaves(result.jacobian, is_leaf=_is_bcoo):
            if out is not None:
                assert leaf.shape[:out.ndim] == out.shape
            assert np.all(np.isfinite(leaf.data if _is_bcoo(leaf) else leaf))


def _is_bcoo(x):
    from jax.experimental import sparse

    return isinstance(x, sparse.BCOO)


def test_quickstart_runs_on_ray_and_matches_jax(ray_local, in_repo, tmp_path):
    config = load_config(REPO / "configs" / "quickstart.yaml",
                         [f"output.path={tmp_path / 'qs'}"])
    assert config.execution.shards == 2
    (record,) = run(config)
    result = load(record.path)
    problem = load_problem(config.problem, config.params)
    np.testing.assert_allclose(result.jacobian, jax.jacfwd(problem.func)(*problem.args),
                               rtol=1e-6)
    np.testing.assert_allclose(result.value, problem.func(*problem.args), rtol=1e-6)
