"""rayjac.jacfwd in process: the return table, pytrees, chunking, state, errors, composition."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rayjac
from helpers import check_case, finite_difference_jacobian, tree_allclose

KINDS = ["none", "single", "list", "tuple", "dict"]
ARGNUMS = [None, 0, (1,), (0, 1), [1, 0]]


@pytest.mark.parametrize("return_value", [False, True])
@pytest.mark.parametrize("has_aux", [False, True])
@pytest.mark.parametrize("argnums", ARGNUMS)
@pytest.mark.parametrize("kind", KINDS)
def test_return_table_matches_jax(kind, argnums, has_aux, return_value):
    check_case(kind, argnums, has_aux, return_value)


@pytest.mark.parametrize("chunk_size", [1, 5, 17, 40])
@pytest.mark.parametrize("kind,argnums", [("dict", (0, 1)), ("none", 0), ("tuple", None)])
def test_chunk_sizes_match_unchunked(kind, argnums, chunk_size):
    # dict vars (7 columns) + both args (10 columns) = 17 columns: 5 does not divide it.
    check_case(kind, argnums, True, True, chunk_size=chunk_size)


def test_one_element_argnums_gives_tuple():
    jac = rayjac.jacfwd(lambda x, y: x * y, argnums=(1,))(jnp.ones(2), jnp.arange(2.0))
    assert isinstance(jac, tuple) and len(jac) == 1
    tree_allclose(jac[0], jnp.diag(jnp.ones(2)))


def test_keyword_arguments_are_constants():
    f = lambda x, *, k: x * k  # noqa: E731
    tree_allclose(rayjac.jacfwd(f)(jnp.ones(3), k=jnp.arange(3.0)), jnp.diag(jnp.arange(3.0)))


def test_python_scalars_in_constant_args_stay_python():
    def f(x, steps):
        for _ in range(steps):  # needs a concrete int, as with jax.jacfwd
            x = jnp.sin(x)
        return x
    x = jnp.linspace(0.1, 1.0, 4)
    tree_allclose(rayjac.jacfwd(f)(x, 3), jax.jacfwd(f)(x, 3))


def test_scalar_output_and_scalar_input():
    tree_allclose(rayjac.jacfwd(lambda x: jnp.sum(x ** 3))(jnp.arange(3.0)),
                  jax.jacfwd(lambda x: jnp.sum(x ** 3))(jnp.arange(3.0)))
    tree_allclose(rayjac.jacfwd(lambda s: s * jnp.arange(3.0))(jnp.float32(2.0)),
                  jnp.arange(3.0))


def test_matches_finite_differences():
    w = jax.random.normal(jax.random.PRNGKey(3), (5, 4))
    f = lambda x: jnp.tanh(w @ x) * jnp.cos(x[0])  # noqa: E731
    x = np.linspace(-1, 1, 4).astype(np.float32)
    fd = finite_difference_jacobian(lambda z: np.tanh(np.asarray(w, np.float64) @ z)
                                    * np.cos(z[0]), x)
    np.testing.assert_allclose(rayjac.jacfwd(f, chunk_size=3)(x), fd, rtol=1e-4, atol=1e-5)


def test_mixed_float16_float32_inputs_and_outputs():
    f = lambda a, b: (a.astype(jnp.float32) * b, (a * 2).astype(jnp.float16))  # noqa: E731
    a, b = jnp.ones(2, jnp.float16), jnp.arange(2.0, dtype=jnp.float32)
    got, expected = rayjac.jacfwd(f, argnums=(0, 1))(a, b), jax.jacfwd(f, argnums=(0, 1))(a, b)
    tree_allclose(got, expected)
    assert got[1][1].dtype == jnp.float16  # float16 output w.r.t. a float32 input


def test_integer_output_gives_zero_integer_block():
    jac = rayjac.jacfwd(lambda x: (x * 3).astype(jnp.int32))(jnp.ones(2))
    assert jac.dtype == jnp.int32 and jac.shape == (2, 2) and not jac.any()


def test_holomorphic():
    f = lambda z: z ** 2 + jnp.sin(z)  # noqa: E731
    z = jnp.array([1 + 1j, 0.5 - 2j], jnp.complex64)
    tree_allclose(rayjac.jacfwd(f, holomorphic=True, chunk_size=1)(z),
                  jax.jacfwd(f, holomorphic=True)(z), rtol=1e-5)


def test_complex_output_of_real_input():
    f = lambda x: jnp.exp(1j * x)  # noqa: E731
    tree_allclose(rayjac.jacfwd(f)(jnp.arange(3.0)), jax.jacfwd(f)(jnp.arange(3.0)))


# --- composition ---

def f_tanh(x):
    return jnp.tanh(jnp.outer(x, x).sum(0) * x)


def test_jit_of_jacfwd():
    x = jnp.linspace(0, 1, 5)
    tree_allclose(jax.jit(rayjac.jacfwd(f_tanh, chunk_size=2))(x), jax.jacfwd(f_tanh)(x))


def test_vmap_of_jacfwd():
    xs = jnp.linspace(0, 1, 15).reshape(3, 5)
    tree_allclose(jax.vmap(rayjac.jacfwd(f_tanh, chunk_size=2))(xs),
                  jax.vmap(jax.jacfwd(f_tanh))(xs))


def test_nested_jacfwd_with_aux_inside():
    inner = rayjac.jacfwd(lambda x: (f_tanh(x), x.sum()), has_aux=True)
    hess = rayjac.jacfwd(lambda x: inner(x)[0], chunk_size=3)(jnp.linspace(0, 1, 4))
    tree_allclose(hess, jax.jacfwd(jax.jacfwd(f_tanh))(jnp.linspace(0, 1, 4)), rtol=1e-4)


def test_nested_with_variables():
    v = rayjac.Variable(jnp.linspace(0.5, 1.0, 3))
    inner = rayjac.jacfwd(lambda: jnp.sin(v.value) * v.value, grad_vars=v)
    outer = rayjac.jacfwd(lambda: inner(), grad_vars=v)
    expected = jax.jacfwd(jax.jacfwd(lambda u: jnp.sin(u) * u))(v.value)
    tree_allclose(outer(), expected, rtol=1e-5)


def test_compiled_once_for_repeated_calls():
    traces = []

    def f(x):
        traces.append(1)
        return jnp.sin(x)
    jf = rayjac.jacfwd(f, chunk_size=2)
    for i in range(3):
        jf(jnp.full(5, float(i)))
    count = len(traces)
    jf(jnp.full(5, 9.0))
    assert len(traces) == count  # no retrace for the same shapes


# --- deprecated arguments ---

def test_dyn_vars_and_child_objs_warn():
    v = rayjac.Variable(jnp.ones(2))
    with pytest.warns(DeprecationWarning, match="dyn_vars"):
        rayjac.jacfwd(lambda x: x, dyn_vars=[v])
    with pytest.warns(DeprecationWarning, match="child_objs"):
        rayjac.jacfwd(lambda x: x, child_objs=[v])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rayjac.jacfwd(lambda x: x)


# --- errors (SPEC 1.4), all raised before any work ---

def test_non_variable_in_grad_vars():
    with pytest.raises(TypeError, match=r"grad_vars\[1\] must be a rayjac.Variable.*ndarray"):
        rayjac.jacfwd(lambda x: x, grad_vars=[rayjac.Variable(jnp.ones(1)), np.ones(1)])


@pytest.mark.parametrize("argnums,match", [
    (-1, r"index -1 .* 2 positional"), (2, r"index 2 .* 2 positional"),
    (1.0, r"index 1.0 .* 2 positional"), ((0, 0), r"twice.* 2 positional"),
    ((0, 5), r"index 5 .* 2 positional")])
def test_bad_argnums(argnums, match):
    with pytest.raises(ValueError, match=match):
        rayjac.jacfwd(lambda x, y: x * y, argnums=argnums)(jnp.ones(2), jnp.ones(2))


@pytest.mark.parametrize("ret", [lambda x: x, lambda x: (x, x, x)])
def test_has_aux_without_pair(ret):
    with pytest.raises(TypeError, match="has_aux=True requires func to return a pair"):
        rayjac.jacfwd(ret, has_aux=True)(jnp.ones(2))


def test_integer_and_complex_inputs():
    with pytest.raises(TypeError, match=r"jacfwd requires real-valued inputs .* but got int32"):
        rayjac.jacfwd(lambda x: x * 2)(jnp.arange(3))
    with pytest.raises(TypeError, match=r"real-valued inputs .* but got complex64"):
        rayjac.jacfwd(lambda x: x * 2)(jnp.ones(2, jnp.complex64))
    v = rayjac.Variable(jnp.arange(3))
    with pytest.raises(TypeError, match=r"real-valued inputs .* but got int32"):
        rayjac.jacfwd(lambda: v.value * 2, grad_vars=v)()


def test_holomorphic_mismatches():
    with pytest.raises(TypeError, match="holomorphic=True requires inputs with complex dtype"):
        rayjac.jacfwd(lambda x: x, holomorphic=True)(jnp.ones(2))
    with pytest.raises(TypeError, match="holomorphic=True requires outputs with complex dtype"):
        rayjac.jacfwd(lambda z: jnp.abs(z), holomorphic=True)(jnp.ones(2, jnp.complex64))


def test_variable_as_positional_argument():
    v = rayjac.Variable(jnp.ones(2))
    with pytest.raises(TypeError, match="close over it instead"):
        rayjac.jacfwd(lambda x: x * 2)(v)


@pytest.mark.parametrize("name,value", [("shards", 0), ("shards", 1.5), ("chunk_size", -2),
                                        ("chunk_size", True), ("chunk_size", "8")])
def test_shards_and_chunk_size_must_be_positive_ints(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        rayjac.jacfwd(lambda x: x, **{name: value})


def test_errors_come_before_any_work():
    calls = []

    def f(x):
        calls.append(1)
        return x

    with pytest.raises(TypeError):
        rayjac.jacfwd(f, holomorphic=True)(jnp.ones(2))
    with pytest.raises(ValueError):
        rayjac.jacfwd(f, argnums=3)(jnp.ones(2))
    assert calls == []


def test_grad_vars_listed_twice_or_none_are_errors():
    v = rayjac.Variable(jnp.ones(2))
    with pytest.raises(ValueError, match=r"grad_vars\[1\] is the same Variable as grad_vars\[0\]"):
        rayjac.jacfwd(lambda: v.value * 2, grad_vars=[v, v])
    with pytest.raises(TypeError, match=r"grad_vars\[1\] must be a rayjac.Variable.*NoneType"):
        rayjac.jacfwd(lambda: v.value * 2, grad_vars=[v, None])


def test_empty_argnums_is_an_error():
    with pytest.raises(ValueError, match=r"argnums=\(\) names no argument"):
        rayjac.jacfwd(jnp.sin, argnums=())(jnp.ones(2))


def test_static_arguments_of_equal_value_but_other_type_retrace():
    f = lambda x, k: x * len(range(k))  # noqa: E731  (range() refuses a float, as in jax.jacfwd)
    jf = rayjac.jacfwd(f)
    np.testing.assert_allclose(jf(jnp.ones(2), 2), 2 * np.eye(2))
    with pytest.raises(TypeError):
        jax.jacfwd(f)(jnp.ones(2), 2.0)
    with pytest.raises(TypeError):
        jf(jnp.ones(2), 2.0)


def test_numpy_float64_inputs_follow_jax_x64_rules():
    jac = rayjac.jacfwd(jnp.sin)(np.linspace(0, 1, 3))
    assert jac.dtype == jax.jacfwd(jnp.sin)(np.linspace(0, 1, 3)).dtype
    basis_dtypes = rayjac.jacfwd(jnp.sin).stream((np.linspace(0, 1, 3),)).layout.basis.dtypes
    assert all(np.dtype(d) == jac.dtype for d in basis_dtypes)


# --- weak types, the wrapped signature, value-dependent Python ---

@pytest.mark.parametrize("f", [lambda x: x, lambda x: x * 2, lambda x: x * jnp.float16(2),
                               lambda x: {"a": x, "b": x * jnp.ones(2)}])
def test_weak_types_follow_jax(f):
    got, want = rayjac.jacfwd(f)(1.0), jax.jacfwd(f)(1.0)
    tree_allclose(got, want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.weak_type == w.weak_type


def test_jitted_func_traces_once_with_a_python_float():
    traces = []

    @jax.jit
    def f(x):
        traces.append(1)  # a Python side effect: runs once per trace
        return x * x
    got = rayjac.jacfwd(f, return_value=True)(1.5)
    assert len(traces) == 1
    tree_allclose(got, (jax.jacfwd(f)(1.5), f(1.5)))


def test_returned_callable_keeps_func_signature_name_and_doc():
    def f(x, flag):
        """Doubles x when flag."""
        return x * 2 if flag else x
    jf = rayjac.jacfwd(f)
    assert str(inspect.signature(jf)) == "(x, flag)"
    assert jf.__name__ == "f" and jf.__doc__ == f.__doc__ and jf.__wrapped__ is f
    jitted = jax.jit(jf, static_argnames=["flag"])
    tree_allclose(jitted(jnp.ones(2), True), 2 * jnp.eye(2))  # flag found by position
    tree_allclose(jitted(jnp.ones(2), flag=False), jnp.eye(2))


@pytest.mark.parametrize("f", [lambda x: x if x.sum() > 0 else -x,
                               lambda x: x * int(x[0]),
                               lambda x: x * (2.0 if bool(x[0] > 0) else 3.0)])
def test_python_on_array_values_is_a_clear_error(f):
    jax.jacfwd(f)(jnp.ones(2))  # op by op, jax.jacfwd can
    with pytest.raises(TypeError, match=r"traces func once per call signature.*jnp\.where"
                                        r".*lax\.cond"):
        rayjac.jacfwd(f)(jnp.ones(2))
