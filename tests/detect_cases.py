"""Oracle and catalogue for tests/test_detect.py: small functions, one or more per rule.

Each case is ``Case(name, f, args, seeded, exact, positive)``: ``args`` are example inputs
(float ones are redrawn at every test point, the others kept), ``exact`` says the detected
pattern must equal the union of the dense Jacobian's nonzeros over the points (otherwise it
must only contain it), ``positive`` draws positive floats (for log, sqrt, ...).
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rayjac.sparsity import ConservativeRuleWarning, detect


class Case(NamedTuple):
    name: str
    f: Callable
    args: tuple
    seeded: tuple = (True,)
    exact: bool = True
    positive: bool = False
    oracle: Callable | None = None  # a function with the same Jacobian, for jvp-less ones
    warns: bool = False  # a primitive without a rule: a ConservativeRuleWarning is expected


def detected(f, args, seeded) -> np.ndarray:
    """The dense bool array of ``detect`` on ``f``'s jaxpr at abstract ``args``."""
    avals = [jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype) for a in args]
    pattern = detect(jax.make_jaxpr(f)(*avals), seeded)
    assert pattern.dtype == bool
    return pattern.toarray()


def _flat(f, seeded, shapes, dtypes):
    """``f`` as a map from the concatenated seeded inputs to its concatenated outputs."""
    which = [i for i, s in enumerate(seeded) if s]
    cuts = np.cumsum([int(np.prod(shapes[i])) for i in which])[:-1]

    def g(v, args):
        full = list(args)
        for i, piece in zip(which, jnp.split(v, cuts)):
            full[i] = piece.reshape(shapes[i]).astype(dtypes[i])
        outs = [jnp.asarray(o) for o in jax.tree_util.tree_leaves(f(*full))]
        return jnp.concatenate([jnp.ravel(o) if jnp.issubdtype(o.dtype, jnp.inexact)
                                else jnp.zeros(o.size) for o in outs] + [jnp.zeros(0)])
    return g, which


def dense_nonzeros(f, all_points, seeded) -> np.ndarray:
    """Where the dense ``jax.jacfwd`` Jacobian is non-zero (NaN counts) at any of the points."""
    shapes = [np.shape(a) for a in all_points[0]]
    dtypes = [jnp.asarray(a).dtype for a in all_points[0]]
    g, which = _flat(f, seeded, shapes, dtypes)
    jac_fn = jax.jit(jax.jacfwd(g))
    found = None
    for args in all_points:
        parts = [jnp.ravel(jnp.asarray(args[i])) for i in which]
        v = jnp.concatenate(parts) if parts else jnp.zeros(0)
        jac = np.asarray(jac_fn(v, tuple(jnp.asarray(a) for a in args)))
        nz = (jac != 0) | np.isnan(jac)
        found = nz if found is None else found | nz
    return found


def points(args, seed: int, count: int, positive: bool) -> list[tuple]:
    """Random float inputs (and their negatives, so every sign-based branch goes both ways)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        drawn = []
        for a in args:
            a = np.asarray(a)
            if not np.issubdtype(a.dtype, np.floating):
                drawn.append(a)
                continue
            x = rng.uniform(0.5, 2.0, a.shape) * (1 if positive else rng.choice([-1, 1], a.shape))
            drawn.append(x.astype(a.dtype))
        out.append(tuple(drawn))
        if not positive:
            out.append(tuple(-d if np.issubdtype(d.dtype, np.floating) else d for d in drawn))
    return out


def union_of_nonzeros(f, args, seeded, seed=0, count=3, positive=False) -> np.ndarray:
    return dense_nonzeros(f, points(args, seed, count, positive), seeded)


def check(case: Case, seed: int = 0) -> None:
    """The detected pattern contains (or, when exact, equals) the dense nonzeros."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = detected(case.f, case.args, case.seeded)
    caught = [str(w.message) for w in caught if issubclass(w.category, ConservativeRuleWarning)]
    assert bool(caught) == case.warns, caught
    want = union_of_nonzeros(case.oracle or case.f, case.args, case.seeded, seed,
                             positive=case.positive)
    assert got.shape == want.shape, (got.shape, want.shape)
    missing = np.argwhere(want & ~got)
    assert missing.size == 0, f"{case.name}: detected pattern misses entries {missing[:8]}"
    if case.exact:
        extra = np.argwhere(got & ~want)
        assert extra.size == 0, f"{case.name}: pattern has extra entries {extra[:8]}"


