"""One call's shards on the pool: the tangent columns (or colours) split into ranges, or a map's
points x columns into rectangles; one in flight per actor, lost workers retried, a failing
function reported with the worker's traceback and the shard's range (and points)."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import numpy as np
import ray
from ray.exceptions import RayTaskError

from .._progress import shard_bar
from ..core._points import MapPart, Points, map_parts
from ..core._program import TangentProgram
from ._cluster import ACTOR_LOST, LOST, MAX_RETRIES, WorkerOptions, ensure_ray
from ._pool import ENGINE, Pool


class ShardError(RuntimeError):
    """A shard failed on a worker: carries the column range, the node and the remote traceback."""

    __module__ = "rayjac.engine"  # its public home


def run_shards(program: TangentProgram, diff: list, const: list, state: list, shards: int,
               options: WorkerOptions | None = None, columns: bool = False
               ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Starts the shards of one call on the pool; returns the call: an iterator over finished
    shards ``(start, rows)`` in completion order (``columns``: J column blocks instead of
    rows), with ``cancel()``."""
    return _start(program, (diff, const, state), program.split(shards), options, columns)


def run_map(program: TangentProgram, points: Points, shards: int, batch_size: int | None,
            options: WorkerOptions | None = None, columns: bool = False,
            analysis: Any = None) -> Iterator[MapPart]:
    """Starts a map on the pool: its points x columns (colours) cut into ``shards`` balanced
    rectangles; returns an iterator over finished ``MapPart``s in completion order, with
    ``cancel()``. Every input array, the batched ones included, is put once; each worker
    takes its own points of them. With an ``analysis``, parts are whole points and each
    worker computes their spectra (``MapPart.spectra``)."""
    shards = shards if analysis is None else min(shards, points.count)
    parts = map_parts(points.count, program.size, shards)
    return _start(program, points.groups, parts, options, columns,
                  (points.axes, points.count, batch_size), analysis)


def _start(program: TangentProgram, groups, parts: list[tuple], options, columns: bool,
           points: tuple | None = None, analysis: Any = None) -> _Call:
    options = options or WorkerOptions()
    ensure_ray(options.address)
    pool = ENGINE.pool(options)
    pool.grow(len(parts))
    program_ref = ENGINE.program_ref(program)
    data_refs = ENGINE.inputs.put(groups)
    weak = [[bool(getattr(x, "weak_type", False)) for x in g] for g in groups]
    call = _Call(pool, program, program_ref, (data_refs, weak), parts, columns, points,
                 analysis)
    call.fill()  # the shards run while the driver computes the primal
    return call


class _Call:
    """Schedules the shards of one call (``(start, stop)`` column or colour ranges) or the
    parts of a map (``(p0, p1, start, stop)``; ``points``: its axes, count and batch size)
    over the pool, one in flight per actor, with retries."""

    def __init__(self, pool: Pool, program, program_ref, data_refs, parts, columns: bool,
                 points: tuple | None = None, analysis: Any = None):
        self.pool, self.program, self.parts, self.columns = pool, program, parts, columns
        self.token, self.program_ref = program_ref
        self.data_refs, self.call_id, self.points = data_refs, uuid.uuid4().hex, points
        self.analysis = analysis
        self.pending = list(range(len(parts)))[::-1]
        self.attempts = [0] * len(parts)
        self.in_flight: dict[Any, tuple[Any, int]] = {}
        self.progress = shard_bar(len(parts))
        self.unit = "tangent columns" if program.plan is None else "colours"

    def _submit(self, actor, shard: int) -> None:
        *where, start, stop = self.parts[shard]
        self.attempts[shard] += 1
        extra = {} if self.points is None else {"points": (*where, *self.points)}
        if self.analysis is not None:
            extra["analysis"] = self.analysis
        ref = actor.rows.remote(self.token, [self.program_ref], self.call_id, [self.data_refs],
                                start, stop - start, self.columns, **extra)
        self.in_flight[ref] = (actor, shard)

    def _item(self, shard: int, values: list[np.ndarray]) -> Any:
        if self.points is None:
            return self.program.shard_item(*self.parts[shard], values)
        if self.analysis is not None:
            return MapPart(*self.parts[shard], *values)  # (values or None, spectra)
        return MapPart(*self.parts[shard], values)

    def _name(self, shard: int) -> str:
        *where, start, stop = self.parts[shard]
        span = f"{self.unit} [{start}, {stop})"
        if self.points is None:
            return f"Shard {shard} ({span})"
        return f"Part {shard} (points [{where[0]}, {where[1]}), {span})"

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
                    yield self._item(shard, rows)
                self.fill()
        finally:
            self.cancel()
            self.progress.close()

    def _collect(self, ref, actor, shard: int) -> list[np.ndarray] | None:
        try:
            return ray.get(ref)
        except RayTaskError as err:  # func raised: retrying cannot help
            raise ShardError(
                f"{self._name(shard)} failed on a rayjac worker:\n{err}\nThe traceback above "
                "is the worker's; rerun with shards=None to debug the function in this "
                "process.") from None
        except LOST as err:
            if self.attempts[shard] > MAX_RETRIES:
                raise ShardError(
                    f"{self._name(shard)} was lost {self.attempts[shard]} times (worker died: "
                    f"{err}). Check the workers' memory (lower chunk_size or batch_size) and "
                    "the Ray logs under /tmp/ray/session_latest/logs.") from None
            if isinstance(err, ACTOR_LOST):
                self.pool.drop(actor)
            self.pending.append(shard)  # retried on another (or a fresh) worker
            return None
