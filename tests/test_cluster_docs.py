"""The README's step-by-step for a token-authenticated Ray head on this machine, run as written:
the head's block in a process group of its own (its terminal; the session's ``token_head``
fixture, which test_submit shares), the client's block with bash, and at the session's end
Ctrl-C to the head's group (the fixture's teardown fails unless every process of it ends).
Only the ports and the temp dir are replaced (by free ones), and HOME is a fresh folder, so the
token is this session's own. Another Ray runs on the machine meanwhile (the session's, in Ray's
default temp dir), as in "Several clusters on one machine".
"""

import re
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np

import rayjac
from helpers import HEAD_MARKER, HEAD_PORTS, readme_bash_blocks
from rayjac.runs import load_problem

REPO = Path(__file__).resolve().parents[1]


def test_the_token_head_step_by_step(token_head, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # this process imports jobs.lorenz96 for the oracle
    client_block = readme_bash_blocks(HEAD_MARKER, 2)[1]
    assert f"--address http://127.0.0.1:{HEAD_PORTS[1]}" in client_block
    work = tmp_path / "work"  # a folder holding jobs/ and configs/, like a checkout
    shutil.copytree(REPO / "jobs", work / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "configs").mkdir()
    shutil.copy(REPO / "configs" / "quickstart.yaml", work / "configs")
    client = subprocess.run(["bash", "-e", "-c", token_head.with_free_ports(client_block)],
                            env=token_head.env, cwd=work, capture_output=True, text=True,
                            timeout=300)
    assert client.returncode == 0, client.stdout[-3000:] + client.stderr[-3000:]
    assert "finished: SUCCEEDED" in client.stdout
    assert "result   results/quickstart\n" in client.stdout  # rayjac show
    assert re.search(r"jacobian arg 0 +float32 +\(16, 16\)", client.stdout)
    problem = load_problem("jobs.lorenz96:make", {"n": 16, "forcing": 8.0})
    np.testing.assert_allclose(rayjac.load(work / "results" / "quickstart").jacobian,
                               jax.jacfwd(problem.func)(*problem.args), rtol=1e-6, atol=1e-6)
    # the job ran under this head's temp dir, with this head's address (not the other Ray's)
    session_logs = token_head.temp_dir / "session_latest" / "logs"
    assert list(session_logs.glob("job-driver-rayjac-quickstart-*.log"))
    assert (token_head.temp_dir / "ray_current_cluster").read_text().strip().endswith(
        f":{token_head.ports[0]}")