def f32(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


# Constants with zeros, closed over by the functions below (known at trace time).
_RNG = np.random.default_rng(42)
W_SPARSE = (_RNG.uniform(-1, 1, (6, 8)) * (_RNG.uniform(size=(6, 8)) < 0.3)).astype(np.float32)
IDX = np.array([3, 0, 7, 3, 5], dtype=np.int32)
IDX_ROWS = np.array([[0, 4, 4], [1, 2, 3], [3, 3, 0], [2, 0, 1]], dtype=np.int32)
MASK = np.array([1, 0, 2, 0, 0, 3, 1, 0], dtype=np.float32)
KERNEL = np.array([1.0, 0.0, -2.0], dtype=np.float32)
KERNEL_2D = (_RNG.uniform(-1, 1, (4, 1, 3, 3)) * (_RNG.uniform(size=(4, 1, 3, 3)) < 0.5)
             ).astype(np.float32)


def _stencil(x):
    return x[:-2] - 2 * x[1:-1] + x[2:] + x[1:-1] * jnp.sin(x[1:-1])


def _lorenz96(x, forcing=8.0):
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + forcing


def _rk4(x, dt=0.01):
    k1 = _lorenz96(x)
    k2 = _lorenz96(x + dt / 2 * k1)
    k3 = _lorenz96(x + dt / 2 * k2)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + _lorenz96(x + dt * k3))


def _brusselator(uv, n=4):
    u, v = uv[:n * n].reshape(n, n), uv[n * n:].reshape(n, n)

    def lap(w):
        return (jnp.roll(w, 1, 0) + jnp.roll(w, -1, 0) + jnp.roll(w, 1, 1)
                + jnp.roll(w, -1, 1) - 4 * w)
    du = 1.0 + u ** 2 * v - 4.4 * u + 10.0 * lap(u)
    dv = 3.4 * u - u ** 2 * v + 10.0 * lap(v)
    return jnp.concatenate([du.ravel(), dv.ravel()])


UNARY = [jnp.sin, jnp.cos, jnp.tanh, jnp.exp, jnp.abs, jnp.negative, jnp.square, jnp.arctan,
         jnp.sinh, jnp.cosh, jnp.arcsinh, jnp.expm1, jnp.exp2, jax.nn.sigmoid,
         jax.scipy.special.erf, jax.scipy.special.erfc, lambda x: jnp.tan(0.3 * x),
         lambda x: jnp.arcsin(0.4 * x), lambda x: jnp.arccos(0.4 * x),
         lambda x: jnp.arctanh(0.4 * x), lambda x: jax.scipy.special.erfinv(0.4 * x),
         lambda x: lax.reduce_precision(x, 5, 10), jnp.copy,
         jax.scipy.special.i0e, jax.scipy.special.i1e]
POSITIVE_UNARY = [jnp.log, jnp.sqrt, lax.rsqrt, jnp.cbrt, jnp.log1p, jax.scipy.special.gammaln,
                  jax.scipy.special.digamma, lambda x: jnp.arccosh(1.5 + x)]


