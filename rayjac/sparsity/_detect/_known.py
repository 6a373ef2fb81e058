"""Known inputs: values that detection may read (a read-only Variable's value, as a closure
constant's), and what the pattern read of them.

A pattern detected with a known input is reused until that input changes in a way the pattern
may depend on. ``Uses`` records, per known input, whether detection read only its zeros
(``masks``: a new value with the same zeros keeps the pattern) or more (``values``: any new
value must be detected again). Untracked values count as reading every known input.

Every known value carries ``src`` (the known inputs it derives from; ``FIXED``: none),
``nz`` (a superset of its nonzeros for every value of those inputs with the same zeros) and
``level``, how much of it those zeros fix:

* ``SUPERSET``: ``nz`` only bounds the nonzeros (``W * c`` may underflow to zero);
* ``MASK``: ``nz`` is exactly where it is nonzero (``W.T``, ``-W``, ``W[2:]``);
* ``VALUE``: the value itself is fixed by the zeros (``W != 0``, a boolean Variable).

A rule reads a value with ``Uses.value`` (a decision on all of it: an index, a predicate) or
``Uses.nonzero`` (only where it is nonzero: a known zero factor prunes a product).

Example: with ``W`` known, ``W.T @ x`` reads only ``W``'s zeros, so every ``W`` with the same
zeros has the same pattern; ``x[W.astype(int)]`` reads its values.
"""

from __future__ import annotations

import numpy as np

from ._deps import Val, bind

FIXED: frozenset = frozenset()
SUPERSET, MASK, VALUE = 0, 1, 2


class Uses:
    """What the rules of one detection read of the known inputs."""

    def __init__(self):
        self.values: set[int] = set()
        self.masks: set[int] = set()
        self.untracked = False  # a value of unknown origin was read: possibly any input

    def _mark(self, src: frozenset | None, whole: bool) -> None:
        if src is None:
            self.untracked = True
        elif whole:
            self.values.update(src)
        else:
            self.masks.update(src)

    def value(self, v: Val) -> np.ndarray | None:
        """``v``'s known value, for a decision that reads all of it."""
        if v.value is not None and v.src != FIXED:
            self._mark(v.src, whole=v.nz is None or v.level < VALUE)
        return v.value

    def nonzero(self, v: Val) -> np.ndarray | None:
        """A superset of where ``v`` is nonzero (``v.shape``), or ``None`` when unknown."""
        if v.value is None:
            return None
        if v.src == FIXED:
            return v.value != 0
        self._mark(v.src, whole=v.nz is None)
        return v.nz if v.nz is not None else v.value != 0


def fixed(shape, dtype, value: np.ndarray | None) -> Val:
    """A true constant (a literal or closure constant)."""
    return Val(tuple(shape), dtype, None, value, FIXED, None, VALUE)


def known_input(index: int, shape, dtype, value: np.ndarray) -> Val:
    """Known input ``index``: its zeros are exact, and a boolean one is fixed by them."""
    level = VALUE if np.dtype(dtype) == np.bool_ else MASK
    return Val(tuple(shape), dtype, None, value, frozenset([index]), value != 0, level)


def derived(eqn, args: list[Val], avals, outs: list) -> list[Val]:
    """The folded outputs of ``eqn`` with the origin of their values."""
    if any(a.src is None for a in args):
        return [Val(a.shape, a.dtype, None, o) for a, o in zip(avals, outs)]
    src = FIXED.union(*(a.src for a in args))
    if not src:
        return [fixed(a.shape, a.dtype, o) for a, o in zip(avals, outs)]
    if all(a.level == VALUE for a in args if a.src):  # a function of the zeros alone
        return [Val(a.shape, a.dtype, None, o, src, None if o is None else o != 0, VALUE)
                for a, o in zip(avals, outs)]
    try:
        bounds = _support(eqn, args)
    except Exception:  # noqa: BLE001 - no bound is always safe: the value is then read
        bounds = None
    if bounds is None or len(bounds) != len(outs):
        bounds = [(None, SUPERSET)] * len(outs)
    return [Val(a.shape, a.dtype, None, o, src, nz, level if nz is not None else SUPERSET)
            for a, o, (nz, level) in zip(avals, outs, bounds)]


def _mask(v: Val) -> np.ndarray | None:
    return v.nz if v.src else (None if v.value is None else v.value != 0)


def _level(args) -> int:
    return min((a.level for a in args if a.src), default=VALUE)


