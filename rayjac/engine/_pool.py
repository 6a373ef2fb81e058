"""The driver's side of the workers: pools of long-lived worker actors, and what each call sends
them once (its input arrays, and each program once per Ray session). All of it is state of one
``Engine`` object per driver process, as Ray's ``ActorPool`` keeps its actors on itself."""

from __future__ import annotations

import threading
import uuid
import weakref
from typing import Any, Callable

import jax
import numpy as np
import ray

from ..core._variables import shipping
from ._cluster import WorkerOptions, capacity, job_id
from ._worker import Worker, worker_env


@ray.remote
class _RemoteWorker(Worker):
    def _fetch(self, ref):
        return ray.get(ref)


class Pool:
    """Long-lived worker actors of one resource shape, grown on demand and reused."""

    def __init__(self, options: WorkerOptions, x64: bool):
        self.options, self.x64 = options, x64
        self.actors: list = []

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


class InputRefs:
    """Object refs of a call's input arrays, each put once per call. A ``jax.Array`` that is
    the very object of the previous call (arrays are immutable: e.g. the value of a Variable
    that did not change) keeps its ref, so it is not sent again, nor converted again on the
    workers. numpy arrays can change in place: they are always put."""

    def __init__(self):
        self._refs: dict[int, tuple[Any, Any]] = {}
        self._job: str | None = None

    def put(self, groups) -> list[list[Any]]:
        if self._job != job_id():  # refs of an earlier Ray session are dead
            self._refs, self._job = {}, job_id()
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


class Engine:
    """This driver's workers: one pool at a time (with its shape), the inputs of the latest
    call, and each program's object ref.

    One pool holds resources at a time: the actors of another shape (e.g. the previous run of
    a sweep over num_cpus), and whatever a caller registered with ``on_new_pool`` (a sweep's
    idle runners), are released first, since they would otherwise keep the resources that the
    new ones wait for.
    """

    def __init__(self):
        self._pools: dict[tuple, Pool] = {}
        self._lock = threading.Lock()
        self._on_new_pool: dict[Any, Callable[[], None]] = {}
        self.inputs = InputRefs()
        self._program_refs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def on_new_pool(self, release: Callable[[], None]) -> None:
        """Calls ``release()`` before each new pool starts (registering it again is a no-op)."""
        self._on_new_pool[release] = release

    def pool(self, options: WorkerOptions) -> Pool:
        """The pool for these options (and this process's x64 mode and Ray session)."""
        x64 = bool(jax.config.jax_enable_x64)
        key = (options.num_cpus, options.num_gpus, options.max_workers, x64, job_id())
        with self._lock:
            if key not in self._pools:
                for release in list(self._on_new_pool.values()):
                    release()
                self._close_pools()
                self._pools[key] = Pool(options, x64)
            return self._pools[key]

    @property
    def pools(self) -> list[Pool]:
        return list(self._pools.values())

    def release_pools(self) -> None:
        """Releases the pools and their resources (a sweep's runs need them)."""
        with self._lock:
            self._close_pools()

    def _close_pools(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def program_ref(self, program: Any) -> tuple[str, Any]:
        """(token, object ref) of a program: put into the object store once per Ray session."""
        entry = self._program_refs.get(program)
        if entry is None or entry[2] != job_id():
            with shipping():  # Variable values travel with each call's inputs, not in here
                entry = (uuid.uuid4().hex, ray.put(program), job_id())
                self._program_refs[program] = entry
        return entry[:2]

    def forget_session(self, program: Any) -> None:
        """Marks a program's ref and the cached inputs as of an ended Ray session (tests)."""
        token = self._program_refs[program][0]
        self._program_refs[program] = (token, None, "an old session")
        self.inputs._job = "an old session"


ENGINE = Engine()  # this process's; a driver has one
