"""Joining or starting a Ray cluster, the resources a worker asks for, and which failures count
as a lost worker (retried) rather than a failing function."""

from __future__ import annotations

import dataclasses
import os

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError

MAX_RETRIES = 3
ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
LOST = ACTOR_LOST + (ObjectLostError,)  # a finished shard whose node died before the fetch


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
    ``RAY_ADDRESS``), else starts an embedded local Ray sized to this machine, on loopback."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1")


def job_id() -> str:
    """The current Ray session's job id (object refs and actors of an earlier one are dead)."""
    return ray.get_runtime_context().get_job_id()