def _cases() -> list[Case]:
    x8, x4x5 = f32(8), f32(4, 5)
    cases = [Case(f"unary{i}", f, (x8,)) for i, f in enumerate(UNARY)]
    cases += [Case(f"positive_unary{i}", f, (x8,), positive=True)
              for i, f in enumerate(POSITIVE_UNARY)]
    cases += [
        Case("zero_derivative", lambda x: jnp.floor(x) + jnp.ceil(x) + jnp.round(x)
             + jnp.sign(x) + (x > 0) + (x == 1) + (x <= 0), (x8,)),
        Case("stop_gradient", lambda x: lax.stop_gradient(x) * x + lax.stop_gradient(x[0]),
             (x8,)),
        Case("integer_ops", lambda x: ((x * 3).astype(jnp.int32) % 3 + (x.astype(jnp.int32)
             & 2)).astype(jnp.float32) + jnp.logical_and(x > 0, x < 1), (x8,)),
        Case("integer_output", lambda x: (jnp.argmax(x), x.astype(jnp.int32), x > 0, x * 2),
             (x8,)),
        Case("broadcast_binary", lambda x, y: x[:, None] * y[None, :] + x[0] - y[:, None].T,
             (f32(5), f32(4)), (True, True)),
        Case("add_sub_div", lambda x, y: (x + y) / (x - 3.0) - y / 2.0, (x8, x8), (True, True)),
        Case("pow_atan2_rem", lambda x, y: x ** y + jnp.arctan2(x, y) + jnp.fmod(x, y + 3),
             (x8, x8), (True, True), positive=True),
        Case("max_min_clamp", lambda x, y: jnp.maximum(x, y) + jnp.minimum(x[0], y)
             + lax.clamp(-0.9, x, 0.9) + lax.clamp(y, x, y + 1), (x8, x8), (True, True)),
        Case("mul_known_zero", lambda x: MASK * x + x * jnp.arange(8.0), (x8,)),
        Case("div_known_zero_numerator", lambda x: MASK / (x + 3.0), (x8,)),
        Case("integer_pow", lambda x: x ** 3 + x ** 0 + 1.0 / x ** 2, (x8,)),
        Case("select_where", lambda x, y: jnp.where(x > 0, x, 2 * y[::-1]), (x8, x8),
             (True, True)),
        Case("select_known", lambda x: jnp.where(jnp.arange(8) % 3 == 0, x, x[0]), (x8,)),
        Case("select_n_three", lambda x: lax.select_n(jnp.int32(x[0] > 0) + jnp.int32(x[1] > 0),
             x, 2 * x[::-1], jnp.roll(x, 1)), (x8,), exact=False),
        Case("convert", lambda x: x.astype(jnp.float16).astype(jnp.float32) * 2
             + x.astype(jnp.complex64).real, (x8,)),
        Case("complex", lambda x: jnp.abs(x * (1 + 2j) + jnp.roll(x, 1) * 1j)
             + jnp.angle(x + 1j), (x8,)),
        Case("complex_out", lambda x: jnp.exp(1j * x[:4]) * x[4:], (x8,)),
        Case("float16", lambda x: jnp.sin(x) * x[::-1], (np.ones(8, np.float16),)),
        Case("scalar_io", lambda s, x: (s * x[2], jnp.sum(x) * s, s), (np.float32(1), x8),
             (True, True)),
        Case("reduce_sum_axis", lambda x: x.sum(0) + x.sum(), (x4x5,)),
        Case("reduce_prod_mean", lambda x: (x.prod(1), jnp.mean(x, 0)), (x4x5,)),
        # The derivative of a maximum is one-hot at a point: the global pattern is the group.
        Case("reduce_max_min", lambda x: (x.max(1), x.min(0)), (x4x5,), exact=False),
        Case("reduce_bool_and_arg", lambda x: (jnp.any(x > 0, 0), jnp.argmin(x, 1),
                                               jnp.all(x > 0)), (x4x5,)),
        Case("logsumexp_softmax", lambda x: (jax.nn.logsumexp(x, 1), jax.nn.softmax(x, 0)),
             (x4x5,)),
        Case("cumsum", lambda x: (jnp.cumsum(x, 1), lax.cumsum(x, 0, reverse=True)), (x4x5,)),
        Case("cumprod_logsumexp", lambda x: (lax.cumprod(x, 1), lax.cumlogsumexp(x, 0)),
             (x4x5,)),
        Case("cummax_cummin", lambda x: (lax.cummax(x, 0), lax.cummin(x, 1, reverse=True)),
             (x4x5,), exact=False),
        Case("reshape_transpose", lambda x: x.reshape(5, 4).T * 2 + x.ravel()[::-1].reshape(4, 5),
             (x4x5,)),
        Case("broadcast_squeeze_expand", lambda x: jnp.broadcast_to(x[:, None, :1], (4, 3, 1))
             .squeeze(-1) + jnp.expand_dims(x[:, 0], 1), (x4x5,)),
        Case("rev_copy", lambda x: jnp.flip(x, (0, 1)) + jnp.flip(x, 1) * x, (x4x5,)),
        Case("strided_slice", lambda x: x[1:4:2, ::3] * 2 + x[::-2, 1:3].sum(), (x4x5,)),
        Case("concatenate", lambda x, y: jnp.concatenate([y, x[:2], 2 * y], 0),
             (f32(4, 3), f32(2, 3)), (True, True)),
        Case("concatenate_unseeded", lambda x, y: jnp.concatenate([y, x, y * x[0, 0]], 1),
             (f32(3, 2), f32(3, 4)), (True, False)),
        Case("pad", lambda x: lax.pad(x, 0.0, [(2, -1, 1), (-1, 2, 0)]), (x4x5,)),
        Case("pad_value_seeded", lambda x, c: lax.pad(x, c, [(1, 2, 2)]), (f32(4), np.float32(1)),
             (True, True)),
        Case("jnp_pad_modes", lambda x: (jnp.pad(x, 2, mode="wrap"), jnp.pad(x, 1, mode="edge"),
                                         jnp.pad(x, 2, mode="reflect")), (f32(6),)),
        Case("split", lambda x: jnp.split(x, [2, 5]), (x8,)),
        Case("stack_tile_repeat", lambda x: (jnp.stack([x, 2 * x[::-1]], 1), jnp.tile(x[:3], 2),
                                             jnp.repeat(x[:3], 2)), (x8,)),
        Case("roll", lambda x: jnp.roll(x, 3, 1) + jnp.roll(x, -1, 0), (x4x5,)),
        Case("stencil", _stencil, (f32(12),)),
        Case("lorenz96", _lorenz96, (f32(10),)),
        Case("lorenz96_rk4", _rk4, (f32(20),)),
        Case("brusselator", _brusselator, (f32(32),)),
        Case("dynamic_slice_known", lambda x: lax.dynamic_slice(x, (1, 6), (2, 3)), (x4x5,)),
        Case("dynamic_slice_unknown", lambda x, i: lax.dynamic_slice(x, (i, 1), (2, 3)),
             (x4x5, np.int32(1)), (True, False), exact=False),
        Case("dynamic_index_known", lambda x: x[jnp.int32(2)] * x[-1], (x8,)),
        Case("dynamic_update_known", lambda x, y: lax.dynamic_update_slice(x, y * 2, (2, 1)),
             (x4x5, f32(2, 3)), (True, True)),
        Case("dynamic_update_unknown", lambda x, y, i: lax.dynamic_update_slice(x, y, (1, i)),
             (x4x5, f32(2, 3), np.int32(1)), (True, True, False), exact=False),
        Case("gather_const", lambda x: x[IDX] * 2 + x[IDX[::-1]], (x8,)),
        Case("gather_2d", lambda x: (x[:, IDX[:3] % 5], x[IDX[:2] % 4, IDX[2:4] % 5],
                                     x[jnp.array([[0, 1], [3, 2]])]), (x4x5,)),
        Case("gather_modes", lambda x: (jnp.take(x, jnp.array([1, 9, -12]), mode="fill"),
                                        jnp.take(x, jnp.array([1, 9, -12]), mode="clip"),
                                        x.at[jnp.array([2, 11])].get(mode="fill", fill_value=0)),
             (x8,)),
        Case("gather_unknown", lambda x, i: x[i] * x[0], (x4x5, np.array([1, 3], np.int32)),
             (True, False), exact=False),
        Case("scatter_set", lambda x, y: x.at[IDX[:3]].set(y), (x8, f32(3)), (True, True)),
        Case("scatter_set_dup", lambda x, y: x.at[IDX].set(y), (x8, f32(5)), (True, True),
             exact=False),
        Case("scatter_add", lambda x, y: x.at[IDX].add(y * 2), (x8, f32(5)), (True, True)),
        # JAX differentiates scatter_mul only with unique indices.
        Case("scatter_mul", lambda x, y: x.at[IDX[1:]].multiply(y, unique_indices=True),
             (x8, f32(4)), (True, True)),
        Case("scatter_min_max", lambda x, y: (x.at[IDX].min(y), x.at[IDX].max(y)), (x8, f32(5)),
             (True, True), exact=False),
        Case("scatter_2d", lambda x, y: x.at[1:3, IDX[:2] % 5].add(y), (x4x5, f32(2, 2)),
             (True, True)),
        Case("scatter_drop_clip", lambda x, y: (x.at[jnp.array([1, 20])].set(y, mode="drop"),
                                                x.at[jnp.array([1, 20])].set(y, mode="clip"),
                                                x.at[jnp.array([-9, 3])].add(y, mode="clip")),
             (x8, f32(2)), (True, True)),
        Case("scatter_unknown", lambda x, y, i: x.at[i].add(y), (x4x5, f32(2, 5),
             np.array([0, 2], np.int32)), (True, True, False), exact=False),
        Case("scatter_set_unknown", lambda x, y, i: x.at[:, i].set(y), (x4x5, f32(4, 2),
             np.array([0, 2], np.int32)), (True, True, False), exact=False),
        Case("dot_known_zeros", lambda x: W_SPARSE @ x, (x8,)),
        Case("dot_known_right", lambda x: x[:6] @ W_SPARSE, (x8,)),
        Case("dot_unseeded_matrix", lambda w, x: w @ x, (f32(6, 8), x8), (False, True)),
        Case("dot_both", lambda a, b: (a @ b, jnp.einsum("bij,bjk->bik", a.reshape(2, 2, 4),
                                                         b.reshape(2, 4, 2))),
             (f32(4, 4), f32(4, 4)), (True, True)),
        Case("dot_multi_contract", lambda a, b: jnp.einsum("ijk,jkl->il", a, b),
             (f32(2, 3, 2), f32(3, 2, 2)), (True, True)),
        Case("conv1d_const", lambda x: jnp.convolve(x, KERNEL, mode="same"), (x8,)),
        Case("conv2d_groups", lambda x: lax.conv_general_dilated(
            x, KERNEL_2D, (1, 1), "SAME", feature_group_count=2), (f32(1, 2, 5, 5),)),
        Case("conv2d_strided", lambda x, k: lax.conv_general_dilated(
            x, k, (2, 1), [(1, 0), (2, 1)], lhs_dilation=(1, 2), rhs_dilation=(2, 1),
            dimension_numbers=("NHWC", "HWIO", "NHWC")), (f32(2, 5, 4, 2), f32(2, 3, 2, 3)),
             (True, True)),
        Case("conv_batch_groups", lambda x, k: lax.conv_general_dilated(
            x, k, (1,), "VALID", batch_group_count=2), (f32(4, 1, 6), f32(4, 1, 3)),
             (True, True)),
        Case("iota_const", lambda x: x * jnp.arange(8) + jnp.eye(8)[2] * x, (x8,)),
        Case("sort", lambda x: (jnp.sort(x, 1), lax.sort([x[0], x[1]], num_keys=1)[1]),
             (x4x5,), exact=False),
        Case("top_k_fft", lambda x: (lax.top_k(x, 2)[0], jnp.fft.rfft(x).real,
                                     jnp.fft.fft2(x).imag), (x4x5,), exact=False),
        Case("reduce_window", lambda x: (lax.reduce_window(x, 0.0, lax.add, (2, 3), (1, 2),
                                                           "SAME"),
                                         lax.reduce_window(x, -jnp.inf, lax.max, (2, 2), (2, 1),
                                                           "VALID")), (x4x5,), exact=False),
        Case("jit", lambda x: jax.jit(lambda y: jnp.roll(y, 2) * y)(x), (x8,)),
        Case("checkpoint", jax.checkpoint(lambda x: jnp.sin(x[::-1]) * x), (x8,)),
        Case("relu_custom_jvp", lambda x: jax.nn.relu(x) + jax.nn.softplus(x[::-1]), (x8,)),
        Case("cond", lambda x: lax.cond(x[0] > 0, lambda y: jnp.roll(y, 1), lambda y: y * y[3],
                                        x), (x8,)),
        Case("cond_known_index", lambda x: lax.switch(jnp.argmax(jnp.arange(3)),
             [jnp.sin, lambda y: y[::-1], lambda y: y * y[0]], x), (x8,)),
        Case("switch", lambda x: lax.switch(jnp.int32(x[0] > 0) + jnp.int32(x[1] > 0),
             [jnp.sin, lambda y: y[::-1], lambda y: y * y[0]], x), (x8,), exact=False),
        Case("fori_static", lambda x: lax.fori_loop(0, 3, lambda i, y: y + jnp.roll(y, 1), x),
             (x8,)),
        Case("fori_index", lambda x: lax.fori_loop(1, 8, lambda i, y: y.at[i].add(y[i - 1]), x),
             (x8,)),
        Case("fori_dynamic", lambda x, n: lax.fori_loop(0, n, lambda i, y: y + jnp.roll(y, 1),
                                                        x), (x8, np.int32(2)), (True, False),
             exact=False),
        Case("while_known", lambda x: lax.while_loop(lambda c: c[0] < 3,
             lambda c: (c[0] + 1, c[1] * jnp.roll(c[1], 1)), (0, x))[1], (x8,)),
        Case("while_value_dependent", lambda x: lax.while_loop(
            lambda y: jnp.sum(jnp.abs(y)) > 0.5, lambda y: 0.4 * (y + jnp.roll(y, 1)), x),
             (x8,), exact=False),
        Case("scan_carry_ys", lambda x: lax.scan(lambda c, y: (c * y + c[::-1], c[0] * y),
                                                 x[:3], x.reshape(8, 1) * jnp.ones(3))[1],
             (x8,)),
        Case("scan_cumulative", lambda x: lax.scan(lambda c, y: (c + y, c), 0.0, x)[1], (x8,)),
        Case("scan_reverse", lambda x: lax.scan(lambda c, y: (c * y, c + y), 1.0, x,
                                                reverse=True), (x8,)),
        Case("scan_known_xs", lambda x: lax.scan(lambda c, i: (c.at[i].set(c[i - 1] * 2), c[i]),
                                                 x, jnp.arange(1, 8))[1], (x8,)),
        Case("scan_saturating", lambda x: lax.scan(lambda c, _: (jnp.roll(c, 1) * c, c[0]), x,
                                                   None, length=40)[1], (f32(4),)),
        Case("fori_counter_branch", lambda x: lax.fori_loop(
            0, 10, lambda i, y: jnp.where(i == 5, jnp.roll(y, 1), y) * 1.5, x), (x8,)),
        Case("while_counter_index", lambda x: lax.while_loop(
            lambda c: c[0] < 7, lambda c: (c[0] + 1, c[1].at[c[0]].set(c[1][c[0] + 1] * 2)),
            (0, x))[1], (x8,)),
        Case("nested_loops", lambda x: lax.fori_loop(0, 2, lambda i, y: lax.fori_loop(
            0, 2, lambda j, z: z * jnp.roll(z, 1) + jax.nn.relu(z), y), x), (x8,), exact=False),
        Case("cond_in_while", lambda x: lax.while_loop(
            lambda c: c[0] < 4, lambda c: (c[0] + 1, lax.cond(c[1][0] > 0, lambda z: z[::-1],
                                                              lambda z: z * 2, c[1])),
            (0, x))[1], (x8,), exact=False),
        Case("vmap_gather_scatter", lambda x: (jax.vmap(lambda r, i: r[i])(x, IDX_ROWS),
                                               jax.vmap(lambda r, i, u: r.at[i].add(u))(
                                                   x, IDX_ROWS, x[:, :3])), (f32(4, 5),)),
        Case("linalg_solve", lambda x: jnp.linalg.solve(jnp.eye(3) * 3 + x[:9].reshape(3, 3),
                                                        x[9:]), (f32(12),)),
        Case("polyval_interp", lambda x: (jnp.polyval(x, 2.0), jnp.interp(x[:3], jnp.arange(8.0),
             jnp.arange(8.0) ** 2)), (x8,), exact=False),
        Case("multi_io", lambda a, b, c: (b * 2, (a.sum(), c[::-1] * a[0])),
             (f32(3), f32(2, 2), f32(4)), (True, False, True)),
        Case("literal_and_input_outputs", lambda x, y: (x, 1.0, y), (f32(3), f32(2)),
             (True, True)),
    ]
    return cases


