"""rayjac.sparsity.detect against dense jax.jacfwd: every rule, random compositions, the
conservative paths and their warnings."""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jcore

from detect_cases import (CASES, CUSTOM, Case, check, detected, f32, random_chain,
                          union_of_nonzeros)
from rayjac.sparsity import ConservativeRuleWarning, detect
from rayjac.sparsity._detect import _interpret, _loops


@pytest.mark.parametrize("case", CASES + CUSTOM, ids=lambda c: c.name)
def test_rule_against_dense_jacobian(case: Case):
    check(case)


def test_known_patterns_are_exact():
    n = 16
    tri = detected(lambda x: x[:-2] - 2 * x[1:-1] + x[2:], (f32(n),), (True,))
    assert tri.sum() == 3 * (n - 2)
    rolled = detected(lambda x: jnp.roll(x, 1) - 2 * x + jnp.roll(x, -1), (f32(n),), (True,))
    assert rolled.sum() == 3 * n
    l96 = detected(lambda x: (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0,
                   (f32(n),), (True,))
    assert l96.sum() == 4 * n
    w = np.random.default_rng(0).normal(size=(5, n)) * (np.arange(5 * n).reshape(5, n) % 3 == 0)
    np.testing.assert_array_equal(detected(lambda x: w @ x, (f32(n),), (True,)), w != 0)
    idx = np.array([4, 4, 0, 15])
    np.testing.assert_array_equal(detected(lambda x: x[idx], (f32(n),), (True,)),
                                  np.eye(n, dtype=bool)[idx])


@pytest.mark.parametrize("seed", range(40))
def test_random_compositions_contain_dense_nonzeros(seed):
    f, names = random_chain(seed)
    args = (f32(12), np.int32(seed % 7))  # the integer is unseeded: an unknown index
    got = detected(f, args, (True, False))
    want = union_of_nonzeros(f, args, (True, False), seed=seed, count=2)
    assert not (want & ~got).any(), f"{names}: missed {np.argwhere(want & ~got)[:5]}"


def test_unseeded_inputs_add_no_columns_and_do_not_prune():
    w = np.zeros((3, 4), np.float32)  # zero here, but unseeded values are unknown
    got = detected(lambda w, x: w @ x, (w, f32(4)), (False, True))
    assert got.shape == (3, 4) and got.all()
    got = detected(lambda x, m: x * m + m, (f32(5), np.zeros(5, np.float32)), (True, False))
    np.testing.assert_array_equal(got, np.eye(5, dtype=bool))
    assert detected(lambda x, y: y * 2, (f32(2), f32(3)), (True, False)).sum() == 0


def test_columns_and_rows_follow_invar_and_outvar_order():
    got = detected(lambda a, b, c: (c[0] * a, jnp.sum(b), c), (np.float32(2), f32(2), f32(3)),
                   (True, False, True))
    want = np.zeros((1 + 1 + 3, 4), bool)
    want[0, [0, 1]] = True          # c[0] * a: a (column 0) and c[0] (column 1)
    want[2:, 1:] = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(got, want)


def test_integer_outputs_and_zero_sizes():
    got = detected(lambda x: (x.astype(jnp.int32), jnp.argsort(x), x[:0], x), (f32(3),), (True,))
    np.testing.assert_array_equal(got, np.vstack([np.zeros((6, 3), bool), np.eye(3, dtype=bool)]))
    assert detected(lambda x: x * 2, (f32(0),), (True,)).shape == (0, 0)


def test_integer_inputs_keep_their_columns_without_dependencies():
    got = detected(lambda i, x: x * i.astype(jnp.float32) + i, (np.arange(3), f32(3)),
                   (True, True))
    np.testing.assert_array_equal(got, np.hstack([np.zeros((3, 3), bool), np.eye(3, dtype=bool)]))


def test_detect_inside_an_outer_trace_still_folds_constants():
    found = {}

    @jax.jit
    def outer(x, c):
        def f(y):
            return y * jnp.arange(4.0) + jnp.roll(y, 1) * c[0] + y[jnp.array([1, 1, 0, 3])]
        found["pattern"] = detect(jax.make_jaxpr(f)(x), [True]).toarray()
        return x

    outer(jnp.ones(4), jnp.ones(4))
    want = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]]) > 0
    np.testing.assert_array_equal(found["pattern"], want)


