"""A chunk of a sweep's points in one process: each point's factory called and its function
keyed by structure (``_structure``), the points of one key run as one ``jf.map`` over their own
values through one compiled program per key (kept for the process's later chunks), and each
point written to its own run folder, exactly as a run of its own would write it.

A point that cannot be keyed (a map problem, a trace error) runs on its own (``run_one``), as
does every point of a batch whose map fails, so one point's failure never fails another, and
every sharded point (its program travels to shard workers, and a lifted jaxpr cannot).
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from .. import store
from .._jacobian import JacStream, jacfwd
from ..core._basis import weakly_typed
from ._config import Config
from ._one import _analysis, _grad_vars, _metadata, _sparsity, _workers, load_problem, run_one
from ._structure import Traced, Untraceable, same, trace

BATCH_BYTES = 256 * 2**20  # the distinct inputs of one batch's points (its Jacobians: WINDOW)
BATCH_POINTS = 256
WINDOW_BYTES = 128 * 2**20  # Jacobians of the points that go through a kernel at once
KEPT_PROGRAMS = 32


class Done(NamedTuple):
    """How one point of a chunk ended: ``error`` is None when its result is stored;
    ``program`` is its structure's key (None when it ran on its own)."""

    index: int
    error: str | None
    seconds: float
    program: str | None


class _Point(NamedTuple):
    index: int
    config: Config
    point: dict
    lifts: list
    leaves: list  # the array leaves of its arguments
    values: list  # its Variables' values
    seconds: float  # factory and trace


class Program:
    """One structure's compiled program in this process: the jaxpr of its first point with the
    constants and literals in ``lifted`` taken per point, the others baked in (their values
    ``baked``), differentiated by one ``jacfwd`` whose compiled kernels every batch reuses."""

    def __init__(self, traced: Traced, baked: list, lifted: tuple[int, ...], config: Config):
        self.traced, self.baked, self.lifted = traced, baked, lifted
        self._consts = [weakly_typed(jnp.asarray(v), bool(getattr(v, "weak_type", False)))
                        for v in baked]
        self._fun = jcore.jaxpr_as_fun(jcore.ClosedJaxpr(traced.jaxpr, []))
        options = config.jacfwd
        argnums = options.argnums
        count = len(traced.args)
        listed = argnums if isinstance(argnums, list) else [] if argnums is None else [argnums]
        if any(not -count <= a < count for a in listed):
            raise Untraceable("argnums outside the arguments")  # the plain run explains it
        fix = lambda a: a % count  # noqa: E731  the extra argument is last: never counted
        argnums = (tuple(map(fix, argnums)) if isinstance(argnums, list)
                   else None if argnums is None else fix(argnums))
        problem_vars = dict(zip(traced.names, traced.variables))
        self.jf = jacfwd(self._call, grad_vars=_grad_vars(_Named(problem_vars), config),
                         argnums=argnums, has_aux=options.has_aux,
                         return_value=options.return_value, holomorphic=options.holomorphic,
                         shards=config.execution.shards, chunk_size=config.execution.chunk_size,
                         sparsity=_sparsity(config))
        self.window: int | None = config.execution.batch_size

    def _call(self, *call_args):
        *args, extra = call_args
        lifts = list(self._consts)
        for slot, value in zip(self.lifted, extra):
            lifts[slot] = value
        rep = self.traced
        outs = self._fun(*lifts, *rep.array_leaves(tuple(args)),
                         *[v.value for v in rep.variables])
        count = rep.out_tree.num_leaves
        for name, var, new in zip(rep.names, rep.variables, outs[count:]):
            if name in rep.written:  # as func writes it: never a constant of the call
                var.value = new
        return jax.tree_util.tree_unflatten(rep.out_tree, outs[:count])

    def fits(self, point: _Point) -> bool:
        return all(same(point.lifts[s], self.baked[s]) for s in range(len(self.baked))
                   if s not in self.lifted)


class _Named:
    """What ``_grad_vars`` reads of a problem: its named Variables."""

    def __init__(self, variables: dict):
        self.variables = variables


