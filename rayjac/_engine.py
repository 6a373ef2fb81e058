"""The distributed engine (with ``_parallel``, the modules that run Ray tasks): a pool of
long-lived worker actors, each running the jitted ``vmap(jvp)`` kernel over column shards of the
tangent basis.

Per call, the inputs go into the object store once (numpy) and every shard gets the reference;
each program (function, Variables, layout) is shipped once per actor and cached there.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
import weakref
from typing import Any, Iterator

import jax
import numpy as np
import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError,
                            RayTaskError)

from ._program import TangentProgram
from ._progress import shard_bar
from ._variables import shipping
from ._worker import Worker, worker_env


@ray.remote
class _RemoteWorker(Worker):
    def _fetch(self, ref):
        return ray.get(ref)

MAX_RETRIES = 3
_ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
_LOST = _ACTOR_LOST + (ObjectLostError,)  # a finished shard whose node died before the fetch


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Resources of each worker actor and the cluster to join.

    ``address=None`` joins ``RAY_ADDRESS`` when set, else starts an embedded local Ray.
    ``max_workers`` caps the pool below what the cluster holds (a sweep run's share of it).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None
    max_workers: int | None = None


def capacity(options: WorkerOptions, total: dict[str, float]) -> int:
    """How many workers of this shape a cluster with ``total`` resources holds (at least 1);
    a clear ``ValueError`` when not even one fits."""
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


class ShardError(RuntimeError):
    """A shard failed on a worker: carries the column range, the node and the remote traceback."""


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


class _Pool:
    """Long-lived worker actors of one resource shape, grown on demand and reused."""

    def __init__(self, options: WorkerOptions, x64: bool):
        self.options, self.x64 = options, x64
        self.actors: list = []
        self.shipped: dict[int, set[str]] = {}

    def capacity(self) -> int:
        fit = capacity(self.options, ray.cluster_resources())
        return min(fit, self.options.max_workers or fit)

    def grow(self, wanted: int) -> None:
        if len(self.actors) >= wanted:
            return
        wanted = min(wanted, self.capacity())
        env = worker_env(self.options.num_gpus, self.x64)
        while len(self.actors) < wanted:
            self.actors.append(_RemoteWorker.options(
                num_cpus=self.options.num_cpus, num_gpus=self.options.num_gpus,
                max_restarts=0, max_task_retries=0, max_concurrency=1,
                runtime_env={"env_vars": env}).remote(self.options.num_cpus))

    def close(self) -> None:
        """Releases every actor, and with them their resources."""
        for actor in list(self.actors):
            self.drop(actor)

    def drop(self, actor) -> None:
        """Forgets a lost actor; the pool grows a fresh one where resources allow."""
        if actor in self.actors:
            self.actors.remove(actor)
        ray.kill(actor, no_restart=True)


_pools: dict[tuple, _Pool] = {}
_pools_lock = threading.Lock()


def _job() -> str:
    return ray.get_runtime_context().get_job_id()


# Called before a new pool starts: other holders of this driver's resources (a sweep's idle
# runners, see _parallel) let go of them first.
holders_to_release: list = []


def _pool(options: WorkerOptions) -> _Pool:
    """This driver's pool for these options. One pool holds resources at a time: the actors of
    another shape (e.g. the previous run of a sweep over num_cpus), and a sweep's idle runners,
    are released first, since they would otherwise keep the resources that the new ones wait
    for."""
    import jax
    x64 = bool(jax.config.jax_enable_x64)
    key = (options.num_cpus, options.num_gpus, options.max_workers, x64, _job())
    with _pools_lock:
        if key not in _pools:
            for release in holders_to_release:
                release()
            for old in _pools.values():
                old.close()
            _pools.clear()
            _pools[key] = _Pool(options, x64)
        return _pools[key]


def release_pools() -> None:
    """Releases this process's worker pools and their resources (a sweep's runs need them)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