def _fallback_warnings(f, args, seeded=(True,)):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = detected(f, args, seeded)
    return got, [w for w in caught if issubclass(w.category, ConservativeRuleWarning)]


def test_primitive_without_rule_is_conservative_and_warns_once_per_call():
    def f(x):
        a = x.reshape(3, 3)
        return jnp.linalg.eigh(a + a.T)[0], jnp.linalg.eigh(a * a.T)[0] * 2, x[0] * 3
    for _ in range(2):  # once per detect call, for every call
        got, caught = _fallback_warnings(f, (f32(9),))
        assert len(caught) == 1, [str(w.message) for w in caught]
        message = str(caught[0].message)
        assert "'eigh'" in message and "never fewer" in message and "sparsity=" in message
        assert got[:6].all() and got[6].sum() == 1


def test_custom_primitive_falls_back():
    prim = jcore.Primitive("rayjac_test_mystery")
    prim.def_impl(lambda x: x * 2)
    prim.def_abstract_eval(lambda x: x)
    got, caught = _fallback_warnings(lambda x: prim.bind(x[:2]) + x[3], (f32(5),))
    assert [("rayjac_test_mystery" in str(w.message)) for w in caught] == [True]
    np.testing.assert_array_equal(got, np.array([[1, 1, 0, 1, 0]] * 2, bool))


def test_a_failing_rule_falls_back(monkeypatch):
    def broken(ctx, eqn, args):
        raise KeyError("new_param")
    monkeypatch.setitem(_interpret.RULES, "sin", broken)
    got, caught = _fallback_warnings(lambda x: jnp.sin(x) + x, (f32(3),))
    assert got.all() and len(caught) == 1 and "failed (KeyError" in str(caught[0].message)


def test_closed_call_is_followed():
    f = lambda x: jax.jit(lambda y: y[::-1] * y[0])(x)  # noqa: E731
    jaxpr = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((4,), jnp.float32))
    eqn = jaxpr.jaxpr.eqns[0]
    call = eqn.replace(primitive=jcore.primitives.closed_call_p,
                       params={"call_jaxpr": eqn.params["jaxpr"]})
    jaxpr = jcore.ClosedJaxpr(jaxpr.jaxpr.replace(eqns=[call]), jaxpr.consts)
    want = union_of_nonzeros(f, (f32(4),), (True,))
    np.testing.assert_array_equal(detect(jaxpr, [True]).toarray(), want)


def test_loop_safety_caps_stay_conservative(monkeypatch):
    monkeypatch.setattr(_loops, "_FIXPOINT_ITERS", 2)
    f = lambda x: lax.while_loop(lambda y: y[0] < 10, lambda y: y + jnp.roll(y, 1), x)  # noqa
    got, caught = _fallback_warnings(f, (f32(8),))
    assert got.all() and len(caught) == 1 and "'while'" in str(caught[0].message)
    monkeypatch.setattr(_loops, "_EXACT_STEPS", 3)
    scan = Case("scan_capped", lambda x: lax.scan(lambda c, y: (c + y, c * y), 0.0, x)[1],
                (f32(8),), exact=False)
    check(scan)


def test_large_stencils_are_fast():
    n = 65536
    f = lambda x: (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0  # noqa: E731
    jaxpr = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((n,), jnp.float32))
    start = time.perf_counter()
    pattern = detect(jaxpr, [True])
    assert time.perf_counter() - start < 1.5
    assert pattern.shape == (n, n) and pattern.nnz == 4 * n


def test_seeded_flags_must_match_inputs():
    jaxpr = jax.make_jaxpr(lambda x, y: x * y)(1.0, 2.0)
    with pytest.raises(ValueError, match="one seeded flag per jaxpr input"):
        detect(jaxpr, [True])
