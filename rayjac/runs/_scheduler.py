"""Sweeps on the cluster: each run's whole work (factory, primal, Jacobian, writing) in a
long-lived runner actor, as many runs at once as ``execution.parallel_runs`` and the cluster's
resources allow. The runner itself (what runs inside the actor) is ``_runner``.

A run starts only when everything it will hold fits beside what the sweep's other runners
hold, so runs never wait on each other's resources: an in-process run holds its runner's
``num_cpus``/``num_gpus``; a sharded run holds its shard workers, and its runner (which computes
the primal and writes) holds nothing itself, so it never sits on a CPU that its own workers
wait for. Idle runners of another shape are released to make room.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, NamedTuple

import jax
import ray
from ray.exceptions import RayTaskError

from ..engine import ENGINE, WorkerOptions, capacity, embedded_driver, worker_env
from ..engine._cluster import LOST, MAX_RETRIES, job_id
from ._config import Config
from ._runner import Runner

_EPS = 1e-9


@ray.remote
class _RemoteRunner(Runner):
    pass


@dataclasses.dataclass(frozen=True)
class Shape:
    """What one run holds while it runs: its runner's own resources and its shard workers'."""

    num_cpus: float = 0.0
    num_gpus: float = 0.0
    workers: int = 0  # shard workers; 0 for an in-process run
    worker_cpus: float = 0.0
    worker_gpus: float = 0.0

    @property
    def need(self) -> tuple[float, float]:
        """(CPUs, GPUs) the run holds; a run that asks for nothing counts as one CPU, so that
        ``parallel_runs: null`` stays bounded by the cluster."""
        cpus = self.num_cpus + self.workers * self.worker_cpus
        gpus = self.num_gpus + self.workers * self.worker_gpus
        return (cpus if cpus or gpus else 1.0), gpus


def shape_of(config: Config, total: dict[str, float]) -> Shape:
    """The run's :class:`Shape` on a cluster with ``total`` resources; a ``ValueError`` when it
    cannot run there at all.

    Example:
        >>> from rayjac.runs import parse_config
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "execution": {"shards": 8}})
        >>> shape_of(cfg, {"CPU": 2.0}).need
        (2.0, 0.0)
    """
    ex = config.execution
    if ex.shards is not None:
        fit = capacity(WorkerOptions(ex.num_cpus, ex.num_gpus), total)
        return Shape(workers=min(ex.shards, fit), worker_cpus=ex.num_cpus,
                     worker_gpus=ex.num_gpus)
    for name, asked in (("cpus", ex.num_cpus), ("gpus", ex.num_gpus)):
        have = total.get(name[:-1].upper(), 0.0)
        if asked > have:
            raise ValueError(f"This in-process run asks for num_{name}={asked:g}, but the Ray "
                             f"cluster has {have:g} {name[:-1].upper()}(s). Lower "
                             f"execution.num_{name}, or join a larger cluster.")
    return Shape(ex.num_cpus, ex.num_gpus)


class Item(NamedTuple):
    """Runs to do on one runner, one after the other: ``(index in the sweep, config, point)``
    each, all of one shape."""

    runs: tuple[tuple[int, Config, dict], ...]
    shape: Shape

    @property
    def index(self) -> int:
        return self.runs[0][0]


class Outcome(NamedTuple):
    """How a run ended: ``error`` is ``None`` when its result is stored; ``program`` is the
    key of the compiled program it shared (None: it ran on its own); ``programs`` counts the
    programs the sweep's runners have compiled so far."""

    index: int
    error: str | None
    seconds: float
    program: str | None = None
    programs: int = 0