def run_shards(program: TangentProgram, diff: list, const: list, state: list, shards: int,
               options: WorkerOptions | None = None, columns: bool = False
               ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Starts the shards of one call on the pool; returns the call: an iterator over finished
    shards ``(start, rows)`` in completion order (``columns``: J column blocks instead of
    rows), with ``cancel()``."""
    options = options or WorkerOptions()
    ensure_ray(options.address)
    ranges = program.split(shards)
    pool = _pool(options)
    pool.grow(len(ranges))
    program_ref = _program_ref(program)
    data_refs = _inputs.put((diff, const, state))
    weak = [[bool(getattr(x, "weak_type", False)) for x in g] for g in (diff, const, state)]
    call = _Call(pool, program, program_ref, (data_refs, weak), ranges, columns)
    call.fill()  # the shards run while the driver computes the primal
    return call


class _InputRefs:
    """Object refs of a call's input arrays, each put once per call. A ``jax.Array`` that is
    the very object of the previous call (arrays are immutable: e.g. the value of a Variable
    that did not change) keeps its ref, so it is not sent again, nor converted again on the
    workers. numpy arrays can change in place: they are always put."""

    def __init__(self):
        self._refs: dict[int, tuple[Any, Any]] = {}
        self._job: str | None = None

    def put(self, groups) -> list[list[Any]]:
        if self._job != _job():  # refs of an earlier Ray session are dead
            self._refs, self._job = {}, _job()
        live, out = {}, []
        for xs in groups:
            out.append([])
            for x in xs:
                entry = self._refs.get(id(x))
                if entry is None or entry[0]() is not x:
                    keep = weakref.ref(x) if isinstance(x, jax.Array) else (lambda: None)
                    entry = (keep, ray.put(np.asarray(x)))
                live[id(x)] = entry
                out[-1].append(entry[1])
        self._refs = live  # only the latest call's arrays stay cached
        return out


_inputs = _InputRefs()


_program_refs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _program_ref(program: TangentProgram) -> tuple[str, Any]:
    """(token, object ref) of a program: put into the object store once per Ray session."""
    entry = _program_refs.get(program)
    if entry is None or entry[2] != _job():
        with shipping():  # Variable values travel with each call's inputs, not in here
            entry = _program_refs[program] = (uuid.uuid4().hex, ray.put(program), _job())
    return entry[:2]


class _Call:
    """Schedules the shards of one call over the pool, one in flight per actor, with retries."""

    def __init__(self, pool: _Pool, program, program_ref, data_refs, ranges, columns: bool):
        self.pool, self.program, self.ranges, self.columns = pool, program, ranges, columns
        self.token, self.program_ref = program_ref
        self.data_refs, self.call_id = data_refs, uuid.uuid4().hex
        self.pending = list(range(len(ranges)))[::-1]
        self.attempts = [0] * len(ranges)
        self.in_flight: dict[Any, tuple[Any, int]] = {}
        self.progress = shard_bar(len(ranges))
        self.unit = "tangent columns" if program.plan is None else "colours"

    def _submit(self, actor, shard: int) -> None:
        start, stop = self.ranges[shard]
        self.attempts[shard] += 1
        ref = actor.rows.remote(self.token, [self.program_ref], self.call_id, [self.data_refs],
                                start, stop - start, self.columns)
        self.in_flight[ref] = (actor, shard)

    def fill(self) -> None:
        """Gives each idle actor a pending shard (growing the pool if all are busy)."""
        busy = {a for a, _ in self.in_flight.values()}
        if len(self.pool.actors) <= len(busy) and self.pending:
            self.pool.grow(len(self.pool.actors) + 1)
        for actor in [a for a in self.pool.actors if a not in busy]:
            if not self.pending:
                return
            self._submit(actor, self.pending.pop())

    def cancel(self) -> None:
        for ref in self.in_flight:
            ray.cancel(ref, force=False)
        self.in_flight.clear()

    def __iter__(self) -> Iterator[tuple[int, list[np.ndarray]]]:
        try:
            while self.in_flight:
                [ref], _ = ray.wait(list(self.in_flight), num_returns=1)
                actor, shard = self.in_flight.pop(ref)
                rows = self._collect(ref, actor, shard)
                if rows is not None:
                    self.progress.update()
                    yield self.program.shard_item(*self.ranges[shard], rows)
                self.fill()
        finally:
            self.cancel()
            self.progress.close()

    def _collect(self, ref, actor, shard: int) -> list[np.ndarray] | None:
        start, stop = self.ranges[shard]
        try:
            return ray.get(ref)
        except RayTaskError as err:  # func raised: retrying cannot help
            raise ShardError(
                f"Shard {shard} ({self.unit} [{start}, {stop})) failed on a rayjac worker:\n"
                f"{err}\nThe traceback above is the worker's; rerun with shards=None to debug "
                "the function in this process.") from None
        except _LOST as err:
            if self.attempts[shard] > MAX_RETRIES:
                raise ShardError(
                    f"Shard {shard} ({self.unit} [{start}, {stop})) was lost "
                    f"{self.attempts[shard]} times (worker died: {err}). Check the workers' "
                    "memory (lower chunk_size) and the Ray logs under /tmp/ray/session_latest/"
                    "logs.") from None
            if isinstance(err, _ACTOR_LOST):
                self.pool.drop(actor)
            self.pending.append(shard)  # retried on another (or a fresh) worker
            return None
