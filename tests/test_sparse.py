"""Sparse Jacobians end to end: ``rayjac.jacfwd(..., sparsity=...)`` equals the dense call (in
process, chunked, under jit, sharded), with the return table, state and given patterns."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import rayjac
from helpers import (doubling_model, expected_result, make_vars, model_args, stateful_model,
                     tree_allclose)
from rayjac.sparsity import DenseColoringWarning

_is_bcoo = lambda x: isinstance(x, jsparse.BCOO)  # noqa: E731


def densify(tree):
    """Every BCOO block of a result made dense (other leaves unchanged)."""
    return jax.tree_util.tree_map(lambda b: b.todense() if _is_bcoo(b) else b, tree,
                                  is_leaf=_is_bcoo)


def assert_all_bcoo(jac):
    leaves = jax.tree_util.tree_leaves(jac, is_leaf=_is_bcoo)
    assert leaves and all(_is_bcoo(b) for b in leaves)


def tridiagonal(x):
    padded = jnp.pad(x, 1)
    return padded[:-2] - 2 * x + padded[2:] + x * jnp.sin(x)


def lorenz96(x):
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0


# --- the return table and options, against the dense call ---

@pytest.mark.parametrize("return_value", [False, True])
@pytest.mark.parametrize("has_aux", [False, True])
@pytest.mark.parametrize("kind,argnums", [("none", None), ("single", None), ("list", 0),
                                          ("dict", (0, 1)), ("tuple", (1,))])
def test_return_table_sparse(kind, argnums, has_aux, return_value):
    vs, container = make_vars(kind)
    args = model_args()
    jf = rayjac.jacfwd(stateful_model(vs, has_aux), grad_vars=container, argnums=argnums,
                       has_aux=has_aux, return_value=return_value, sparsity="auto")
    got = jf(*args)
    jac = got[0] if (has_aux or return_value) else got
    assert_all_bcoo(jac)
    tree_allclose(densify(got), expected_result(kind, argnums, has_aux, return_value, vs,
                                                container, args))


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 50])
def test_chunked_colours_match_dense(chunk_size):
    x = jnp.linspace(-1.0, 1.0, 17)
    jac = rayjac.jacfwd(lorenz96, sparsity="auto", chunk_size=chunk_size)(x)
    assert jac.nse == 4 * 17
    tree_allclose(jac.todense(), jax.jacfwd(lorenz96)(x))


def test_exact_patterns_and_colours():
    x = jnp.linspace(-1.0, 1.0, 64)
    tri = rayjac.jacfwd(tridiagonal, sparsity="auto").sparsity(x)
    assert (tri.nnz, tri.num_colors, tri.shape) == (3 * 64 - 2, 3, (64, 64))
    ring = rayjac.jacfwd(lorenz96, sparsity="auto").sparsity(x)
    assert (ring.nnz, ring.num_colors) == (4 * 64, 4)
    dense = np.asarray(jax.jacfwd(tridiagonal)(x)) != 0
    np.testing.assert_array_equal(tri.to_scipy().toarray(), dense)


def test_jit_of_sparse_jacfwd_and_dtypes():
    f = lambda x: (x[1:] * x[:-1]).astype(jnp.float16)  # noqa: E731
    x = jnp.linspace(0.5, 1.5, 6)
    jac = jax.jit(rayjac.jacfwd(f, sparsity="auto"))(x)
    assert _is_bcoo(jac) and jac.dtype == jnp.float16 and jac.shape == (5, 6)
    tree_allclose(jac.todense(), jax.jacfwd(f)(x))


def test_weak_type_and_scalar_blocks():
    jac = rayjac.jacfwd(lambda x: x * 2, sparsity="auto")(1.0)
    want = jax.jacfwd(lambda x: x * 2)(1.0)
    assert jac.shape == () and jac.data.weak_type == want.weak_type  # todense drops it
    tree_allclose(jac.todense(), want)


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # 3 columns, 3 colours
def test_holomorphic_and_integer_outputs():
    x = jnp.asarray([1.0 + 1j, 2.0 - 1j, 0.5j], jnp.complex64)
    f = lambda z: z ** 2 * jnp.roll(z, 1)  # noqa: E731
    tree_allclose(densify(rayjac.jacfwd(f, holomorphic=True, sparsity="auto")(x)),
                  jax.jacfwd(f, holomorphic=True)(x))
    g = lambda y: {"f": jnp.sin(y), "i": jnp.round(y).astype(jnp.int32)}  # noqa: E731
    got = rayjac.jacfwd(g, sparsity="auto")(jnp.arange(3.0))
    assert got["i"].nse == 0 and got["i"].dtype == jnp.int32
    tree_allclose(densify(got), jax.jacfwd(g)(jnp.arange(3.0)))


def test_state_writes_once_and_sparsity_writes_nothing():
    f, v, calls = doubling_model()

    jf = rayjac.jacfwd(f, grad_vars=v, sparsity="auto", chunk_size=1)
    pattern = jf.sparsity()
    assert (pattern.nnz, pattern.num_colors) == (3, 1)
    assert float(calls.value) == 0.0 and np.asarray(v.value).tolist() == [1.0, 2.0, 3.0]
    tree_allclose(jf().todense(), jnp.diag(8 * jnp.asarray([1.0, 2.0, 3.0])))
    assert float(calls.value) == 1.0 and np.asarray(v.value).tolist() == [2.0, 4.0, 6.0]


def test_dense_pattern_warns_and_still_gives_bcoo():
    f = lambda x: x * jnp.sum(x)  # noqa: E731
    x = jnp.arange(1.0, 5.0)
    with pytest.warns(DenseColoringWarning, match="4 colours for 4 columns"):
        jac = rayjac.jacfwd(f, sparsity="auto")(x)
    assert _is_bcoo(jac) and jac.nse == 16
    tree_allclose(jac.todense(), jax.jacfwd(f)(x))


# --- patterns given by the user ---

def _tri_pattern(n):
    return np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1


@pytest.mark.parametrize("form", ["numpy", "scipy_array", "scipy_matrix", "bcoo", "sparsity"])
def test_given_patterns_in_every_form(form):
    n = 9
    mask = _tri_pattern(n)
    given = {"numpy": lambda: mask, "scipy_array": lambda: sp.csr_array(mask),
             "scipy_matrix": lambda: sp.coo_matrix(mask),
             "bcoo": lambda: jsparse.BCOO.fromdense(jnp.asarray(mask, jnp.float32)),
             "sparsity": lambda: rayjac.Sparsity(*np.nonzero(mask), (n, n))}[form]()
    x = jnp.linspace(0.0, 1.0, n)
    jf = rayjac.jacfwd(tridiagonal, sparsity=given)
    assert jf.sparsity(x).num_colors == 3
    tree_allclose(jf(x).todense(), jax.jacfwd(tridiagonal)(x))


def test_detected_pattern_reused_as_given_one():
    x = jnp.linspace(0.0, 1.0, 12)
    pattern = rayjac.jacfwd(lorenz96, sparsity="auto").sparsity(x)
    tree_allclose(rayjac.jacfwd(lorenz96, sparsity=pattern)(x).todense(),
                  jax.jacfwd(lorenz96)(x))


def test_given_pattern_is_trusted():
    x = jnp.linspace(0.0, 1.0, 6)
    diagonal = rayjac.Sparsity(np.arange(6), np.arange(6), (6, 6), colors=np.arange(6) % 3)
    jac = rayjac.jacfwd(tridiagonal, sparsity=diagonal)(x)  # colours keep neighbours apart
    assert jac.nse == 6
    np.testing.assert_allclose(jac.todense(), np.diag(np.diag(jax.jacfwd(tridiagonal)(x))),
                               rtol=1e-6)


def test_wrong_shape_and_bad_values_are_clear_errors():
    x = jnp.ones(4)
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*\(m, n\) = \(4, 4\)"):
        rayjac.jacfwd(tridiagonal, sparsity=np.eye(3, dtype=bool))(x)
    with pytest.raises(ValueError, match="sparsity='automatic' is not valid: use None"):
        rayjac.jacfwd(tridiagonal, sparsity="automatic")
    with pytest.raises(TypeError, match="sparsity=.* is not valid: use None.*2-D BCOO"):
        rayjac.jacfwd(tridiagonal, sparsity=[[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="not a valid colouring"):
        rayjac.Sparsity([0, 0], [0, 1], (1, 2), colors=[0, 0])
    with pytest.raises(ValueError, match=r"entry \(2, 0\) lies outside the shape \(2, 2\)"):
        rayjac.Sparsity([2], [0], (2, 2))


def test_sparsity_object():
    s = rayjac.Sparsity([1, 0, 1, 1], [2, 0, 0, 2], (2, 3))  # unsorted, with a duplicate
    assert s.shape == (2, 3) and s.nnz == 3
    assert s.rows.tolist() == [0, 1, 1] and s.cols.tolist() == [0, 0, 2]
    assert s.rows.dtype == np.int64 and s.cols.dtype == np.int64
    assert s.colors.shape == (3,) and s.num_colors == 2
    np.testing.assert_array_equal(s.to_scipy().toarray(), [[1, 0, 0], [1, 0, 1]])
    assert "nnz=3" in repr(s)


# --- every shipped job's function, sparse against dense ---

JOBS = [("lorenz96", {"n": 12}, ["forcing"], 0), ("hodgkin_huxley", {"n": 5}, ["V", "m", "h", "n"], None),
        ("gray_scott", {"n": 5}, ["u", "v"], None), ("wilson_cowan", {"n_exc": 6, "n_inh": 3}, ["rates"], None),
        ("mlp", {"sizes": [3, 5, 2], "batch": 3}, ["w0", "b0", "w1", "b1"], 0)]


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # small, dense networks
@pytest.mark.parametrize("job,params,names,argnums", JOBS)
def test_shipped_jobs_sparse_equals_dense(job, params, names, argnums):
    make = importlib.import_module(f"jobs.{job}").make
    results = []
    for sparsity in (None, "auto"):  # a fresh problem each: the step functions write state
        problem = make(**params)
        grad_vars = [problem.variables[k] for k in names]
        results.append(rayjac.jacfwd(problem.func, grad_vars=grad_vars, argnums=argnums,
                                     sparsity=sparsity)(*problem.args))
    tree_allclose(densify(results[1]), results[0], rtol=1e-5, atol=1e-5)


# --- sharded by colour ---

@pytest.fixture
def ray(ray_local):
    yield ray_local


@pytest.mark.parametrize("shards,chunk_size", [(1, None), (2, None), (3, 1), (50, 2)])
def test_sharded_sparse_equals_in_process(ray, shards, chunk_size):
    x = jnp.linspace(-1.0, 1.0, 20)
    local = rayjac.jacfwd(lorenz96, sparsity="auto")(x)
    got = rayjac.jacfwd(lorenz96, sparsity="auto", shards=shards, chunk_size=chunk_size)(x)
    assert _is_bcoo(got) and got.dtype == local.dtype
    np.testing.assert_array_equal(got.indices, local.indices)
    np.testing.assert_allclose(got.data, local.data, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,argnums,has_aux,return_value", [
    ("dict", (0, 1), True, True), ("list", None, False, True), ("none", None, True, False)])
def test_return_table_sharded_sparse(ray, kind, argnums, has_aux, return_value):
    vs, container = make_vars(kind)
    args = model_args()
    jf = rayjac.jacfwd(stateful_model(vs, has_aux), grad_vars=container, argnums=argnums,
                       has_aux=has_aux, return_value=return_value, sparsity="auto", shards=2)
    tree_allclose(densify(jf(*args)), expected_result(kind, argnums, has_aux, return_value,
                                                      vs, container, args))


def test_sharded_sparse_state_writes_once(ray):
    v = rayjac.Variable(jnp.asarray([1.0, 2.0, 3.0, 4.0]))

    def f(x):
        v.value = v.value + x
        return jnp.roll(v.value, 1) * v.value

    jf = rayjac.jacfwd(f, grad_vars=v, argnums=0, sparsity="auto", shards=2)
    (dv, dx) = jf(jnp.ones(4))
    np.testing.assert_array_equal(v.value, [2.0, 3.0, 4.0, 5.0])
    want = jax.jacfwd(lambda u, y: jnp.roll(u + y, 1) * (u + y), argnums=(0, 1))(
        jnp.asarray([1.0, 2.0, 3.0, 4.0]), jnp.ones(4))
    tree_allclose(densify((dv, dx)), want)


def test_sparse_stream_yields_each_colour_once(ray):
    x = jnp.linspace(-1.0, 1.0, 16)
    jf = rayjac.jacfwd(lorenz96, sparsity="auto", shards=3)
    stream = jf.stream((x,))
    shards = sorted((s.start, s.stop) for s in stream.shards)
    assert shards[0][0] == 0 and shards[-1][1] == stream.plan.num_colors == 4
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))


def test_sparse_shard_failure_names_its_colours(ray):
    from rayjac.engine import ShardError
    driver = os.getpid()

    def check(x):
        if os.getpid() != driver:
            raise ValueError("bad colour on worker")
        return x

    def f(x):
        return x * jax.pure_callback(check, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                     jax.lax.stop_gradient(x), vmap_method="expand_dims")

    jf = rayjac.jacfwd(f, sparsity=np.eye(4, dtype=bool), shards=2)
    with pytest.raises(ShardError, match=r"(?s)colours \[0, 1\).*bad colour on worker"):
        jf(jnp.ones(4))


def test_sparse_worker_killed_mid_shard_is_retried(ray, tmp_path):
    marker, driver = str(tmp_path / "killed-once"), os.getpid()

    def maybe_die(x):
        if os.getpid() != driver and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-shard, once
        return x

    def f(x):
        scale = jax.pure_callback(maybe_die, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                  jax.lax.stop_gradient(x), vmap_method="expand_dims")
        return tridiagonal(x) * scale

    x = jnp.linspace(0.0, 1.0, 9)
    pattern = _tri_pattern(9)
    got = rayjac.jacfwd(f, sparsity=pattern, shards=3)(x)
    assert os.path.exists(marker)
    want = rayjac.jacfwd(f, sparsity=pattern)(x)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.data, want.data, rtol=1e-6, atol=1e-7)  # XLA may fold
