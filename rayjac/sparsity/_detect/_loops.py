"""Loops: ``while`` and ``scan`` are simulated step by step while that stays exact and cheap,
then carried to a fixed point that covers every later iteration.

The fixed point starts from the current carry and joins in one more body application until
nothing changes: dependencies only grow and known values only become unknown, so it ends,
and the result covers the carry after any number of further steps (zero included).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._deps import Val, group, join, rows, same, same_value, stack

_EXACT_STEPS = 1000  # simulated iterations before the fixed point takes over
_CHECK_ITERS = 4  # body applications a cheap "has it saturated?" check may spend
_FIXPOINT_ITERS = 500  # then the loop falls back to "every output depends on every input"


def _settled(new, old) -> bool:
    return all(same(a.deps, b.deps) for a, b in zip(new, old))


def _repeats(ctx, new, old) -> bool:
    """The abstract state is unchanged, so a step-independent body repeats it forever."""
    return _settled(new, old) and all(
        (a.value is None and b.value is None) or same_value(ctx.value(a), ctx.value(b))
        for a, b in zip(new, old))


def _fixpoint(ctx, step, start, limit: int, grow: bool):
    """The carry after any number of ``step``s from ``start`` and the extra outputs of a step
    from it; ``None`` if not reached in ``limit`` steps (or, unless ``grow``, if the
    dependencies would have to grow)."""
    state = list(start)
    for _ in range(limit):
        out, extra = step(state)
        joined = [join(ctx, [s, o]) for s, o in zip(state, out)]
        if _repeats(ctx, joined, state):
            return state, extra
        if not grow and not _settled(joined, state):
            return None
        state = joined
    return None


def while_loop(ctx, eqn, args):
    """Exact while the condition is known; otherwise a fixed point over all trip counts."""
    p = eqn.params
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = args[:nc], args[nc:nc + nb], list(args[nc + nb:])

    def body(c):
        return ctx.run(p["body_jaxpr"], [*body_consts, *c]), []

    check = 1
    for count in range(_EXACT_STEPS):
        go = ctx.value(ctx.run(p["cond_jaxpr"], [*cond_consts, *carry])[0])
        if go is None:
            break
        if not go:
            return carry
        new = body(carry)[0]
        settled, carry = _settled(new, carry), new
        if settled and count + 1 >= check:
            found = _fixpoint(ctx, body, carry, _CHECK_ITERS, grow=False)
            if found is not None:
                return found[0]
            check *= 2
    found = _fixpoint(ctx, body, carry, _FIXPOINT_ITERS, grow=True)
    if found is None:
        return ctx.fallback(eqn, args, why=_no_fixpoint("while"))
    return found[0]


def _no_fixpoint(name: str) -> str:
    return (f"a '{name}' loop did not reach a fixed point of its dependencies within "
            f"{_FIXPOINT_ITERS} iterations, so each of its outputs is assumed to depend on "
            "all of its inputs")


def _step_of(x: Val, t: int) -> Val:
    """Slice ``t`` of a scanned-over input."""
    size = x.size // x.shape[0]
    if x.value is not None:
        return dataclasses.replace(x, shape=x.shape[1:], value=x.value[t],
                                   nz=None if x.nz is None else x.nz[t])
    return Val(x.shape[1:], x.dtype, rows(x.deps, t * size, (t + 1) * size))


def _any_step(x: Val, steps) -> Val:
    """What slice ``t`` may be for any ``t`` in ``steps``."""
    size = x.size // x.shape[0]
    position = np.full((x.shape[0], size), -1, dtype=np.int64)
    position[list(steps)] = np.arange(size)
    return Val(x.shape[1:], x.dtype, group(x.deps, position, size))


def _stacked(steps: list[Val], aval, n: int) -> Val:
    """Per-step outputs stacked along a new leading axis."""
    deps = stack([(v.deps, v.size) for v in steps], n)
    if not (steps and deps is None and all(v.value is not None for v in steps)):
        return Val(aval.shape, aval.dtype, deps)
    value = np.stack([v.value for v in steps]).astype(aval.dtype).reshape(aval.shape)
    if any(v.src is None for v in steps):
        return Val(aval.shape, aval.dtype, None, value)
    nz = None if any(v.src and v.nz is None for v in steps) else np.stack(
        [v.nz if v.src else v.value != 0 for v in steps]).reshape(aval.shape)
    return Val(aval.shape, aval.dtype, None, value, frozenset().union(*(v.src for v in steps)),
               nz, min((v.level for v in steps if v.src), default=2) if nz is not None else 0)


def scan(ctx, eqn, args):
    """Simulated step by step (exactly, with each step's slice of ``xs``) until the carry
    saturates; the remaining steps then take the saturated outputs."""
    p = eqn.params
    nc, nk, length = p["num_consts"], p["num_carry"], p["length"]
    consts, carry, xs = args[:nc], list(args[nc:nc + nk]), args[nc + nk:]
    order = list(range(length))[::-1] if p["reverse"] else list(range(length))
    ys: list[list] = [[None] * length for _ in eqn.outvars[nk:]]

    def body(c, x):
        out = ctx.run(p["jaxpr"], [*consts, *c, *x])
        return out[:nk], out[nk:]

    def fill(steps, outs):
        for t in steps:
            for j, y in enumerate(outs):
                ys[j][t] = y

    carry = _scan_steps(ctx, body, carry, xs, order, fill)
    if carry is None:
        return ctx.fallback(eqn, args, why=_no_fixpoint("scan"))
    return carry + [_stacked(steps, v.aval, ctx.n) for steps, v in zip(ys, eqn.outvars[nk:])]


def _scan_steps(ctx, body, carry, xs, order, fill):
    """The final carry (``None`` if no fixed point was found); per-step outputs to ``fill``."""
    static = all(x.deps is None and x.value is None for x in xs)
    quiet = all(x.deps is None for x in xs)
    check = 1
    for count, t in enumerate(order):
        if count >= _EXACT_STEPS:
            return _saturate(ctx, body, carry, xs, order[count:], fill, _FIXPOINT_ITERS,
                             grow=True)
        new, y = body(carry, [_step_of(x, t) for x in xs])
        fill([t], y)
        prev, carry, rest = carry, new, order[count + 1:]
        if rest and static and _repeats(ctx, new, prev):
            fill(rest, y)
            return carry
        if rest and quiet and count + 1 >= check and _settled(new, prev):
            found = _saturate(ctx, body, carry, xs, rest, fill, _CHECK_ITERS, grow=False)
            if found is not None:
                return found
            check *= 2  # not saturated yet: simulate on, and check less often
    return carry


def _saturate(ctx, body, carry, xs, steps, fill, limit: int, grow: bool):
    """The carry after ``steps`` by a fixed point (``None`` if not found); their outputs."""
    found = _fixpoint(ctx, lambda c: body(c, [_any_step(x, steps) for x in xs]), carry, limit,
                      grow)
    if found is None:
        return None
    fill(steps, found[1])
    return found[0]
