"""The tangent basis (the flat differentiated input and column ranges over it) and the layout
that turns rows of J^T back into the Jacobian structure that ``jacfwd`` returns."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax._src.lax.lax import _convert_element_type  # what jax.jacfwd sets weak types with

_NONE_TREE = jax.tree_util.tree_structure(None)


def weakly_typed(x: Any, weak: bool) -> Any:
    """``x`` with JAX's weak type set (as ``jax.jacfwd`` gives each block its output's)."""
    return _convert_element_type(x, x.dtype, weak_type=True) if weak else x


@dataclasses.dataclass(frozen=True)
class TangentBasis:
    """Standard basis of the flat input: column ``j`` is a one-hot tangent of one input leaf.

    The identity is never materialised: ``one_hot(cols)`` builds the tangents of a few columns.
    """

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def from_leaves(cls, leaves: Sequence[Any]) -> TangentBasis:
        return cls(tuple(tuple(np.shape(x)) for x in leaves),
                   tuple(np.dtype(x.dtype) for x in leaves))

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(o) for o in np.cumsum((0,) + self.sizes[:-1]))

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def split(self, shards: int) -> list[tuple[int, int]]:
        """Contiguous, balanced column ranges; never more ranges than columns."""
        return split_range(self.n, shards)

    def one_hot(self, cols: jax.Array) -> list[jax.Array]:
        """The tangents of columns ``cols``: one array ``(len(cols), *shape)`` per leaf."""
        return [jax.nn.one_hot(cols - off, size, dtype=dtype).reshape(cols.shape + shape)
                for off, size, shape, dtype in zip(self.offsets, self.sizes, self.shapes,
                                                   self.dtypes)]


def split_range(total: int, shards: int) -> list[tuple[int, int]]:
    """``[0, total)`` as contiguous, balanced ranges; never more ranges than items."""
    k = max(1, min(shards, total))
    bounds = [total * i // k for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def chunking(length: int, chunk_size: int | None) -> tuple[int, int]:
    """(number of chunks, columns per chunk): balanced, so the last chunk overlaps the one
    before it by less than one chunk instead of being padded."""
    if not chunk_size or chunk_size >= length:
        return 1, length
    count = -(-length // chunk_size)
    return count, -(-length // count)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each Jacobian block lives: input leaves (the basis), input and output trees.

    ``in_tree`` is the structure of ``(var_part, arg_part)``, either of which may be ``None``.
    """

    basis: TangentBasis
    in_tree: Any
    out_tree: Any
    out_shapes: tuple[tuple[int, ...], ...]
    out_dtypes: tuple[np.dtype, ...]
    out_weak: tuple[bool, ...] = ()  # JAX weak types of the output leaves (none when empty)

    def weak(self, k: int) -> bool:
        return bool(self.out_weak) and self.out_weak[k]

    @property
    def has_vars(self) -> bool:
        return self.in_tree.children()[0] != _NONE_TREE

    @property
    def has_args(self) -> bool:
        return self.in_tree.children()[1] != _NONE_TREE

    def assemble(self, rows: Sequence[Any], xp=np) -> Any:
        """Rows of J^T (one ``(n, *out_shape)`` array per output leaf) -> ``var_jac``,
        ``arg_jac`` or ``(var_jac, arg_jac)``, output-first as ``jax.jacfwd`` nests them."""
        return self.structure([self._blocks(r, xp) for r in rows])

    def from_columns(self, columns: Sequence[Any]) -> Any:
        """Columns of J (one ``(*out_shape, n)`` array per output leaf) -> the Jacobian:
        slices and reshapes only."""
        return self.structure([
            [weakly_typed(c[..., off:off + size].reshape(c.shape[:-1] + shape), self.weak(k))
             for off, size, shape in zip(self.basis.offsets, self.basis.sizes, self.basis.shapes)]
            for k, c in enumerate(columns)])

    def structure(self, blocks: list[list[Any]]) -> Any:
        """``blocks[k][i]``, the block of output leaf k and input leaf i -> the Jacobian."""
        per_output = [jax.tree_util.tree_unflatten(self.in_tree, b) for b in blocks]
        var_jac = jax.tree_util.tree_unflatten(self.out_tree, [p[0] for p in per_output])
        arg_jac = jax.tree_util.tree_unflatten(self.out_tree, [p[1] for p in per_output])
        if not self.has_args:
            return var_jac
        if not self.has_vars:
            return arg_jac
        return var_jac, arg_jac

    def _blocks(self, rows: Any, xp) -> list[Any]:
        out_shape = tuple(rows.shape[1:])
        blocks = []
        for off, size, shape in zip(self.basis.offsets, self.basis.sizes, self.basis.shapes):
            block = rows[off:off + size].reshape(shape + out_shape)
            perm = tuple(range(len(shape), len(shape) + len(out_shape))) + tuple(range(len(shape)))
            blocks.append(xp.transpose(block, perm))
        return blocks

    def empty_blocks(self) -> list[list[np.ndarray]]:
        """Uninitialised Jacobian blocks, ``[k][i]`` of shape ``out_shape_k + in_shape_i``."""
        return [[np.empty(o + i, d) for i in self.basis.shapes]
                for o, d in zip(self.out_shapes, self.out_dtypes)]

    def scatter(self, blocks: list[list[np.ndarray]], start: int, columns: Sequence[Any]) -> None:
        """Copies the J columns ``[start, start + length)`` (``columns[k]`` of shape
        ``(*out_shape_k, length)``) into ``blocks``: contiguous runs, no transposition."""
        stop = start + columns[0].shape[-1]
        for i, (off, size) in enumerate(zip(self.basis.offsets, self.basis.sizes)):
            lo, hi = max(start, off), min(stop, off + size)
            for k, cols in enumerate(columns if lo < hi else ()):
                cols = cols.reshape(-1, cols.shape[-1])
                dst = blocks[k][i].reshape(cols.shape[0], size)
                dst[:, lo - off:hi - off] = cols[:, lo - start:hi - start]
