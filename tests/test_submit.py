"""``rayjac submit`` (rayjac.runs._submit): token auth, the shipped working_dir, and a real head node.

The head is the session's ``token_head`` (conftest.py): the README's ``ray start --head --block``
with token auth, on free ports, in its own temp dir and process group, shared with
test_cluster_docs and stopped by Ctrl-C to that group at the session's end, so the session's
own Ray (the ``ray_local`` fixture) is never touched.
"""

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import calls_by_point, job_package, wait_for
from rayjac.cli import main
from rayjac.runs import ConfigError, parse_config
from rayjac.runs import RUNS_TABLE
from rayjac.store import load
from rayjac.runs._submit import _working_dir, auth_headers, submit

REPO = Path(__file__).resolve().parents[1]
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture
def clean_auth(monkeypatch, tmp_path):
    for var in AUTH_VARS + ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_auth_headers_from_the_environment(clean_auth, tmp_path):
    assert auth_headers() == {}
    clean_auth.setenv("RAY_AUTH_TOKEN", " tok1 \n")
    assert auth_headers() == {"Authorization": "Bearer tok1"}
    clean_auth.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}
    clean_auth.delenv("RAY_AUTH_MODE")
    clean_auth.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "token").write_text("tok2\n")
    clean_auth.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert auth_headers() == {"Authorization": "Bearer tok2"}
    clean_auth.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Cannot read the Ray auth token at "
                                         "RAY_AUTH_TOKEN_PATH=.*missing"):
        auth_headers()


def test_default_token_file_is_used_only_in_token_mode(clean_auth, tmp_path):
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text("tok3")
    assert auth_headers() == {}  # never send the local token to a cluster unasked
    clean_auth.setenv("RAY_AUTH_MODE", "token")
    assert auth_headers() == {"Authorization": "Bearer tok3"}
    (tmp_path / "home" / ".ray" / "auth_token").unlink()
    with pytest.raises(ValueError, match="RAY_AUTH_MODE=token but no token was found"):
        auth_headers()


def test_relative_output_path_is_refused(clean_auth):
    cfg = parse_config({"problem": "jobs.lorenz96:make"})
    with pytest.raises(ConfigError, match=r"output.path: 'results/lorenz96' is relative.*"
                                          r"--set output.path=/shared/results/lorenz96.*s3://"):
        submit(cfg, "http://127.0.0.1:1")


def test_no_address_is_a_clear_error(clean_auth, capsys, tmp_path):
    code = main(["submit", str(REPO / "configs" / "quickstart.yaml"),
                 "--set", f"output.path={tmp_path / 'out'}"])
    assert code == 1
    assert "No cluster to submit to: pass --address http://HEAD:8265" in capsys.readouterr().err


def test_working_dir_holds_the_job_package_and_the_resolved_config(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 8},
                        "execution": {"address": "ray://elsewhere:10001"},
                        "output": {"path": "/shared/l96"}})
    with _working_dir(cfg) as folder:
        names = sorted(p.name for p in Path(folder).iterdir())
        assert names == ["config.yaml", "jobs"]
        assert (Path(folder) / "jobs" / "lorenz96.py").exists()
        assert not list(Path(folder).rglob("__pycache__"))
        shipped = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    assert shipped["params"] == {"n": 8} and shipped["output"]["path"] == "/shared/l96"
    assert shipped["execution"]["address"] is None
    assert parse_config(shipped).problem == "jobs.lorenz96:make"
    assert not Path(folder).exists()


# --------------------------------------------------------------------------- a real head node

