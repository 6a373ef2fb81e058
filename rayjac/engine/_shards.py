"""One call's shards on the pool: the tangent columns (or colours) split into ranges, one range
in flight per actor, lost workers retried, a failing function reported with the worker's
traceback and the shard's range."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import numpy as np
import ray
from ray.exceptions import RayTaskError

from .._progress import shard_bar
from ..core._program import TangentProgram
from ._cluster import ACTOR_LOST, LOST, MAX_RETRIES, WorkerOptions, ensure_ray
from ._pool import ENGINE, Pool


class ShardError(RuntimeError):
    """A shard failed on a worker: carries the column range, the node and the remote traceback."""


def run_shards(program: TangentProgram, diff: list, const: list, state: list, shards: int,
               options: WorkerOptions | None = None, columns: bool = False
               ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Starts the shards of one call on the pool; returns the call: an iterator over finished
    shards ``(start, rows)`` in completion order (``columns``: J column blocks instead of
    rows), with ``cancel()``."""
    options = options or WorkerOptions()
    ensure_ray(options.address)
    ranges = program.split(shards)
    pool = ENGINE.pool(options)
    pool.grow(len(ranges))
    program_ref = ENGINE.program_ref(program)
    data_refs = ENGINE.inputs.put((diff, const, state))
    weak = [[bool(getattr(x, "weak_type", False)) for x in g] for g in (diff, const, state)]
    call = _Call(pool, program, program_ref, (data_refs, weak), ranges, columns)
    call.fill()  # the shards run while the driver computes the primal
    return call


class _Call:
    """Schedules the shards of one call over the pool, one in flight per actor, with retries."""

    def __init__(self, pool: Pool, program, program_ref, data_refs, ranges, columns: bool):
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
        except LOST as err:
            if self.attempts[shard] > MAX_RETRIES:
                raise ShardError(
                    f"Shard {shard} ({self.unit} [{start}, {stop})) was lost "
                    f"{self.attempts[shard]} times (worker died: {err}). Check the workers' "
                    "memory (lower chunk_size) and the Ray logs under /tmp/ray/session_latest/"
                    "logs.") from None
            if isinstance(err, ACTOR_LOST):
                self.pool.drop(actor)
            self.pending.append(shard)  # retried on another (or a fresh) worker
            return None