def chunks(runs: list[tuple[int, Config, dict]], shapes: list[Shape], slots: int
           ) -> list[Item]:
    """The runs as items: consecutive runs of one shape, about four items per slot (so the
    runners stay busy to the end) and at most 64 runs each.

    Example:
        >>> [len(i.runs) for i in chunks([(i, None, {}) for i in range(10)], [Shape()] * 10, 1)]
        [3, 3, 3, 1]
    """
    size = max(1, min(64, -(-len(runs) // (4 * max(1, slots)))))
    items: list[Item] = []
    for run, shape in zip(runs, shapes):
        if items and items[-1].shape == shape and len(items[-1].runs) < size:
            items[-1] = Item(items[-1].runs + (run,), shape)
        else:
            items.append(Item((run,), shape))
    return items


def run_all(runs: list[tuple[int, Config, dict]], parallel_runs: int | None, *,
            started: Callable[[int], None] = lambda index: None,
            waiting: Callable[[], None] = lambda: None) -> Iterator[Outcome]:
    """Runs each ``(index, config, point)`` on the cluster (Ray must be initialised), at most
    ``parallel_runs`` at once (``None``: as many as fit); yields each :class:`Outcome` as the
    run ends. A runner that dies mid-run costs only that run's attempt: it is retried on a
    fresh runner, up to ``MAX_RETRIES`` times. Leaving the iterator early stops every runner.

    ``started(index)`` is called as each run starts, ``waiting()`` about once a second while
    none ends.
    """
    if not runs:
        return
    ENGINE.release_pools()  # this driver's own shard workers would hold what the runs need
    ENGINE.on_new_pool(KEPT.release)  # and the sweep's idle runners what a new pool needs

    total = ray.cluster_resources()
    fitting, shapes = [], []
    for run in runs:
        try:
            shapes.append(shape_of(run[1], total))
            fitting.append(run)
        except ValueError as err:  # it can never start here
            started(run[0])
            yield Outcome(run[0], f"ValueError: {err}", 0.0)
    slots = parallel_runs or max(1, int(total.get("CPU", 1.0)))
    queue = chunks(fitting, shapes, slots)
    runners = _Runners(bool(jax.config.jax_enable_x64))
    tries: dict[int, int] = {}
    try:
        while queue or runners.busy:
            for item, actor in _admit(queue, runners, parallel_runs or len(runs)):
                runners.start(actor, item, os.getcwd())
                for index, _, _ in item.runs:
                    started(index)
            finished, _ = ray.wait(list(runners.busy), num_returns=1, timeout=1.0)
            if not finished:
                waiting()
                continue
            yield from _outcomes(finished[0], runners, tries, queue)
    finally:
        runners.close()


class KeptRunners:
    """Idle runners that outlive a sweep (the next sweep of this driver starts at once), by
    (Ray session, x64 mode), until this driver's engine needs their resources for shard
    workers of its own."""

    def __init__(self):
        self._idle: dict[tuple, list[tuple[Shape, Any]]] = {}

    def take(self, key: tuple) -> list[tuple[Shape, Any]]:
        return self._idle.pop(key, [])

    def keep(self, key: tuple, idle: list[tuple[Shape, Any]]) -> None:
        self._idle[key] = idle

    def release(self) -> None:
        """Releases every kept runner, and its resources.

        Example:
            >>> KeptRunners().release()
        """
        job = job_id() if self._idle else None
        for (owner, _), idle in self._idle.items():
            for _, actor in idle if owner == job else ():  # an old session's are gone already
                ray.kill(actor, no_restart=True)
        self._idle.clear()


KEPT = KeptRunners()  # this driver's


class _Runners:
    """The sweep's runner actors: busy ones by the ref of their run, idle ones oldest first."""

    def __init__(self, x64: bool):
        self.x64, self.key = x64, (job_id(), x64)
        self.idle: list[tuple[Shape, Any]] = KEPT.take(self.key)
        KEPT.release()  # those of another Ray session or x64 mode
        self.busy: dict[Any, tuple[Any, Item]] = {}
        self.built = 0  # programs the runners compiled for this sweep

    def held(self) -> tuple[float, float]:
        shapes = [s for s, _ in self.idle] + [item.shape for _, item in self.busy.values()]
        return sum(s.need[0] for s in shapes), sum(s.need[1] for s in shapes)

    def take(self, shape: Shape) -> Any:
        """An idle runner of this shape (the most recent), or None."""
        for i in range(len(self.idle) - 1, -1, -1):
            if self.idle[i][0] == shape:
                return self.idle.pop(i)[1]
        return None

    def new(self, shape: Shape) -> Any:
        env = worker_env(shape.num_gpus, self.x64)
        if embedded_driver():  # a runner ends with its driver, before it can publish more
            env["RAYJAC_DRIVER"] = embedded_driver()
        return _RemoteRunner.options(
            num_cpus=shape.num_cpus, num_gpus=shape.num_gpus, max_restarts=0,
            max_task_retries=0).remote(shape.num_cpus, env)

    def start(self, actor: Any, item: Item, cwd: str) -> None:
        ref = actor.run.remote(list(item.runs), cwd, item.shape.workers or None)
        self.busy[ref] = (actor, item)

    def evict(self) -> bool:
        """Releases the oldest idle runner (and its shard workers); False when none is idle."""
        if not self.idle:
            return False
        ray.kill(self.idle.pop(0)[1], no_restart=True)
        return True

    def close(self) -> None:
        """Stops the runners still busy (their runs are abandoned); keeps the idle ones."""
        for actor, _ in self.busy.values():
            ray.kill(actor, no_restart=True)
        KEPT.keep(self.key, self.idle)
        self.idle, self.busy = [], {}


def _admit(queue: list[Item], runners: _Runners, limit: int) -> Iterator[tuple[Item, Any]]:
    """The runs that start now, each with its runner: first those an idle runner of their shape
    can take, then those whose shape fits the free resources (releasing idle runners of other
    shapes when that makes room)."""
    total = ray.cluster_resources()
    while queue and len(runners.busy) < limit:
        pick = _pick(queue, runners, total)
        if pick is None:
            return
        yield pick


def _pick(queue: list[Item], runners: _Runners, total: dict) -> tuple[Item, Any] | None:
    for i, item in enumerate(queue):
        actor = runners.take(item.shape)
        if actor is not None:
            return queue.pop(i), actor
    while True:
        held_cpus, held_gpus = runners.held()
        free = (total.get("CPU", 0.0) - held_cpus, total.get("GPU", 0.0) - held_gpus)
        for i, item in enumerate(queue):
            cpus, gpus = item.shape.need
            if cpus <= free[0] + _EPS and gpus <= free[1] + _EPS:
                item = queue.pop(i)
                return item, runners.new(item.shape)
        if not runners.evict():
            break
    if not runners.busy:  # nothing of ours holds anything, yet nothing fits: Ray decides
        item = queue.pop(0)
        return item, runners.new(item.shape)
    return None


def _outcomes(ref: Any, runners: _Runners, tries: dict[int, int], queue: list[Item]
              ) -> list[Outcome]:
    """The finished item's outcomes; none when its runner died and the item was requeued."""
    actor, item = runners.busy.pop(ref)
    try:
        done, built = ray.get(ref)
    except LOST as err:  # the runner's process died mid-run: retry, like a lost shard
        ray.kill(actor, no_restart=True)
        tries[item.index] = tries.get(item.index, 0) + 1
        if tries[item.index] <= MAX_RETRIES:
            queue.insert(0, item)
            return []
        error = (f"RunnerLost: the process running this run died {tries[item.index]} times; "
                 f"the last time: {err}\nCheck its memory (lower execution.chunk_size or "
                 "execution.batch_size), that the cluster imports the same rayjac as this "
                 "driver, and the Ray logs under /tmp/ray/session_latest/logs.")
        return [Outcome(index, error, 0.0) for index, _, _ in item.runs]
    except RayTaskError as err:  # not an Exception (e.g. SystemExit) inside the run
        ray.kill(actor, no_restart=True)
        return [Outcome(index, f"{type(err.cause).__name__}: {err.cause}", 0.0)
                for index, _, _ in item.runs]
    runners.idle.append((item.shape, actor))
    runners.built += built
    return [Outcome(d.index, d.error, d.seconds, d.program, runners.built) for d in done]