def _wait_for_dashboard(url, token, proc, log, timeout_s=120):
    request = urllib.request.Request(f"{url}/api/version",
                                     headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(f"the dashboard at {url} did not answer in {timeout_s} s:\n"
                f"{log.read_text()[-3000:]}")


@pytest.fixture
def ray_head(token_head):
    """The session's token-authenticated head (conftest's ``token_head``: the README's head
    block, in its own temp dir and process group on free ports, so the session's own Ray is
    never touched), once its dashboard answers; yields (dashboard URL, token file, GCS
    address)."""
    _wait_for_dashboard(token_head.url, token_head.token.read_text().strip(), token_head.proc,
                        token_head.log)
    return token_head.url, token_head.token, token_head.gcs


@pytest.fixture
def head_env(ray_head, clean_auth):
    url, token, _ = ray_head
    clean_auth.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    clean_auth.chdir(REPO)
    return url


def test_submit_wait_runs_the_job_on_the_cluster(head_env, capsys, tmp_path):
    out_path = tmp_path / "l96"
    code = main(["submit", "configs/quickstart.yaml", "--address", head_env, "--wait",
                 "--set", f"output.path={out_path}", "--set", "execution.shards=null",
                 "--set", "params.n=8"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    job_id = out.split("Submitted job ", 1)[1].split()[0]
    assert job_id.startswith("rayjac-quickstart-")
    for command in ("status", "logs --follow", "stop"):
        assert f"  ray job {command} --address {head_env} {job_id}\n" in out
    assert f"wrote {out_path}" in out  # the job's own output, followed with --wait
    assert f"Job {job_id} finished: SUCCEEDED" in out
    result = load(out_path)
    assert result.jacobian.shape == (8, 8)
    assert result.metadata["config"]["output"]["path"] == str(out_path)


def test_a_failing_job_exits_1(head_env, capsys, tmp_path):
    code = main(["submit", "configs/quickstart.yaml", "--address", head_env, "--wait",
                 "--set", f"output.path={tmp_path / 'bad'}", "--set", "execution.shards=null",
                 "--set", "params.n=2"])
    out, _ = capsys.readouterr()
    assert code == 1
    assert "Lorenz-96 needs n >= 4 sites" in out and "finished: FAILED" in out


def test_without_the_token_the_cluster_refuses(head_env, clean_auth, capsys, tmp_path):
    clean_auth.delenv("RAY_AUTH_TOKEN_PATH")
    clean_auth.setenv("RAY_AUTH_MODE", "disabled")
    code = main(["submit", "configs/quickstart.yaml", "--address", head_env,
                 "--set", f"output.path={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("rayjac submit: error: ") and "Traceback" not in err
    assert "uses token authentication and requires a token, and none was sent" in err
    assert "ray get-auth-token" in err and "RAY_AUTH_MODE is currently" not in err


def test_a_wrong_token_is_explained_in_rayjac_words(head_env, clean_auth, capsys, tmp_path):
    (tmp_path / "wrong").write_text("not-the-token")
    clean_auth.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "wrong"))
    code = main(["submit", "configs/quickstart.yaml", "--address", head_env,
                 "--set", f"output.path={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert code == 1 and "refused the token rayjac sent" in err


# ------------------------------------------------------------------- sweeps on the head node

JOB = """
import os, pathlib, time, uuid
import jax.numpy as jnp
import rayjac

def make(n=3, calls=None, wait_for=None, block=()):
    pathlib.Path(calls).mkdir(exist_ok=True)
    (pathlib.Path(calls) / f"{n}-{os.getpid()}-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + 120
    while (wait_for and (n in block or not block) and not os.path.exists(wait_for)
           and time.monotonic() < deadline):
        time.sleep(0.05)
    w = rayjac.Variable(jnp.linspace(0.5, 1.5, n))
    return rayjac.Problem(lambda x: jnp.sin(w.value * x) * jnp.cumsum(x),
                          args=(jnp.arange(1.0, n + 1.0),), variables={"w": w})
"""


@pytest.fixture
def sweep_job(tmp_path, monkeypatch):
    """A job package in tmp_path (the cwd), and a sweep config writer for it."""
    toy = job_package(tmp_path, JOB)
    monkeypatch.chdir(tmp_path)

    def config(grid, **params):
        raw = {"problem": f"{toy}:make", "name": "toy",
               "params": {"calls": str(tmp_path / "calls"), **params},
               "output": {"path": str(tmp_path / "sweep")}, "sweep": grid}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return str(tmp_path / "sweep.yaml")

    return config


def _rows(tmp_path):
    return pq.read_table(tmp_path / "sweep" / RUNS_TABLE).to_pylist()


def _driver(ray_head, config, log):
    """``rayjac run CONFIG --address GCS`` in a subprocess that joins the head node."""
    _, token, gcs = ray_head
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS + (
        "RAY_ADDRESS", "RAYJAC_QUIET")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    return subprocess.Popen([sys.executable, "-m", "rayjac", "run", config, "--address", gcs],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def test_submit_a_sweep_runs_its_points_on_the_cluster(head_env, sweep_job, capsys, tmp_path):
    config = sweep_job({"params.n": [3, 4], "execution.shards": [None, 2]})
    code = main(["submit", config, "--address", head_env, "--wait"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "4 of 4 runs done, 0 failed; table: " in out  # the job's log, not a terminal
    assert sum(line.startswith("[") and ": done in " in line for line in out.splitlines()) == 4
    assert [r["status"] for r in _rows(tmp_path)] == ["done"] * 4
    assert {n: len(pids) for n, pids in calls_by_point(tmp_path / "calls").items()} == {3: 2, 4: 2}
    for n in (3, 4):
        local, sharded = (load(tmp_path / "sweep" / f"n-{n}_shards-{s}").jacobian
                          for s in ("null", "2"))
        assert local.shape == (n, n)
        np.testing.assert_allclose(sharded, local, rtol=1e-6, atol=1e-7)


def test_two_runs_of_one_sweep_folder_never_compute_a_point_twice(ray_head, sweep_job,
                                                                  tmp_path):
    go = tmp_path / "go"
    config = sweep_job({"params.n": [3, 4, 5, 6]}, wait_for=str(go))
    logs = [open(tmp_path / f"driver{i}.log", "w+") for i in range(2)]
    drivers = [_driver(ray_head, config, log) for log in logs]
    try:
        wait_for(lambda: any("is in use by another `rayjac run`" in (tmp_path / f"driver{i}.log")
                          .read_text() for i in range(2)), "the second driver to wait")
        go.touch()  # the first driver's runs were held until the second one waited
        codes = [driver.wait(timeout=300) for driver in drivers]
    finally:
        for driver in drivers:
            driver.kill()
    texts = [(tmp_path / f"driver{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], texts
    counts = {n: len(pids) for n, pids in calls_by_point(tmp_path / "calls").items()}
    assert counts == {3: 1, 4: 1, 5: 1, 6: 1}
    rows = _rows(tmp_path)
    assert [(r["run_id"], r["status"]) for r in rows] == [(f"n-{n}", "done") for n in (3, 4, 5, 6)]
    assert sum(text.count("done already, skipped") for text in texts) == 4


def test_a_driver_killed_mid_sweep_loses_nothing_finished(ray_head, sweep_job, tmp_path):
    go = tmp_path / "go"
    config = sweep_job({"params.n": [3, 4, 5, 6]}, wait_for=str(go), block=[5, 6])
    with open(tmp_path / "killed.log", "w") as log:
        driver = _driver(ray_head, config, log)
        try:
            wait_for(lambda: (tmp_path / "sweep" / RUNS_TABLE).exists()
                     and len(_rows(tmp_path)) == 2
                     and set(calls_by_point(tmp_path / "calls")) == {3, 4, 5, 6},
                     "two runs done, two running")
        finally:
            driver.kill()  # kill -9, while the runs of n=5 and n=6 are in their factories
            driver.wait()
    assert [(r["run_id"], r["status"]) for r in _rows(tmp_path)] == [("n-3", "done"),
                                                                     ("n-4", "done")]
    zombies = {pid for n in (5, 6) for pid in calls_by_point(tmp_path / "calls")[n]}
    wait_for(lambda: not any(_alive(pid) for pid in zombies), "Ray to stop the dead driver's runs")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()
                  if not p.name.startswith(".")) == ["n-3", "n-4", "runs.lock", RUNS_TABLE]
    go.touch()
    with open(tmp_path / "rerun.log", "w") as log:
        assert _driver(ray_head, config, log).wait(timeout=300) == 0
    counts = {n: len(pids) for n, pids in calls_by_point(tmp_path / "calls").items()}
    assert counts == {3: 1, 4: 1, 5: 2, 6: 2}
    assert [r["status"] for r in _rows(tmp_path)] == ["done"] * 4
    for name in ("n-3", "n-4", "n-5", "n-6"):
        assert load(tmp_path / "sweep" / name).jacobian.shape == (int(name[2:]),) * 2
    assert not [p.name for p in (tmp_path / "sweep").iterdir() if p.name.startswith(".")]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
