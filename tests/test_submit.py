"""``rayjac submit`` (rayjac._submit): token auth, the shipped working_dir, and a real head node.

The head is a ``ray start --head --block`` subprocess of this test module on loopback ports, in
its own temp dir and process group, with token auth; it is stopped by killing that group, so
the session's own Ray (the ``ray_local`` fixture) is never touched.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from rayjac._cli import main
from rayjac._config import ConfigError, parse_config
from rayjac._storage import load
from rayjac._submit import _working_dir, auth_headers, submit

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

def _free_ports(count):
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


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


@pytest.fixture(scope="module")
def ray_head():
    """A token-authenticated head node on loopback ports; yields (dashboard URL, token file)."""
    root = Path(tempfile.mkdtemp(prefix="rjh", dir="/tmp"))  # short: Ray's socket paths
    token = root / "token"
    token.write_text(uuid.uuid4().hex)
    ports = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS + ("RAY_ADDRESS",)}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    ray = shutil.which("ray") or pytest.skip("the `ray` command is not on PATH")
    command = [ray, "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2",
               f"--temp-dir={root / 'ray'}", "--include-dashboard=true"]
    flags = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
             "node-manager-port", "object-manager-port")
    command += [f"--{flag}={port}" for flag, port in zip(flags, ports)]
    log = root / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{ports[1]}"
    try:
        _wait_for_dashboard(url, token.read_text(), proc, log)
        yield url, token
    finally:
        _stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop_group(proc):
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
            return


@pytest.fixture
def head_env(ray_head, clean_auth):
    url, token = ray_head
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
    assert "uthentication" in err
