"""Why a detected pattern saves little: the values detection could not read (those of the
Variables ``func`` writes or a map gives per point, and the call's arguments) tried as known,
and named in the warning when they would have pruned it."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

from ..sparsity import color_columns
from ..sparsity._coloring import num_colors
from ..sparsity._detect import detect_reads
from ._constants import concrete, describe, variable_names


class _Slot:
    """Stands for the ``k``-th array leaf of the call's other arguments."""

    def __init__(self, k: int):
        self.k = k


def argument_names(program: Any, count: int) -> list[str]:
    """Where each of the ``count`` array leaves of the non-differentiated arguments sits:
    ``argument 1``, ``argument 0['w']``, ``keyword argument `w```."""
    slots, static = iter(range(count)), iter(program.static_leaves)
    leaves = [_Slot(next(slots)) if dyn else next(static) for dyn in program.const_mask]
    tree = jax.tree_util.tree_unflatten(program.const_tree, leaves)
    names = [""] * count
    for path, leaf in jax.tree_util.tree_flatten_with_path(
            tree, is_leaf=lambda x: isinstance(x, _Slot))[0]:
        if isinstance(leaf, _Slot):
            where, rest = path[1], jax.tree_util.keystr(tuple(path[2:]))
            names[leaf.k] = (f"argument {where.idx}{rest}" if path[0].idx == 0 else
                             f"keyword argument `{where.key}`{rest}")
    return names


def blind_spots(program: Any, found: Any, diff: list, const: list, state: list,
                colors: int) -> tuple[list[str], int | None]:
    """The values that, known, would have pruned the pattern (their descriptions), and the
    colours it would then need; ``([], None)`` when none would help."""
    offset, candidates = len(diff), {}
    written, names = set(program.written), variable_names(program.func)
    for k, (where, x) in enumerate(zip(argument_names(program, len(const)), const)):
        if concrete(x):
            candidates[offset + k] = (where, x)
    for i, (var, x) in enumerate(zip(program.other_vars, state)):
        if var in written and concrete(x):
            candidates[offset + len(const) + i] = (describe(var, names) + ", which func "
                                                   "writes (a written Variable never prunes)", x)
        elif not concrete(x) and concrete(var._value):  # a map's points of it, or traced
            candidates[offset + len(const) + i] = (
                describe(var, names) + ", whose value differs per point (a map's states) or "
                "is traced, so it is no constant of the call", var._value)
    if not candidates:
        return [], None
    known = list(found.known)
    for i, (_, x) in candidates.items():
        known[i] = np.asarray(x)
    seeded = [True] * len(diff) + [False] * (len(known) - len(diff))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detection has warned once already
        pattern, reads = detect_reads(found.jaxpr, seeded, known)
    used = sorted((reads.values | reads.masks) & candidates.keys())
    coo = pattern.tocoo()
    better = num_colors(color_columns(coo.row, coo.col, coo.shape)) if used else colors
    if better >= colors:
        return [], None
    return [candidates[i][0] for i in used], better