class Chunk:
    """This process's programs, by structure key (the most recent ``KEPT_PROGRAMS``), and what
    it compiled: ``built`` counts new programs."""

    def __init__(self):
        self.programs: collections.OrderedDict[str, Program] = collections.OrderedDict()
        self.built = 0

    def run(self, items: list[tuple[int, Config, dict]], max_workers: int | None
            ) -> Iterator[Done]:
        """Every point of ``items`` (``(index, config, point)``), as each is stored or fails."""
        batches: dict[str, tuple[Traced, list[_Point], list[int]]] = {}
        for index, config, point in items:
            start = time.perf_counter()
            if config.execution.shards is not None:  # its program ships to shard workers,
                yield _alone(index, config, point, max_workers, start)  # a lifted one cannot
                continue
            try:
                store.check_destination(config.output.path, config.output.overwrite)
                problem = load_problem(config.problem, config.params)
                traced = trace(problem, _options(config))
            except Untraceable:
                yield _alone(index, config, point, max_workers, start)
                continue
            except Exception as err:  # recorded; the sweep goes on
                yield Done(index, f"{type(err).__name__}: {err}", time.perf_counter() - start,
                           None)
                continue
            if config.jacfwd.sparsity is not None:  # one pattern per batch, exact at each
                traced.key = _key(traced.key, traced.constants(config.jacfwd.grad_vars))
            seconds = time.perf_counter() - start
            rep, points, held = batches.setdefault(traced.key, (traced, [], [0]))
            points.append(_shared(rep, traced, index, config, point, seconds, held))
            if len(points) >= BATCH_POINTS or held[0] >= BATCH_BYTES:
                del batches[traced.key]
                yield from self._batch(rep, points, max_workers)
        for rep, points, _ in batches.values():
            yield from self._batch(rep, points, max_workers)

    def _batch(self, rep: Traced, points: list[_Point], max_workers: int | None
               ) -> Iterator[Done]:
        written: set[int] = set()
        try:
            program = self._program(rep, points)
            for done in _map(program, points, max_workers):
                written.add(done.index)
                yield done
        except Exception:  # the batch's map failed: each point alone says why, if it fails
            for p in points:
                if p.index not in written:
                    yield _alone(p.index, p.config, p.point, max_workers, time.perf_counter())

    def _program(self, rep: Traced, points: list[_Point]) -> Program:
        old = self.programs.get(rep.key)
        if old is not None and all(old.fits(p) for p in points):
            self.programs.move_to_end(rep.key)
            return old
        baked = old.baked if old is not None else points[0].lifts
        lifted = set(old.lifted if old is not None else ())
        if old is None and points[0].config.jacfwd.sparsity is None:
            # dense: every scalar is an input from the start (a parameter, most likely), so
            # later batches with other values fit; a sparse program keeps what does not
            # change baked in, where detection sees its value
            lifted.update(s for s, value in enumerate(baked) if np.ndim(value) == 0)
        lifted.update(s for s in range(len(baked))
                      if any(not same(p.lifts[s], baked[s]) for p in points))
        program = Program(rep if old is None else old.traced, baked, tuple(sorted(lifted)),
                          points[0].config)
        self.programs[rep.key] = program
        self.programs.move_to_end(rep.key)
        while len(self.programs) > KEPT_PROGRAMS:
            self.programs.popitem(last=False)
        self.built += 1
        return program


def _key(structure: str, constants: str) -> str:
    """A sparse batch's key: its structure, and the constants its pattern is detected with
    (points whose connectivity differs get their own exact pattern, as runs of their own)."""
    return structure + "-" + hashlib.blake2b(constants.encode(), digest_size=6).hexdigest()


def _options(config: Config) -> str:
    """The config's options that are not the point's values: part of the structure key."""
    raw = config.model_dump(mode="json")
    for key in ("params", "output", "name", "sweep"):
        raw.pop(key, None)
    raw["format"] = config.output.format
    return json.dumps(raw, sort_keys=True, default=str)


def _shared(rep: Traced, traced: Traced, index: int, config: Config, point: dict,
            seconds: float, held: list[int]) -> _Point:
    """The point's inputs, each value equal to the batch's first point's replaced by that one
    (so a batch holds one copy of what its points share); ``held`` counts the bytes of the
    others."""
    def share(mine: list, first: list) -> list:
        out = []
        for x, y in zip(mine, first):
            if x is not y and same(x, y):
                x = y
            elif x is not y:
                held[0] += int(np.asarray(x).nbytes)
            out.append(x)
        return out

    leaves = traced.array_leaves(traced.args)
    values = [v._value for v in traced.variables]
    return _Point(index, config, point,
                  share(traced.lifts, rep.lifts),
                  share(leaves, rep.array_leaves(rep.args)),
                  share(values, [v._value for v in rep.variables]), seconds)


def _alone(index: int, config: Config, point: dict, max_workers: int | None, start: float
           ) -> Done:
    """A point run on its own, as a sweep ran every point before programs were shared."""
    try:
        run_one(config, point, max_workers=max_workers)
    except Exception as err:
        return Done(index, f"{type(err).__name__}: {err}", time.perf_counter() - start, None)
    return Done(index, None, time.perf_counter() - start, None)


def _stack(column: list) -> tuple[Any, int | None]:
    """One input over the points: as it is when every point has the same (axis None), else
    stacked along a new axis 0 (keeping JAX weak types)."""
    if all(x is column[0] or same(x, column[0]) for x in column[1:]):
        return column[0], None
    return jnp.stack([jnp.asarray(x) for x in column]), 0


