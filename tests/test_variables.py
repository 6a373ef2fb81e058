"""rayjac.Variable and the state semantics of jacfwd: collection, writes, read-only safety."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rayjac
from helpers import doubling_model, tree_allclose


def test_value_get_set_and_array_behaviour():
    v = rayjac.Variable(jnp.arange(3.0))
    v.value = v.value + 1
    np.testing.assert_array_equal(v.value, [1.0, 2.0, 3.0])
    assert v.shape == (3,) and v.dtype == jnp.float32 and v.ndim == 1 and len(v) == 3
    np.testing.assert_allclose(jnp.sin(v), np.sin([1.0, 2.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(2 * v - v / 2, [1.5, 3.0, 4.5])
    assert float(v @ v) == 14.0 and float(jnp.dot(v, v)) == 14.0
    np.testing.assert_array_equal(jnp.where(v > 1.5, v, 0.0), [0.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.asarray(v), [1.0, 2.0, 3.0])
    assert float(v.sum()) == 6.0 and float(v[1]) == 2.0 and float(-v[0]) == -1.0


@pytest.mark.parametrize("new,what", [(jnp.ones(4), "shape"), (jnp.ones(3, jnp.int32), "dtype")])
def test_assignment_that_changes_shape_or_dtype_fails_and_keeps_old(new, what):
    v = rayjac.Variable(jnp.arange(3.0))
    with pytest.raises(ValueError, match=r"keeps its shape and dtype.*old value is kept"):
        v.value = new
    np.testing.assert_array_equal(v.value, [0.0, 1.0, 2.0])


def test_variables_collected_without_registration_and_read_at_call_time():
    w = rayjac.Variable(jnp.array([1.0, 2.0]))
    jf = rayjac.jacfwd(lambda x: w.value * x)
    tree_allclose(jf(jnp.ones(2)), jnp.diag(jnp.array([1.0, 2.0])))
    w.value = jnp.array([3.0, 4.0])  # a constant, but read at call time, not build time
    tree_allclose(jf(jnp.ones(2)), jnp.diag(jnp.array([3.0, 4.0])))


def test_derivatives_flow_through_writes_and_write_applied_once():
    f, v, calls = doubling_model()

    jac = rayjac.jacfwd(f, grad_vars=v, chunk_size=1)()
    tree_allclose(jac, jnp.diag(8 * jnp.array([1.0, 2.0, 3.0])))
    np.testing.assert_array_equal(v.value, [2.0, 4.0, 6.0])  # new primal value, once
    assert float(calls.value) == 1.0  # once per call, not per chunk or column
    assert isinstance(v.value, jax.Array) and not isinstance(v.value, jax.core.Tracer)


def test_read_only_variables_untouched_also_when_func_raises():
    ro, wr = rayjac.Variable(jnp.ones(2)), rayjac.Variable(jnp.zeros(2))

    def f(x):
        wr.value = x * ro.value
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        rayjac.jacfwd(f)(jnp.arange(2.0))
    np.testing.assert_array_equal(ro.value, [1.0, 1.0])
    np.testing.assert_array_equal(wr.value, [0.0, 0.0])  # a failed call writes nothing


def test_unused_grad_var_gives_zero_block():
    used, unused = rayjac.Variable(jnp.ones(2)), rayjac.Variable(jnp.ones(3))
    jac = rayjac.jacfwd(lambda: used.value * 2, grad_vars={"a": used, "b": unused})()
    tree_allclose(jac["b"], jnp.zeros((2, 3)))
    tree_allclose(jac["a"], 2 * jnp.eye(2))


def test_jnp_functions_on_variables_are_differentiated():
    v = rayjac.Variable(jnp.linspace(0.1, 0.9, 3))
    jac = rayjac.jacfwd(lambda: jnp.sin(v) * v, grad_vars=v)()
    tree_allclose(jac, jax.jacfwd(lambda u: jnp.sin(u) * u)(v.value), rtol=1e-6)


def test_variable_pickles_by_value():
    import pickle
    v = rayjac.Variable(jnp.arange(3.0))
    w = pickle.loads(pickle.dumps(v))
    np.testing.assert_array_equal(w.value, v.value)
    assert w is not v


def test_writes_inside_jit_are_a_clear_error_not_a_leaked_tracer():
    v = rayjac.Variable(jnp.ones(2))

    def f(x):
        v.value = v.value * 2
        return v.value * x

    with pytest.raises(TypeError, match="leaked tracer"):
        jax.jit(rayjac.jacfwd(f))(jnp.ones(2))
    np.testing.assert_array_equal(v.value, [1.0, 1.0])


# --- jax.numpy functions applied to Variables inside func, in every mode ---

JNP_CASES = {
    "ufuncs": lambda v, w: lambda x: jnp.sin(v) * x + v * x + x * v + jnp.exp(v) / (1 + w),
    "reductions": lambda v, w: lambda x: jnp.sum(v) * x + (v ** 2).sum() * x + jnp.max(w * x),
    "dot": lambda v, w: lambda x: jnp.dot(v, w) * x + (v @ w) * jnp.matmul(x, w),
    "where": lambda v, w: lambda x: jnp.where(v > 1.5, v * x, w) + jnp.clip(w, 0.0, 2.5),
    "indexing": lambda v, w: lambda x: v[0] * x + (-v)[1] * x + jnp.take(w, jnp.array([2, 0, 1])),
    "stacking": lambda v, w: lambda x: jnp.concatenate([v * x, jnp.outer(w, x).ravel()]),
    "cumulative": lambda v, w: lambda x: jnp.cumsum(v * x) + jnp.mean(w) * jnp.sort(x),
}
JNP_MODES = {"in_process": {}, "chunked": {"chunk_size": 2}, "sharded": {"shards": 2},
             "jit": {}}


@pytest.mark.parametrize("mode", list(JNP_MODES))
@pytest.mark.parametrize("case", list(JNP_CASES))
def test_jnp_functions_on_variables_inside_func(case, mode, request):
    if mode == "sharded":
        request.getfixturevalue("ray_local")
    v = rayjac.Variable(jnp.asarray([1.0, 2.0, 3.0]))
    w = rayjac.Variable(jnp.asarray([0.5, -1.0, 2.0]))
    x = jnp.asarray([2.0, 3.0, 4.0])
    jf = rayjac.jacfwd(JNP_CASES[case](v, w), grad_vars=[v, w], argnums=0, **JNP_MODES[mode])
    got = jax.jit(jf)(x) if mode == "jit" else jf(x)
    pure = lambda a, b, y: JNP_CASES[case](a, b)(y)  # noqa: E731
    dv, dw, dx = jax.jacfwd(pure, argnums=(0, 1, 2))(v.value, w.value, x)
    tree_allclose(got, ([dv, dw], dx))
    np.testing.assert_array_equal(v.value, [1.0, 2.0, 3.0])  # only read: untouched
