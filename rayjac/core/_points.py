"""The points of a map: a call's flat inputs where some leaves carry B points along axis 0, the
rectangles (points x columns or colours) a sharded map is cut into, and the windows of at most
``batch_size`` points that go through a kernel at once."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, NamedTuple

import numpy as np

from ._basis import split_range


class MapPart(NamedTuple):
    """One rectangle of a map: points ``[p0, p1)`` x columns (dense) or colours (sparse)
    ``[start, stop)``. Dense: ``values[k]`` holds J^T rows, ``(p1 - p0, stop - start,
    *out_shape_k)``; sparse: the nonzeros of those colours at each point, ``(p1 - p0,
    len(plan.positions(k, start, stop)))``, in ``plan.positions`` order. With an analysis
    computed where the part was (whole points only), ``spectra`` holds each point's
    eigenvalues ``(p1 - p0, k)``, and ``values`` is None when the Jacobian is not kept."""

    p0: int
    p1: int
    start: int
    stop: int
    values: list[np.ndarray] | None
    spectra: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class Points:
    """The flat inputs of a map (``diff``, ``const``, ``state``, as a ``TangentProgram``'s
    kernels take them): a leaf with axis 0 in ``axes`` holds ``count`` points along its axis 0,
    the others are the same at every point."""

    groups: tuple[list, list, list]
    axes: tuple[tuple[int | None, ...], ...]
    count: int

    @functools.cached_property
    def weak(self) -> tuple[tuple[bool, ...], ...]:
        """JAX weak types of the leaves: numpy windows of them lose theirs."""
        return tuple(tuple(bool(getattr(x, "weak_type", False)) for x in g) for g in self.groups)

    def _map(self, fn) -> tuple[list, list, list]:
        return tuple([fn(x) if a == 0 else x for x, a in zip(g, ax)]
                     for g, ax in zip(self.groups, self.axes))

    def point(self, i: int) -> tuple[list, list, list]:
        """The inputs of point ``i`` alone (as a single call takes them)."""
        return self._map(lambda x: x[i])

    def window(self, first: int, size: int, end: int) -> tuple[list, list, list]:
        """Points ``[first, first + size)`` as numpy arrays, the ones at or past ``end``
        repeating point ``end - 1`` (the padding of a last, short window)."""
        index = np.minimum(np.arange(first, first + size), end - 1)
        return self._map(lambda x: np.asarray(x)[index])


def windows(p0: int, p1: int, size: int | None) -> Iterator[tuple[int, int, int]]:
    """``(w0, q0, q1)``: kernel windows of ``size`` points starting at ``w0`` whose points
    ``[q0, q1)`` (``q0 - w0`` in) cover ``[p0, p1)`` once. The last window is shifted back to
    end at ``p1`` (recomputing a few points), so every window has exactly ``size`` points and one
    kernel serves any number of them; windows past ``p1`` exist only when ``p1 - p0 < size``."""
    size = size or p1 - p0
    for q0 in range(p0, p1, size):
        yield max(p0, min(q0, p1 - size)), q0, min(q0 + size, p1)


def map_parts(count: int, size: int, shards: int) -> list[tuple[int, int, int, int]]:
    """``(p0, p1, start, stop)``: ``count`` points x ``size`` columns (or colours) as at most
    ``shards`` balanced rectangles: ranges of whole points, or, with fewer points than shards,
    each point's columns split among its share of the shards."""
    if count >= shards or size <= 1:
        return [(p0, p1, 0, size) for p0, p1 in split_range(count, shards)]
    return [(i, i + 1, start, stop) for i in range(count)
            for start, stop in split_range(size, shards * (i + 1) // count - shards * i // count)]
