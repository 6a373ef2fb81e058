"""Joining or starting a Ray cluster, the resources a worker asks for, and which failures count
as a lost worker (retried) rather than a failing function."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError

from . import _watchdog

MAX_RETRIES = 3
ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
LOST = ACTOR_LOST + (ObjectLostError,)  # a finished shard whose node died before the fetch

_EMBEDDED: dict[str, str] = {}  # "driver": this process's identity, once it started a Ray


def embedded_driver() -> str | None:
    """``"PID:START"`` of this process when it started the embedded Ray in use (its workers
    can ``_watchdog.follow`` it), else None (a joined cluster ends a dead driver's job)."""
    return _EMBEDDED.get("driver") if ray.is_initialized() else None


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Resources of each worker actor and the cluster to join.

    ``address=None`` joins ``RAY_ADDRESS`` when set, else starts an embedded local Ray.
    ``max_workers`` caps the pool below what the cluster holds (a sweep run's share of it).

    Example:
        >>> WorkerOptions(num_cpus=2).num_gpus
        0.0
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None
    max_workers: int | None = None


def capacity(options: WorkerOptions, total: dict[str, float]) -> int:
    """How many workers of this shape a cluster with ``total`` resources holds (at least 1);
    a clear ``ValueError`` when not even one fits.

    Example:
        >>> capacity(WorkerOptions(num_cpus=2), {"CPU": 7.0})
        3
    """
    if options.num_gpus:
        gpus = total.get("GPU", 0.0)
        if gpus < options.num_gpus:
            raise ValueError(
                f"Each worker asks for num_gpus={options.num_gpus}, but the Ray cluster "
                f"has {gpus:g} GPU(s). Use num_gpus: 0 for CPU workers, or join a cluster "
                "with GPUs (execution.address / RAY_ADDRESS).")
        return max(1, int(gpus // options.num_gpus))
    cpus = total.get("CPU", 0.0)
    if options.num_cpus and cpus < options.num_cpus:
        raise ValueError(f"Each worker asks for num_cpus={options.num_cpus}, but the Ray "
                         f"cluster has {cpus:g} CPU(s). Lower execution.num_cpus.")
    return max(1, int(cpus // options.num_cpus)) if options.num_cpus else 1


def ensure_ray(address: str | None = None) -> None:
    """Uses Ray as already initialised in this process, else joins ``address`` (or
    ``RAY_ADDRESS``), else starts an embedded local Ray sized to this machine, on loopback.

    Ray's start-up lines (INFO, the token-auth WARNING) are off unless ``RAYJAC_VERBOSE`` is
    set; its errors still show."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    level = logging.INFO if os.environ.get("RAYJAC_VERBOSE", "") not in ("", "0") else (
        logging.ERROR)
    with warnings.catch_warnings():
        # Ray starts its processes with fork + exec; JAX's at-fork hook warns about the fork,
        # which is harmless here (nothing runs between the fork and the exec).
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                                category=RuntimeWarning)
        handlers = _python_signal_handlers()
        _EMBEDDED.clear()
        if address:
            ray.init(address=address, log_to_driver=True, logging_level=level)
        else:
            ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                     _node_ip_address="127.0.0.1", logging_level=level)
            _watch_embedded_ray()
        for signum, handler in handlers.items():  # Ray's core replaces SIGTERM's handler
            signal.signal(signum, handler)


def _python_signal_handlers() -> dict:
    """This process's own SIGINT/SIGTERM handlers (e.g. the command's), to keep after Ray's
    start-up; none off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    return {s: h for s, h in found.items() if callable(h)}


def _watch_embedded_ray() -> None:
    """Starts the watchdog that ends this embedded Ray if this process dies (see _watchdog)."""
    _EMBEDDED["driver"] = _watchdog.identity()
    node = getattr(ray._private.worker, "_global_node", None)
    pids = [p.process.pid for procs in getattr(node, "all_processes", {}).values()
            for p in procs if p.process is not None]
    if pids and os.path.isdir("/proc"):
        script = os.path.join(os.path.dirname(__file__), "_watchdog.py")
        subprocess.Popen([sys.executable, script, str(os.getpid()), *map(str, pids)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def job_id() -> str:
    """The current Ray session's job id (object refs and actors of an earlier one are dead)."""
    return ray.get_runtime_context().get_job_id()


def stop_now() -> None:
    """Stops, at once, what this process started on Ray (on Ctrl-C or SIGTERM of the command):
    an embedded local Ray is killed with every process under it (runners and workers
    included), so nothing of this driver's runs is computed or published after; a joined
    cluster ends this driver's job, and Ray ends the job's actors and tasks with it."""
    if not ray.is_initialized():
        return
    node = getattr(ray._private.worker, "_global_node", None)
    started = [p.process.pid for procs in getattr(node, "all_processes", {}).values()
               for p in procs if p.process is not None]
    if not started:  # a cluster this process joined: leave it, and its job ends
        ray.shutdown()
        return
    for pid in _with_descendants(started):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them (from /proc; only ``pids`` where it is missing)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found