def _map(program: Program, points: list[_Point], max_workers: int | None) -> Iterator[Done]:
    """The batch's map, each point written to its folder as its last part arrives."""
    start = time.perf_counter()
    rep, first = program.traced, points[0]
    columns = zip(*[p.leaves for p in points])  # per array leaf of the arguments: its values
    stacked = iter([_stack(list(column)) for column in columns])
    full = [next(stacked) if is_array else (x, None)
            for x, is_array in zip(jax.tree_util.tree_leaves(rep.args), rep.arrays)]
    args, axes = _arguments(rep, full, len(points))
    states = {}
    for var, column in zip(rep.variables, zip(*[p.values for p in points])):
        value, axis = _stack(list(column))
        if axis is not None or not same(value, var._value):
            states[var] = value if axis is not None else jnp.stack([value] * len(points))
    extra = [jnp.stack([jnp.asarray(p.lifts[s]) for p in points]) for s in program.lifted]
    extra.append(np.arange(len(points), dtype=np.int32))  # every map has points
    config = first.config
    call_args = (*args, extra)
    analysis = _analysis(config, _Single(rep.args), _Bound(program.jf, extra))
    if program.window is None:
        m, n = program.jf.flat_shape(*rep.args, [x[0] for x in extra])
        program.window = max(1, min(64, len(points), WINDOW_BYTES // max(1, 8 * m * n)))
    stream = program.jf.map_stream(call_args, {}, in_axes=(*axes, 0), states=states or None,
                                   batch_size=program.window,
                                   workers=_workers(config, max_workers))
    units = stream.layout.basis.n if stream.plan is None else stream.plan.num_colors
    pieces: dict[int, list] = collections.defaultdict(list)
    covered = collections.Counter()
    try:
        for part in stream.parts:
            for i in range(part.p0, part.p1):
                values = [v[i - part.p0] for v in part.values]
                pieces[i].append((part.start, values) if stream.plan is None else
                                 _sparse_shard(part.start, part.stop, values))
                covered[i] += part.stop - part.start
                if covered[i] == units:
                    batch = {"batch_points": len(points),
                             "batch_s": time.perf_counter() - start}  # so far
                    yield _write(stream, pieces.pop(i), points[i], i, analysis, program, batch)
    finally:
        stream.cancel()


def _arguments(rep: Traced, full: list, count: int) -> tuple[tuple, tuple]:
    """The map's positional arguments and in_axes: an argument any of whose leaves differ
    between points carries the points (each of its leaves stacked), else it is the same at
    every point."""
    args, axes, at = [], [], 0
    for arg in rep.args:
        tree = jax.tree_util.tree_structure(arg)
        mine = full[at:at + tree.num_leaves]
        batched = any(axis is not None for _, axis in mine)
        leaves = [x if axis is not None or not batched else jnp.stack([jnp.asarray(x)] * count)
                  for x, axis in mine]
        args.append(jax.tree_util.tree_unflatten(tree, leaves))
        axes.append(0 if batched else None)
        at += tree.num_leaves
    return tuple(args), tuple(axes)


def _sparse_shard(start: int, stop: int, values: list) -> Any:
    from ..core._plan import SparseShard

    return SparseShard(start, stop, values)


class _Single:
    """What ``_analysis`` reads of a problem: a single point's arguments."""

    def __init__(self, args: tuple):
        self.args, self.is_map = args, False


class _Bound:
    """``jf.flat_shape`` of the program at its first point (the extra argument included)."""

    def __init__(self, jf: Any, extra: list):
        self.jf, self.extra = jf, [x[0] for x in extra]

    def flat_shape(self, *args):
        return self.jf.flat_shape(*args, self.extra)


def _write(stream: Any, shards: list, point: _Point, i: int, analysis: Any, program: Program,
           batch: dict) -> Done:
    """Point ``i`` of the batch written to its own folder, as its own run writes it."""
    start = time.perf_counter()
    pick = lambda tree: None if tree is None else jax.tree_util.tree_map(  # noqa: E731
        lambda a: a[i], tree)
    single = JacStream(stream.layout, pick(stream.value), pick(stream.aux), iter(shards),
                       plan=stream.plan, analysis=analysis)
    config = point.config
    timings = {"factory_s": point.seconds, **batch}  # factory and trace; the batch's map
    meta = _metadata(config, point.point, timings)
    meta["program"] = {"key": program.traced.key, "lifted": len(program.lifted)}
    try:
        store.write_result(config.output.path, single, format=config.output.format,
                           overwrite=config.output.overwrite, metadata=meta)
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    else:
        error = None
    seconds = point.seconds + batch["batch_s"] / batch["batch_points"] + (
        time.perf_counter() - start)
    return Done(point.index, error, seconds, program.traced.key)
