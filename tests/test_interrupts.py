"""The command under real signals (rayjac.cli, rayjac.engine._cluster/_watchdog): Ctrl-C (to the
process group, as a terminal sends it), SIGTERM and kill -9 of a sweep's driver on an embedded
Ray, right after Ray starts and with runs in flight. Each ends the command promptly, publishes
no run after the signal, and leaves no process of its Ray behind."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from helpers import job_package, wait_for

JOB = """
import os, pathlib, time
import jax.numpy as jnp
import rayjac

def make(n=3, calls=None, hold=None):
    (pathlib.Path(calls) / f"{n}-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while n > 3 and not os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.05)  # the runs after n=3 wait here until the test lets them go
    return rayjac.Problem(lambda x: jnp.sin(x) * jnp.cumsum(x), args=(jnp.arange(1.0, n + 1),))
"""
BOUND_S = 10  # the README's promise: everything the driver started is gone within this


def _tagged(tag: str) -> list[str]:
    """The command lines of live processes whose environment carries ``tag``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode()[:80])
        except OSError:
            continue
    return found


def _published(folder) -> set[str]:
    return {p for p in os.listdir(folder) if not p.startswith(".")} if os.path.isdir(
        folder) else set()


@pytest.mark.parametrize("moment, signame, to_group, code", [
    ("ray started", "SIGINT", True, 130),
    ("runs in flight", "SIGINT", True, 130),
    ("runs in flight", "SIGTERM", False, 143),
    ("runs in flight", "SIGKILL", False, -9),
])
def test_a_signal_ends_the_sweep_and_its_ray(tmp_path, moment, signame, to_group, code):
    toy = job_package(tmp_path, JOB)
    calls, hold, sweep = tmp_path / "calls", tmp_path / "hold", tmp_path / "sweep"
    calls.mkdir()
    config = {"problem": f"{toy}:make", "name": "toy",
              "params": {"calls": str(calls), "hold": str(hold)},
              "execution": {"parallel_runs": 2},
              "output": {"path": str(sweep)}, "sweep": {"params.n": [3, 4, 5, 6]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYJAC_VERBOSE")}
    env.update(RAYJAC_TEST_TAG=tag, PYTHONPATH=os.pathsep.join([str(tmp_path),
                                                                 env.get("PYTHONPATH", "")]))
    driver = subprocess.Popen([sys.executable, "-m", "rayjac", "run", "sweep.yaml"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if moment == "ray started":
            wait_for(lambda: (sweep / "runs.lock").exists(), "Ray to start and the lock")
        else:
            wait_for(lambda: len(list(calls.iterdir())) >= 3 and "n-3" in _published(sweep),
                     "n=3 done and two runs held in their factories")
        before = _published(sweep)
        signum = getattr(signal, signame)
        start = time.monotonic()
        (os.killpg if to_group else os.kill)(driver.pid, signum)
        _, err = driver.communicate(timeout=BOUND_S)
        assert driver.returncode == code, err[-2000:]
        assert time.monotonic() - start < BOUND_S
        if signame != "SIGKILL":
            assert err.strip().splitlines()[-1] in ("rayjac: interrupted", "rayjac: terminated")
            assert "Traceback" not in err and "Segmentation" not in err
        hold.touch()  # a run that survived would now finish and publish
        wait_for(lambda: not _tagged(tag), "every process of the driver's Ray to end",
                 timeout_s=BOUND_S + 5)
        time.sleep(1)
        assert _published(sweep) == before
    finally:
        hold.touch()
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


FOLLOWER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("watchdog", sys.argv[2])
watchdog = importlib.util.module_from_spec(spec)
spec.loader.exec_module(watchdog)  # the module alone: it imports nothing of rayjac or Ray
watchdog.follow(sys.argv[1])
print("following", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("driver_ends", [True, False])
def test_a_runner_ends_the_moment_its_driver_does(driver_ends):
    """What keeps a sweep's runner from publishing after its driver's kill -9, whatever the
    watchdog's poll: ``follow`` ends the follower at once (well under the watchdog's 0.5 s
    poll); one given a driver that is already gone (a reused PID) ends before it starts."""
    from rayjac.engine import _watchdog

    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ident = _watchdog.identity(driver.pid)
        if not driver_ends:
            ident = ident.split(":")[0] + ":1"  # the same PID, another process's start time
        follower = subprocess.Popen([sys.executable, "-c", FOLLOWER, ident, _watchdog.__file__],
                                    stdout=subprocess.PIPE, text=True)
        if not driver_ends:
            assert follower.wait(timeout=30) == -signal.SIGKILL
            assert follower.stdout.read() == ""
            return
        assert follower.stdout.readline().strip() == "following"
        driver.kill()
        start = time.monotonic()
        assert follower.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - start < 0.3
    finally:
        driver.kill()
        driver.wait()