# Unary primitives whose result is zero exactly where the operand is.
_SAME_ZEROS = {"neg", "copy", "copy_p", "abs", "sign"}
# Unary primitives whose result may only be zero more often than the operand (positive
# integer powers, as ``x ** 0`` and ``0 ** -1`` are not zero).
_FEWER = {"real", "imag", "conj", "reduce_precision"}
# Layout primitives: data operands are moved, the others (indices, predicates, the padding
# value) must be fixed by the zeros; applied to the masks, they move the masks.
_MOVES = {"reshape": 1, "squeeze": 1, "expand_dims": 1, "transpose": 1, "broadcast_in_dim": 1,
          "rev": 1, "slice": 1, "concatenate": None, "pad": 1, "gather": 1, "dynamic_slice": 1,
          "select_n": -1}
_UNION = {"add", "add_any", "sub", "max", "min", "or"}


def _support(eqn, args: list[Val]) -> list[tuple[np.ndarray | None, int]] | None:
    """(nz, level) per output of ``eqn`` on known values, from the operands' masks."""
    name = eqn.primitive.name
    masks = [_mask(a) for a in args]
    if any(m is None for m in masks):
        return None
    if name in _SAME_ZEROS | _FEWER or (name == "integer_pow" and eqn.params["y"] > 0):
        return [(masks[0], min(args[0].level, MASK) if name in _SAME_ZEROS else SUPERSET)]
    if name == "convert_element_type":
        return _convert(args[0], eqn.outvars[0].aval.dtype)
    if name in _MOVES:
        return _move(eqn, args, masks)
    if name in _UNION:
        return [(np.logical_or(*masks) if len(masks) == 2 else masks[0], SUPERSET)]
    if name in ("mul", "and"):
        return [(np.logical_and(*masks), SUPERSET)]
    if name == "div":
        return [(np.broadcast_to(masks[0], eqn.outvars[0].aval.shape), SUPERSET)]
    if name in ("ne", "eq") and args[1].src == FIXED and not masks[1].any():
        return _compare_zero(name, args[0], masks[0])
    if name in ("reduce_sum", "reduce_or"):  # not max/min: empty ones are -inf/inf
        return [(masks[0].any(axis=tuple(eqn.params["axes"])), SUPERSET)]
    if name == "dot_general":
        return [(_bool_product(eqn, masks), SUPERSET)]
    return None


def _convert(x: Val, to) -> list | None:
    """Conversions that keep every nonzero nonzero (widening, to bool, from integers)."""
    src, to = np.dtype(x.dtype), np.dtype(to)
    if to == np.bool_:
        return [(x.nz, VALUE if x.level >= MASK else SUPERSET)]
    widening = to.kind == src.kind and to.itemsize >= src.itemsize
    if src.kind == "b" or (src.kind in "iu" and (to.kind in "fc" or (
            to.kind in "iu" and to.itemsize >= src.itemsize))) or (src.kind in "fc" and (
            widening or (src.kind == "f" and to.kind == "c" and to.itemsize >= 2 * src.itemsize))):
        return [(x.nz, min(x.level, MASK))]
    return None


def _move(eqn, args: list[Val], masks: list[np.ndarray]) -> list | None:
    data = _MOVES[eqn.primitive.name]
    moved = (range(len(args)) if data is None else
             range(1, len(args)) if data == -1 else range(1))
    if any(a.src and a.level < VALUE for i, a in enumerate(args) if i not in moved):
        return None  # an index or predicate that depends on more than the zeros
    params = dict(eqn.params)
    if "fill_value" in params:
        params["fill_value"] = True  # out of bounds: possibly nonzero
    operands = [masks[i] if i in moved else args[i].value for i in range(len(args))]
    if eqn.primitive.name == "pad":
        operands[1] = np.asarray(masks[1])
    outs = bind(eqn.primitive, params, operands)
    level = _level([args[i] for i in moved])
    if "fill_value" in eqn.params:  # a fill may be a zero where nz says possibly nonzero
        level = SUPERSET
    return [(np.asarray(o, bool), level) for o in outs]


def _compare_zero(name: str, x: Val, mask: np.ndarray) -> list:
    """``x != 0`` is ``x``'s mask: fixed by the zeros when the mask is exact."""
    if x.level >= MASK:
        return [(mask if name == "ne" else ~mask, VALUE)]
    return [(mask if name == "ne" else np.ones_like(mask), SUPERSET)]


def _bool_product(eqn, masks: list[np.ndarray]) -> np.ndarray:
    """Where ``dot_general`` may be nonzero: some product of two possible nonzeros."""
    params = dict(eqn.params, preferred_element_type=np.float32)
    out = bind(eqn.primitive, params, [m.astype(np.float32) for m in masks])[0]
    return np.asarray(out) > 0
