"""Spectra in jobs (rayjac.analysis._jobs, rayjac.store._spectra): the analysis section, its
checks before any work, the spectrum and stability files, keep_jacobian, the runs table of a
sweep and its stability diagram, show and plot."""

import os
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pytest

import rayjac
from rayjac.analysis._jobs import Analysis, SinglePoint
from rayjac.cli import main
from rayjac.runs import ConfigError, load_problem, parse_config, run, run_one
from rayjac.store import load, read_stability

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _config(tmp_path, **sections):
    raw = {"problem": "jobs.lorenz96:make", "params": {"n": 12},
           "output": {"path": str(tmp_path / "r")}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw)


def _sorted(lam, system="continuous"):
    key = lam.real if system == "continuous" else np.abs(lam)
    return lam[np.argsort(-key, kind="stable")]


@pytest.mark.parametrize("sparsity", [None, "auto"])
@pytest.mark.parametrize("spectrum, system", [("all", "continuous"), (5, "continuous"),
                                              (3, "discrete")])
def test_single_point_spectrum_matches_numpy(tmp_path, sparsity, spectrum, system):
    config = _config(tmp_path, jacfwd={"sparsity": sparsity},
                     analysis={"spectrum": spectrum, "system": system})
    res = load(run_one(config))
    problem = load_problem(config.problem, config.params)
    dense = np.asarray(jax.jacfwd(problem.func)(*problem.args), np.float64)
    want = _sorted(np.linalg.eigvals(dense), system)
    k = 12 if spectrum == "all" else spectrum
    assert res.spectrum.shape == (k,) and res.spectrum.dtype == np.complex128
    key = (lambda z: z.real) if system == "continuous" else np.abs
    np.testing.assert_allclose(key(res.spectrum), key(want[:k]), rtol=1e-4, atol=1e-4)
    table = res.stability
    assert table.column_names == ["point", "abscissa", "radius", "stable", "unstable"]
    assert table.schema.field("unstable").type == pa.int32()
    assert table.column("point").to_pylist() == [0]
    assert table.column("abscissa")[0].as_py() == pytest.approx(res.spectrum.real.max())
    assert res.jacobian is not None


def test_keep_jacobian_false_stores_only_the_spectrum(tmp_path):
    config = _config(tmp_path, jacfwd={"sparsity": "auto"},
                     analysis={"spectrum": 4, "keep_jacobian": False})
    folder = run_one(config)
    assert sorted(os.listdir(folder)) == ["metadata.json", "spectrum.arrow", "stability.arrow",
                                          "value_aux.arrow"]
    res = load(folder)
    assert res.jacobian is None and res.sparsity is None and res.spectrum.shape == (4,)
    with pytest.raises(ValueError, match="keeps no Jacobian"):
        res.matrix()
    assert read_stability(folder).num_rows == 1


def test_a_non_square_jacobian_is_a_config_error_naming_m_and_n(tmp_path):
    config = _config(tmp_path, jacfwd={"grad_vars": "forcing"}, analysis={"spectrum": "all"})
    with pytest.raises(ConfigError, match=r"the Jacobian is 12 x 1 .* square"):
        run_one(config)
    assert not (tmp_path / "r").exists()


def test_all_of_a_large_sparse_jacobian_is_a_config_error(tmp_path):
    config = _config(tmp_path, params={"n": 5000}, jacfwd={"sparsity": "auto"},
                     analysis={"spectrum": "all"})
    with pytest.raises(ConfigError, match=r"'all' of a sparse 5000 x 5000 .* 4096.* give k"):
        run_one(config)


@pytest.mark.parametrize("raw, words", [
    ({"spectrum": 0}, "analysis.spectrum"), ({"spectrum": "All"}, "analysis.spectrum"),
    ({"system": "flow"}, "analysis.system"), ({"keep": True}, "analysis.keep"),
])
def test_bad_analysis_sections_name_the_key(tmp_path, raw, words):
    with pytest.raises(ConfigError, match=words):
        _config(tmp_path, analysis=raw)


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
@pytest.mark.parametrize("sparsity", [None, "auto"])
def test_map_run_has_one_spectrum_per_point(tmp_path, fmt, sparsity):
    params = {"n": 24, "p_connect": 0.2, "points": 5}
    config = parse_config({"problem": "jobs.rate_network:make", "params": params,
                           "jacfwd": {"grad_vars": "state", "sparsity": sparsity},
                           "execution": {"batch_size": 2},
                           "analysis": {"spectrum": "all"},
                           "output": {"path": str(tmp_path / "m"), "format": fmt}})
    res = load(run_one(config))
    problem = load_problem(config.problem, config.params)
    states = np.asarray(problem.states["state"])
    assert res.points == 5 and res.spectrum.shape == (5, 24)
    jac = rayjac.jacfwd(problem.func, grad_vars=problem.variables["state"])
    for i in (0, 4):
        problem.variables["state"].value = states[i]
        want = _sorted(np.linalg.eigvals(np.asarray(jac(), np.float64)))
        np.testing.assert_allclose(res.spectrum[i].real, want.real, rtol=1e-4, atol=1e-4)
    assert res.stability.column("point").to_pylist() == list(range(5))


