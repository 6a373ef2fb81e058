"""Results on an object store (``output.path: s3://...``): runs (Python API and CLI), load, show,
plot, overwrite, sparse and many-point results, and a sweep that resumes, against a real
S3-protocol server.

The server is ``moto_server`` (``pip install 'moto[server]>=5.2.2'``; 5.2.0-5.2.1 answer a
multipart upload in a way that pyarrow rejects, getmoto/moto#10055), started by this module on
loopback and stopped at its end. pyarrow finds it through ``AWS_ENDPOINT_URL``. A sweep's runs
are written by Ray actors, which inherit the environment of the process that starts Ray, so the
variables are set when this module is imported (collection comes before any fixture starts
Ray), as conftest.py sets ``PYTHONPATH``; the server's port is chosen then, from a range that
neither the kernel's ephemeral ports nor Ray's worker ports use.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import rayjac
from helpers import wait_for
from rayjac.cli import main
from rayjac.runs import RUNS_TABLE, load_problem, run

_MISSING = [name for name in ("moto", "flask", "boto3") if not importlib.util.find_spec(name)]
# found, not imported (importing moto takes a second); the test extra installs them
assert not _MISSING, f"the S3 tests need {_MISSING}: pip install -e '.[test]'"

REPO = Path(__file__).resolve().parents[1]
BUCKET = "rayjac-test"
LEFTOVER = re.compile(r"/\.[^/]+\.(tmp|old)-[0-9a-f]{12}(/|$)")  # what publishing writes aside


def _loopback_port() -> int:
    """A free port in 20000-32767: below the kernel's ephemeral ports (32768-60999), above
    Ray's worker ports (10002-19999), so nothing started later takes it by chance."""
    for port in random.sample(range(20000, 32768), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000-32767 for moto_server")


ENDPOINT = f"http://127.0.0.1:{_loopback_port()}"
os.environ.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="rayjac-test",
                  AWS_SECRET_ACCESS_KEY="rayjac-test", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)