CASES: list[Case] = _cases()


def random_chain(seed: int):
    """A random composition of 2-6 primitives on a vector of 12 (and an unseeded integer)."""
    rng = np.random.default_rng(seed)
    n = 12
    w = (rng.normal(size=(n, n)) * (rng.uniform(size=(n, n)) < 0.2)).astype(np.float32)
    idx, few = rng.integers(-n, n, n), rng.integers(0, n, 5)
    s, c = int(rng.integers(1, n)), int(rng.integers(1, n - 1))
    kernel = (rng.normal(size=3) * (rng.uniform(size=3) < 0.6)).astype(np.float32)
    mask = rng.uniform(size=n) < 0.5
    ops = {
        "sin": lambda x, i: jnp.sin(x), "scalar": lambda x, i: x * x[c],
        "roll_add": lambda x, i: x + jnp.roll(x, s), "rev": lambda x, i: x * x[::-1],
        "slice_concat": lambda x, i: jnp.concatenate([x[c:], 2 * x[:c]]),
        "transpose": lambda x, i: x.reshape(3, 4).T.ravel(),
        "transpose3": lambda x, i: x.reshape(2, 3, 2).transpose(2, 0, 1).ravel(),
        "dot": lambda x, i: w @ x, "gather": lambda x, i: x[idx],
        "gather_unknown": lambda x, i: x[i] * x,
        "where": lambda x, i: jnp.where(x > 0, x, jnp.roll(x, s)),
        "where_known": lambda x, i: jnp.where(mask, x, x[0]),
        "cumsum": lambda x, i: jnp.cumsum(x[::-1]),
        "cumprod": lambda x, i: lax.cumprod(x.reshape(3, 4), 1).ravel(),
        "scatter": lambda x, i: x.at[few].set(x[:5] * 2),
        "scatter_add": lambda x, i: x.at[idx].add(x),
        "scatter_unknown": lambda x, i: x.at[i].set(x[0]),
        "fori": lambda x, i: lax.fori_loop(0, 3, lambda j, y: y + 0.1 * jnp.roll(y, s) * y, x),
        "fori_unknown": lambda x, i: lax.fori_loop(0, i % 3, lambda j, y: y * jnp.roll(y, s), x),
        "scan": lambda x, i: lax.scan(lambda a, y: (a * 0.5 + y, a * y), x[0], x)[1],
        "pad": lambda x, i: jnp.pad(x, (2, 1))[1:-2],
        "lax_pad": lambda x, i: lax.pad(x, 0.0, [(-2, 1, 1)])[:n],
        "slice_unknown": lambda x, i: lax.dynamic_slice(jnp.concatenate([x, x]), (i % n,), (n,)),
        "update_unknown": lambda x, i: lax.dynamic_update_slice(x, x[:3] * 3, (i % 10,)),
        "cond": lambda x, i: lax.cond(x[1] > 0, lambda y: jnp.roll(y, s), lambda y: y * y[c], x),
        "sort": lambda x, i: jnp.sort(x.reshape(3, 4), 1).ravel(),
        "conv": lambda x, i: jnp.convolve(x, kernel, mode="same"),
        "max": lambda x, i: jnp.repeat(x.reshape(4, 3).max(1), 3),
        "relu": lambda x, i: jax.nn.relu(x) + jax.nn.softplus(x),
        "while": lambda x, i: lax.while_loop(lambda y: jnp.sum(jnp.abs(y)) > 1.0,
                                             lambda y: 0.3 * (y + jnp.roll(y, s)), x),
        "div": lambda x, i: x / (2 + jnp.abs(jnp.roll(x, s))),
        "mean": lambda x, i: x - jnp.tile(jnp.mean(x.reshape(3, 4), 0), 3),
    }
    names = [str(k) for k in rng.choice(sorted(ops), size=int(rng.integers(2, 7)))]

    def f(x, i):
        for name in names:
            x = ops[name](x, i)
        return x
    return f, names


def _straight_through(x):
    @jax.custom_jvp
    def ste(y):
        return jnp.round(y)
    ste.defjvp(lambda p, t: (ste(p[0]), t[0][::-1]))
    return ste(x)


@jax.custom_jvp
def _linear_rule(x):
    return x[::-1] * 2.0


_linear_rule.defjvp(lambda p, t: (_linear_rule(p[0]), _linear_rule(t[0])))


@jax.custom_vjp
def _vjp_fn(x):
    return jnp.sin(x) * x[::-1]


_vjp_fn.defvjp(lambda x: (_vjp_fn(x), x), lambda x, g: (g * jnp.cos(x) * x[::-1],))

CUSTOM: list[Case] = [
    Case("straight_through", _straight_through, (f32(6),)),
    Case("rule_calls_itself", lambda x: _linear_rule(x) * x, (f32(6),)),
    Case("custom_vjp", _vjp_fn, (f32(6),), oracle=lambda x: jnp.sin(x) * x[::-1]),
]