def test_stability_sweep_changes_sign_at_gain_one(tmp_path, ray_local):
    gains = [0.8, 0.95, 1.05, 1.2]
    config = parse_config({
        "problem": "jobs.rate_network:make",
        "params": {"n": 64, "p_connect": 0.1, "drive": 0.0, "along_trajectory": False},
        "jacfwd": {"grad_vars": "state", "sparsity": "auto"},
        "analysis": {"spectrum": 3, "keep_jacobian": False},
        "output": {"path": str(tmp_path / "sweep")}, "sweep": {"params.gain": gains}})
    records = run(config)
    assert [r.status for r in records] == ["done"] * 4
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "sweep" / "runs.parquet")
    assert {"abscissa", "radius", "stable"} <= set(table.column_names)
    np.testing.assert_allclose(table.column("abscissa").to_numpy(), np.array(gains) - 1,
                               atol=1e-4)
    assert table.column("stable").to_pylist() == [g < 1 for g in gains]
    picture = tmp_path / "diagram.png"
    assert main(["plot", str(tmp_path / "sweep"), "-o", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(config)[0].stability["stable"] is True  # skipped runs keep their row


def test_show_and_plot_of_a_result_with_a_spectrum(tmp_path, capsys):
    config = _config(tmp_path, analysis={"spectrum": "all"})
    folder = run_one(config)
    assert main(["show", folder]) == 0
    out = capsys.readouterr().out
    assert "spectrum continuous, 12 eigenvalues per point (all); stable at 0 of 1 points" in out
    assert main(["plot", folder, "-o", str(tmp_path / "s.png")]) == 0


def test_single_point_gathers_dense_and_sparse_shards():
    jf = rayjac.jacfwd(lambda x: jax.numpy.roll(x, 1) * x - x, sparsity="auto")
    x = jax.numpy.arange(1.0, 7.0)
    stream = jf.stream((x,))
    single = SinglePoint(stream.layout, stream.plan)
    for shard in stream.shards:
        single.add(shard)
    lam = single.spectra(Analysis(None))
    want = _sorted(np.linalg.eigvals(np.asarray(jax.jacfwd(jf.func)(x), np.float64)))
    np.testing.assert_allclose(lam[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparsity", [None, "auto"])
def test_sharded_map_spectra_are_computed_on_the_workers(tmp_path, ray_local, sparsity):
    problem = load_problem("jobs.rate_network:make", {"n": 16, "p_connect": 0.3, "points": 3})
    state = problem.variables["state"]
    jf = rayjac.jacfwd(problem.func, grad_vars=state, sparsity=sparsity, shards=4)
    analysis = Analysis(5, "continuous", keep_jacobian=False)
    stream = jf.map_stream((), in_axes=None, states={state: problem.states["state"]},
                           analysis=analysis)
    parts = sorted(stream.parts, key=lambda part: part.p0)
    assert [(p.p0, p.p1, p.start) for p in parts] == [(0, 1, 0), (1, 2, 0), (2, 3, 0)]
    assert all(p.values is None and p.spectra.shape == (1, 5) for p in parts)  # only spectra
    local = rayjac.jacfwd(problem.func, grad_vars=state)
    for p in parts:
        state.value = problem.states["state"][p.p0]
        want = _sorted(np.linalg.eigvals(np.asarray(local(), np.float64)))[:5]
        np.testing.assert_allclose(p.spectra[0].real, want.real, rtol=1e-4, atol=1e-4)
    config = parse_config({"problem": "jobs.rate_network:make",
                           "params": {"n": 16, "p_connect": 0.3, "points": 3},
                           "jacfwd": {"grad_vars": "state", "sparsity": sparsity},
                           "execution": {"shards": 4}, "analysis": {"spectrum": 5},
                           "output": {"path": str(tmp_path / "r")}})
    res = load(run_one(config))
    assert res.spectrum.shape == (3, 5) and res.points == 3