# ---------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback holding the bucket ``BUCKET``; yields a boto3 client."""
    import boto3

    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    port = ENDPOINT.rsplit(":", 1)[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", port], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: _answers(proc, log), f"moto_server at {ENDPOINT}", timeout_s=30)
        client = boto3.client("s3", endpoint_url=ENDPOINT)
        client.create_bucket(Bucket=BUCKET)
        _check_pyarrow_writes(log)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _answers(proc, log) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"moto_server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
    try:
        with urllib.request.urlopen(ENDPOINT, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _s3fs() -> pafs.FileSystem:
    """pyarrow's S3 file system as rayjac gets it (``from_uri`` honours AWS_ENDPOINT_URL)."""
    return pafs.FileSystem.from_uri(f"s3://{BUCKET}")[0]


def _check_pyarrow_writes(log) -> None:
    fs = _s3fs()
    try:
        with fs.open_output_stream(f"{BUCKET}/probe") as sink:
            sink.write(b"probe")
    except OSError as err:
        hint = ("; moto 5.2.0-5.2.1 answer CompleteMultipartUpload with the wrong XML root "
                "(getmoto/moto#10055): pip install 'moto[server]>=5.2.2'"
                if "CompleteMultipartUpload" in str(err) else "")
        pytest.fail(f"pyarrow cannot write to moto_server at {ENDPOINT}: {err}{hint}")
    fs.delete_file(f"{BUCKET}/probe")


@pytest.fixture
def where(s3, monkeypatch):
    """A fresh prefix of the bucket for one test, as ``(s3 URI, key prefix)``; the working
    directory is the repository, so ``jobs.*`` and ``configs/`` resolve as for a user."""
    monkeypatch.chdir(REPO)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return f"s3://{BUCKET}/{prefix}", prefix


def _keys(s3, prefix: str) -> list[str]:
    """Every object under ``prefix`` except the empty folder markers pyarrow creates."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(obj["Key"][len(prefix) + 1:] for page in pages
                  for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))


def _etags(s3, prefix: str) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return {obj["Key"]: obj["ETag"] + str(obj["LastModified"]) for page in pages
            for obj in page.get("Contents", [])}


def _delete(s3, prefix: str) -> None:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for page in pages:
        objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if objects:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": objects})


def _assert_no_leftovers(s3, prefix: str) -> None:
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix + "/") for obj in page.get("Contents", [])]
    assert not [key for key in keys if LEFTOVER.search("/" + key)], keys


RUN_FILES = {"arrow": ["jacobian.arrow", "metadata.json", "value_aux.arrow"],
             "parquet": ["jacobian.parquet", "metadata.json", "value_aux.parquet"]}


# ------------------------------------------------------------------------------------ oracles

def _lorenz96(**params):
    """``(J, value)`` of ``jobs.lorenz96`` by ``jax.jacfwd`` with respect to its state."""
    problem = load_problem("jobs.lorenz96:make", params)
    return jax.jacfwd(problem.func)(*problem.args), problem.func(*problem.args)


def _jacfwd_of_variable_at(problem, name: str, point) -> jax.Array:
    """``jax.jacfwd`` of ``problem.func()`` with respect to its Variable ``name`` at ``point``."""
    var = problem.variables[name]

    def pure(value):
        old = var.value
        var.value = value
        try:
            return problem.func()
        finally:
            var.value = old

    return jax.jacfwd(pure)(jnp.asarray(point))


# -------------------------------------------------------------------------------- single runs

def test_python_run_then_load_show_and_plot_a_uri(ray_local, where, s3, capsys, tmp_path):
    uri, prefix = where
    records = run("configs/quickstart.yaml", [f"output.path={uri}/q", "params.n=12",
                                              "output.overwrite=false"])  # shards: 2
    assert [(r.status, r.path) for r in records] == [("done", f"{uri}/q")]
    assert _keys(s3, prefix) == [f"q/{name}" for name in RUN_FILES["arrow"]]

    result = rayjac.load(f"{uri}/q")
    jac, value = _lorenz96(n=12, forcing=8.0)
    np.testing.assert_allclose(result.jacobian, jac, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.value, value, rtol=1e-6)
    assert result.metadata["config"]["output"]["path"] == f"{uri}/q"

    assert main(["show", f"{uri}/q"]) == 0
    out = capsys.readouterr().out
    assert f"result   {uri}/q" in out
    assert re.search(r"jacobian arg 0 +float32 +\(12, 12\)", out), out
    assert main(["plot", f"{uri}/q", "-o", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    _assert_no_leftovers(s3, prefix)


def test_cli_run_parquet_to_a_uri(where, s3, capsys):
    uri, prefix = where
    code = main(["run", "configs/lorenz96.yaml", "--set", f"output.path={uri}/l96",
                 "--set", "output.format=parquet", "--set", "params.n=10",
                 "--set", "execution.shards=null", "--set", "jacfwd.grad_vars=null"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"wrote {uri}/l96\n"
    assert _keys(s3, prefix) == [f"l96/{name}" for name in RUN_FILES["parquet"]]
    jac, _ = _lorenz96(n=10, forcing=8.0)
    np.testing.assert_allclose(rayjac.load(f"{uri}/l96").jacobian, jac, rtol=1e-6, atol=1e-6)
    _assert_no_leftovers(s3, prefix)


def test_overwrite_false_refuses_and_true_replaces(where, s3, capsys):
    uri, prefix = where
    base = ["configs/quickstart.yaml", "--set", f"output.path={uri}/o", "--set",
            "execution.shards=null", "--set", "params.n=6"]
    assert main(["run", *base, "--set", "output.overwrite=false"]) == 0
    before = _etags(s3, prefix)

    code = main(["run", *base, "--set", "output.overwrite=false", "--set", "params.forcing=3.0"])
    assert code == 1
    assert (f"rayjac run: error: A result already exists at {uri}/o. Pass overwrite=True"
            in capsys.readouterr().err)
    assert _etags(s3, prefix) == before  # untouched
    with pytest.raises(FileExistsError, match="A result already exists at s3://"):
        run("configs/quickstart.yaml", [f"output.path={uri}/o", "execution.shards=null",
                                        "params.n=6", "output.overwrite=false"])

    assert main(["run", *base, "--set", "output.overwrite=true", "--set",
                 "params.forcing=3.0"]) == 0
    result = rayjac.load(f"{uri}/o")
    assert result.metadata["config"]["params"]["forcing"] == 3.0
    np.testing.assert_allclose(result.value, _lorenz96(n=6, forcing=3.0)[1], rtol=1e-6)
    assert _keys(s3, prefix) == [f"o/{name}" for name in RUN_FILES["arrow"]]
    _assert_no_leftovers(s3, prefix)


def test_foreign_objects_are_never_replaced_and_a_partial_copy_is(where, s3, capsys):
    uri, prefix = where
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/mine/notes.txt", Body=b"not rayjac's")
    base = ["run", "configs/quickstart.yaml", "--set", "execution.shards=null",
            "--set", "params.n=5", "--set", "output.overwrite=true"]
    assert main([*base, "--set", f"output.path={uri}/mine"]) == 1
    assert "is not a rayjac result; rayjac never replaces it" in capsys.readouterr().err
    assert _keys(s3, prefix) == ["mine/notes.txt"]

    # a copy interrupted before metadata.json (written last) is no result, and is replaced
    assert main([*base, "--set", f"output.path={uri}/cut"]) == 0
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/cut/metadata.json")
    with pytest.raises(rayjac.store.ResultError, match="is not a complete rayjac result: it "
                                                       "has no metadata.json"):
        rayjac.load(f"{uri}/cut")
    assert main([*base[:-1], "output.overwrite=false", "--set", f"output.path={uri}/cut"]) == 0
    assert rayjac.load(f"{uri}/cut").jacobian.shape == (5, 5)
    assert _keys(s3, prefix) == ["cut/" + name for name in RUN_FILES["arrow"]] + ["mine/notes.txt"]
    _assert_no_leftovers(s3, prefix)


def test_sparse_result_on_a_uri_and_its_pattern_reused(where, s3, capsys, tmp_path):
    uri, prefix = where
    common = ["configs/lorenz96_sparse.yaml", "--set", "params.n=20",
              "--set", "jacfwd.grad_vars=null"]  # in process
    assert main(["run", *common, "--set", f"output.path={uri}/sp"]) == 0
    assert main(["run", *common, "--set", f"output.path={uri}/again",
                 "--set", f"jacfwd.sparsity={uri}/sp"]) == 0
    capsys.readouterr()
    jac, _ = _lorenz96(n=20, forcing=8.0)
    for name in ("sp", "again"):
        result = rayjac.load(f"{uri}/{name}")
        assert result.sparsity is not None and result.sparsity.nnz == 4 * 20
        np.testing.assert_allclose(result.jacobian.todense(), jac, rtol=1e-6, atol=1e-6)
    assert "read_s" in rayjac.load(f"{uri}/again").metadata["sparsity"]["times"]
    assert _keys(s3, prefix + "/sp") == ["colors.arrow", "jacobian.arrow", "metadata.json",
                                         "value_aux.arrow"]
    assert main(["show", f"{uri}/sp"]) == 0
    assert re.search(r"sparsity \(20, 20\) +nnz 80", capsys.readouterr().out)
    assert main(["plot", f"{uri}/sp", "-o", str(tmp_path / "sp.png")]) == 0
    _assert_no_leftovers(s3, prefix)


def test_map_result_on_a_uri(ray_local, where, s3, capsys):
    uri, prefix = where
    assert main(["run", "configs/rate_network_map.yaml", "--set", f"output.path={uri}/map",
                 "--set", "params.n=32", "--set", "params.points=4",
                 "--set", "execution.batch_size=2"]) == 0  # shards: 2
    result = rayjac.load(f"{uri}/map")
    assert result.points == 4 and result.jacobian.shape == (4, 32, 32)
    problem = load_problem("jobs.rate_network:make", result.metadata["config"]["params"])
    dense = np.asarray(result.jacobian.todense())
    for i, state in enumerate(problem.states["state"]):
        expected = _jacfwd_of_variable_at(problem, "state", state)
        np.testing.assert_allclose(dense[i], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.matrix(point=i).toarray(), expected, rtol=1e-5,
                                   atol=1e-6)
    assert main(["show", f"{uri}/map"]) == 0
    assert "points   4" in capsys.readouterr().out
    _assert_no_leftovers(s3, prefix)


# ------------------------------------------------------------------------------------- sweeps

@pytest.fixture(scope="module")
def sweep(s3, ray_local):
    """A two-run sweep of Lorenz-96 (in-process runs on the session's Ray) in the bucket:
    ``(uri, key prefix, records, progress lines)``."""
    prefix = f"sweep-{uuid.uuid4().hex[:8]}/l96"
    uri = f"s3://{BUCKET}/{prefix}"
    lines: list[str] = []
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        records = run(_sweep_config(uri), progress=lines.append)
    finally:
        os.chdir(cwd)
    return uri, prefix, records, lines


def _sweep_config(uri):
    from rayjac.runs import load_config

    return load_config(REPO / "configs" / "lorenz96_sweep.yaml", [
        f"output.path={uri}", "execution.shards=null", "sweep={params.n: [6, 9]}"])


def test_a_sweep_writes_its_runs_and_table_to_a_uri(sweep, s3):
    uri, prefix, records, lines = sweep
    assert [(r.run_id, r.status, r.path) for r in records] == [("n-6", "done", "n-6"),
                                                                ("n-9", "done", "n-9")]
    assert lines[-1] == f"2 of 2 runs done, 0 failed; table: {uri}/{RUNS_TABLE}"
    table = pq.read_table(f"{uri.removeprefix('s3://')}/{RUNS_TABLE}",
                          filesystem=_s3fs()).to_pylist()
    assert [(row["run_id"], row["params.n"], row["status"]) for row in table] == [
        ("n-6", 6, "done"), ("n-9", 9, "done")]
    for n in (6, 9):
        jac, _ = _lorenz96(n=n, forcing=8.0)
        np.testing.assert_allclose(rayjac.load(f"{uri}/n-{n}").jacobian, jac, rtol=1e-6,
                                   atol=1e-6)
    assert set(_keys(s3, prefix)) >= {RUNS_TABLE, "n-6/metadata.json", "n-9/metadata.json"}
    _assert_no_leftovers(s3, prefix)


def test_show_of_a_sweep_uri_lists_its_runs(sweep, capsys):
    uri = sweep[0]
    code = main(["show", uri])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["run_id", "params.n", "status"]
    assert [row[:3] for row in rows[1:]] == [["n-6", "6", "done"], ["n-9", "9", "done"]]


def test_rerunning_a_sweep_on_a_uri_skips_done_runs_and_redoes_a_deleted_one(sweep, s3,
                                                                            monkeypatch):
    uri, prefix, _, _ = sweep
    monkeypatch.chdir(REPO)
    kept = _etags(s3, f"{prefix}/n-6")
    _delete(s3, f"{prefix}/n-9/")
    lines: list[str] = []
    records = run(_sweep_config(uri), progress=lines.append)
    assert [(r.run_id, r.status) for r in records] == [("n-6", "done"), ("n-9", "done")]
    assert "[1/2] n-6: done already, skipped" in lines
    assert any(re.fullmatch(r"\[2/2\] n-9: done in [\d.]+ s", line) for line in lines), lines
    assert _etags(s3, f"{prefix}/n-6") == kept  # not rewritten
    jac, _ = _lorenz96(n=9, forcing=8.0)
    np.testing.assert_allclose(rayjac.load(f"{uri}/n-9").jacobian, jac, rtol=1e-6, atol=1e-6)
    _assert_no_leftovers(s3, prefix)
