"""The README's step-by-step for a token-authenticated Ray head on this machine, run as written:
the head's block in a process group of its own (its terminal), the client's block with bash,
then Ctrl-C to the head's group. Only the ports and the temp dir are replaced (by free ones),
and HOME is a fresh folder, so the token is this test's own. Another Ray runs on the machine
meanwhile (the session's, in Ray's default temp dir), as in "Several clusters on one machine".
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

import helpers
import rayjac
from helpers import wait_for
from rayjac.runs import load_problem
from test_submit import _free_ports  # TODO: move to helpers.py with the rest of ray_head's kit

REPO = Path(__file__).resolve().parents[1]
MARKER = "head recipe:"
PORTS = ("6390", "8275", "10000", "8375")  # --port, --dashboard-port, client server, agent
TEMP_DIR = "/tmp/ray-a"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
             "RAY_API_SERVER_ADDRESS")


def _readme_bash_blocks(marker: str, count: int) -> list[str]:
    """The first ``count`` ```bash blocks after ``<!-- {marker}`` in the README."""
    with open(helpers.README) as f:
        section = f.read().split(f"<!-- {marker}")[1]
    return [part.split("```")[0] for part in section.split("```bash")[1:count + 1]]


def _with_free_ports(block: str, ports: list[int], temp_dir: str) -> str:
    for documented, port in zip(PORTS, ports):
        block = block.replace(f"={documented}", f"={port}").replace(f":{documented}",
                                                                    f":{port}")
    return block.replace(TEMP_DIR, temp_dir)


def _live_members(pgid: int) -> list[str]:
    """The processes of a process group that have not exited (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        state, _, group = rest.split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(f"{stat.parent.name} {comm.split('(', 1)[1]}")
    return members


@pytest.fixture
def user(tmp_path):
    """A user's shell: a fresh HOME, no Ray auth or address variables, the interpreter's
    scripts (``ray``, ``rayjac``) first on PATH, and a folder holding ``jobs/`` and
    ``configs/`` like a checkout."""
    bin_dir = os.path.dirname(sys.executable)
    for command in ("ray", "rayjac"):
        if not os.path.exists(os.path.join(bin_dir, command)):
            pytest.fail(f"`{command}` is not installed next to {sys.executable}: "
                        "pip install -e '.[test]'")
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS + ("PYTHONPATH",)}
    env.update(HOME=str(tmp_path / "home"), PATH=bin_dir + os.pathsep + env["PATH"])
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    shutil.copytree(REPO / "jobs", work / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "configs").mkdir()
    shutil.copy(REPO / "configs" / "quickstart.yaml", work / "configs")
    return env, work


def test_the_token_head_step_by_step(ray_local, user, monkeypatch):
    env, work = user
    monkeypatch.chdir(REPO)  # this process imports jobs.lorenz96 for the oracle
    head_block, client_block = _readme_bash_blocks(MARKER, 2)
    for literal in [f"={port}" for port in PORTS] + [f"--temp-dir={TEMP_DIR}"]:
        assert literal in head_block, f"the README's head block has no {literal}"
    assert f"--address http://127.0.0.1:{PORTS[1]}" in client_block
    root = tempfile.mkdtemp(prefix="rjd", dir="/tmp")  # short: Ray's socket paths
    ports = _free_ports(len(PORTS))
    temp_dir = f"{root}/ray"
    log = Path(root) / "head.log"
    with open(log, "wb") as out:  # the head's terminal: Ctrl-C goes to its process group
        head = subprocess.Popen(["bash", "-e", "-c", _with_free_ports(head_block, ports,
                                                                      temp_dir)],
                                env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def started():
            if head.poll() is not None:
                pytest.fail(f"the head exited with {head.returncode}:\n{log.read_text()[-3000:]}")
            return "Ray runtime started." in log.read_text(errors="replace")

        wait_for(started, "the head to print `Ray runtime started.`", timeout_s=120)
        client = subprocess.run(["bash", "-e", "-c", _with_free_ports(client_block, ports,
                                                                      temp_dir)],
                                env=env, cwd=work, capture_output=True, text=True, timeout=300)
        assert client.returncode == 0, client.stdout[-3000:] + client.stderr[-3000:]
        assert "finished: SUCCEEDED" in client.stdout
        assert "result   results/quickstart\n" in client.stdout  # rayjac show
        assert re.search(r"jacobian arg 0 +float32 +\(16, 16\)", client.stdout)
        problem = load_problem("jobs.lorenz96:make", {"n": 16, "forcing": 8.0})
        np.testing.assert_allclose(rayjac.load(work / "results" / "quickstart").jacobian,
                                   jax.jacfwd(problem.func)(*problem.args), rtol=1e-6,
                                   atol=1e-6)
        # the job ran under this head's temp dir, with this head's address (not the other Ray's)
        session_logs = Path(temp_dir) / "session_latest" / "logs"
        assert list(session_logs.glob("job-driver-rayjac-quickstart-*.log"))
        assert (Path(temp_dir) / "ray_current_cluster").read_text().strip().endswith(
            f":{ports[0]}")

        os.killpg(head.pid, signal.SIGINT)  # Ctrl-C in the head's terminal
        head.wait(timeout=30)
        wait_for(lambda: not _live_members(head.pid), "Ctrl-C to stop the head's processes",
                 timeout_s=30)
    finally:
        if _live_members(head.pid):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(root, ignore_errors=True)
