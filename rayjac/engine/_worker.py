"""What runs inside a shard worker actor (the Ray wrapper lives in ``_pool``): its environment,
core pinning, its cached programs and inputs, and the J^T rows of one shard."""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
import time
from typing import Any

import numpy as np

from ..core._batched import part
from ..core._points import Points
from ..core._program import UnshippedVariable


def worker_env(num_gpus: float, x64: bool) -> dict[str, str]:
    """Environment of a worker process, set before it imports JAX."""
    env = {"JAX_ENABLE_X64": "1" if x64 else "0"}
    if num_gpus:
        # Several workers may share a GPU: cap each one's preallocation to its share.
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * min(num_gpus, 1.0):.3f}"
    else:
        env["JAX_PLATFORMS"] = "cpu"  # zero-GPU Ray workers still see every GPU
    return env


def _claim_cores(num_cpus: float) -> tuple[list[int], list[Any]]:
    """Claims ``ceil(num_cpus)`` free cores of this node with file locks held for the life
    of the process, so that workers on one node never share a core."""
    wanted = max(1, math.ceil(num_cpus))
    folder = os.path.join(tempfile.gettempdir(), "rayjac-cores")
    os.makedirs(folder, exist_ok=True)
    claimed, handles = [], []
    for core in sorted(os.sched_getaffinity(0)):
        handle = open(os.path.join(folder, f"core-{core}.lock"), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        claimed.append(core)
        handles.append(handle)
        if len(claimed) == wanted:
            return claimed, handles
    for handle in handles:
        handle.close()
    return [], []


def pin_to_cores(num_cpus: float) -> tuple[list[int], list[Any]]:
    """Pins this process to ``ceil(num_cpus)`` cores no other rayjac process of the node holds
    (CPU processes only; none when all are taken). Call it before JAX starts its thread pool;
    keep the returned lock handles for the life of the process."""
    on_gpu = bool(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if not num_cpus or not hasattr(os, "sched_setaffinity") or on_gpu:
        return [], []
    cores, locks = _claim_cores(num_cpus)
    if cores:
        os.sched_setaffinity(0, cores)
    return cores, locks


class Worker:
    """One long-lived worker: compiles each program once and reuses it across shards."""

    def __init__(self, num_cpus: float):
        self.cores, self._locks = pin_to_cores(num_cpus)
        self._programs: dict[str, Any] = {}
        self._call: tuple[str, Any] | None = None
        self._arrays: dict[str, Any] = {}
        self.fetches = {"program": 0, "data": 0}
        self.seconds = {"inputs": 0.0, "kernel": 0.0}  # cumulative, for benchmarks
        self.last_call = (0.0, 0.0)  # wall-clock start and end of the last shard's kernel

    def _fetch(self, ref: Any) -> Any:
        raise NotImplementedError  # ray.get, provided by the Ray wrapper

    def describe(self) -> dict:
        env = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
        return {"pid": os.getpid(), "cores": self.cores, "fetches": dict(self.fetches),
                "env": env, "seconds": dict(self.seconds), "last_call": self.last_call}

    def _inputs(self, groups: list[list[Any]], weak: list[list[bool]]) -> list[list[Any]]:
        """The call's input arrays on this worker, with the driver's JAX weak types (numpy
        has none): fetched and converted once per object."""
        import jax.numpy as jnp

        from ..core._basis import weakly_typed
        refs = [ref for group in groups for ref in group]
        missing = [ref for ref in refs if ref.hex() not in self._arrays]
        fetched = self._fetch(missing) if missing else []
        self.fetches["data"] += len(missing)
        arrays = {ref.hex(): self._arrays.get(ref.hex()) for ref in refs}
        arrays.update({ref.hex(): jnp.asarray(x) for ref, x in zip(missing, fetched)})
        self._arrays = arrays  # only the current call's arrays stay cached
        return [[weakly_typed(arrays[ref.hex()], w) for ref, w in zip(group, flags)]
                for group, flags in zip(groups, weak)]

    def rows(self, token: str, program_box: list, call_id: str, data_box: list, start: int,
             length: int, columns: bool = False, points: tuple | None = None,
             analysis: Any = None) -> Any:
        """J^T rows of one shard, or (``columns``) the same block of J, transposed; with
        ``points`` ``(p0, p1, axes, count, batch_size)``, those of a map's points ``[p0, p1)``, a
        leading point axis on each (sparse: nonzeros, decompressed here). With an ``analysis``
        (whole points), ``(values or None, spectra)``: the eigenvalues are computed here, and
        only they travel when the Jacobian is not kept."""
        begin = time.perf_counter()
        program = self._programs.get(token)
        if program is None:
            program = self._fetch(program_box[0])
            self.fetches["program"] += 1
            program.strict = True
            self._programs = {**dict(list(self._programs.items())[-7:]), token: program}
        if self._call is None or self._call[0] != call_id:
            self._call = (call_id, self._inputs(*data_box[0]))
        groups = self._call[1]
        if points is None:
            work = lambda p: p.shard(*groups, start, length, columns)  # noqa: E731
        else:
            p0, p1, axes, count, batch_size = points
            inputs = Points(tuple(groups), axes, count)
            work = lambda p: part(p, inputs, p0, p1, start, length, batch_size,  # noqa: E731
                                  columns)
        middle = time.perf_counter()
        try:
            out = work(program)
        except UnshippedVariable:  # func reads module-level Variables of this process
            program = self._programs[token] = program.localized(
                *(groups if points is None else inputs.point(0)))
            out = work(program)
        self.seconds["inputs"] += middle - begin
        self.seconds["kernel"] += time.perf_counter() - middle
        self.last_call = (time.time() - (time.perf_counter() - begin), time.time())
        if analysis is None:
            return out
        spectra = (analysis.dense_spectra(out) if program.plan is None else
                   analysis.sparse_spectra(program.plan, out))
        return (out if analysis.keep_jacobian else None), spectra

