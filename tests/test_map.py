"""``jf.map``: the Jacobians at B points equal the loop of single calls stacked (and
``jax.vmap(jax.jacfwd(f))``), in process, batched, under jit, sparse and sharded; Variables are
never written; errors come before any work; one compiled kernel serves any number of points."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import rayjac
from helpers import make_vars, model_args, model_pure, stateful_model, tree_allclose
from rayjac import engine
from rayjac.core import MapPart

_is_bcoo = lambda x: isinstance(x, jsparse.BCOO)  # noqa: E731
KEY = jax.random.PRNGKey(7)


def _todense(b):
    """``b.todense()`` in numpy: one compile per shape less (maps of many sizes here); what
    JAX's own ``todense`` gives is checked where a test names it."""
    batch, (nse, n_sparse) = b.shape[:b.n_batch], b.indices.shape[b.n_batch:]
    data = np.broadcast_to(np.asarray(b.data), batch + b.data.shape[b.n_batch:])
    indices = np.broadcast_to(np.asarray(b.indices), batch + (nse, n_sparse))
    out = np.zeros(b.shape, data.dtype)
    for i in np.ndindex(*batch):
        keep = np.all(indices[i] < b.shape[b.n_batch:b.n_batch + n_sparse], axis=1)  # padding
        np.add.at(out[i], tuple(indices[i][keep].T), data[i][keep])
    return jnp.asarray(out)


def densify(tree):
    return jax.tree_util.tree_map(lambda b: _todense(b) if _is_bcoo(b) else b, tree,
                                  is_leaf=_is_bcoo)


def loop(jf, args, count, in_axes=0, states=None, kwargs=None, variables=()):
    """The loop of SPEC 1.7: point i with every Variable back at its value when the loop
    starts and ``states[v][i]`` set, single in-process calls, stacked leaf by leaf."""
    states, kwargs = states or {}, kwargs or {}
    axes = (in_axes,) * len(args) if in_axes in (0, None) else in_axes
    start = {v: v.value for v in (*variables, *states)}
    outs = []
    try:
        for i in range(count):
            for v, value in start.items():
                v.value = value
            for v, values in states.items():
                v.value = values[i]
            args_i = [jax.tree_util.tree_map(lambda x: x[i], a) if ax == 0 else a
                      for a, ax in zip(args, axes)]
            outs.append(densify(jf(*args_i, **kwargs)))
    finally:
        for v, value in start.items():
            v.value = value
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def batched_model_args(count, key=KEY):
    """``model_args`` at ``count`` points: ``({"u": (B, 4), "v": (B, 2)}, (B, 4))``."""
    keys = jax.random.split(key, count)
    points = [model_args(k) for k in keys]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *points)


def tanh_net(x, w):
    return jnp.tanh(w @ x) + 0.1 * x


def values(vs):
    return {k: np.asarray(v.value) for k, v in vs.items()}


def assert_unchanged(vs, before):
    for k, v in vs.items():
        np.testing.assert_array_equal(np.asarray(v.value), before[k])


# --- the return table and the loop oracle, in process ---

@pytest.mark.parametrize("kind,argnums,has_aux,return_value", [  # each row of the table
    ("none", None, False, False), ("none", (0, 1), True, False), ("none", 1, False, True),
    ("none", None, True, True), ("dict", None, False, False), ("dict", None, True, False),
    ("dict", None, False, True), ("dict", None, True, True), ("dict", 0, False, False),
    ("dict", (0, 1), True, False), ("dict", (0, 1), False, True), ("dict", 0, True, True)])
def test_return_table_equals_the_loop(kind, argnums, has_aux, return_value):
    vs, container = make_vars(kind)
    jf = rayjac.jacfwd(stateful_model(vs, has_aux), grad_vars=container, argnums=argnums,
                       has_aux=has_aux, return_value=return_value)
    args = batched_model_args(3)
    before = values(vs)
    got = jf.map(*args)
    tree_allclose(got, loop(jf, args, 3))
    assert_unchanged(vs, before)


@pytest.mark.parametrize("kind,argnums", [("single", None), ("list", (1,)), ("tuple", 0)])
def test_grad_vars_containers(kind, argnums):
    vs, container = make_vars(kind)
    jf = rayjac.jacfwd(stateful_model(vs, True), grad_vars=container, argnums=argnums,
                       has_aux=True, return_value=True)
    args = batched_model_args(2)
    tree_allclose(jf.map(*args, batch_size=1), loop(jf, args, 2))


@pytest.mark.parametrize("chunk_size,batch_size", [
    (None, None), (1, 1), (3, 2), (6, 3), (50, 5), (None, 64), (3, None), (1, 5)])
def test_matches_jax_vmap_jacfwd(chunk_size, batch_size):
    xs = jax.random.normal(KEY, (5, 6))
    w = jax.random.normal(jax.random.PRNGKey(1), (6, 6))
    jf = rayjac.jacfwd(tanh_net, chunk_size=chunk_size, return_value=True)
    jac, value = jf.map(xs, w, in_axes=(0, None), batch_size=batch_size)
    tree_allclose(jac, jax.vmap(jax.jacfwd(tanh_net), in_axes=(0, None))(xs, w))
    tree_allclose(value, jax.vmap(tanh_net, in_axes=(0, None))(xs, w))


@pytest.mark.parametrize("in_axes", [0, (0, 0), [0, None], (None, 0)])
def test_in_axes_forms(in_axes):
    xs = jax.random.normal(KEY, (4, 3))
    ws = jax.random.normal(jax.random.PRNGKey(2), (4, 3, 3))
    args = (xs if in_axes in (0, (0, 0)) or in_axes[0] == 0 else xs[0],
            ws if in_axes in (0, (0, 0)) or in_axes[1] == 0 else ws[0])
    jf = rayjac.jacfwd(tanh_net, argnums=(0, 1))
    got = jf.map(*args, in_axes=in_axes)
    tree_allclose(got, loop(jf, args, 4, in_axes))
    axes = (0, 0) if in_axes == 0 else tuple(in_axes)
    tree_allclose(got, jax.vmap(jax.jacfwd(tanh_net, argnums=(0, 1)), in_axes=axes)(*args))


def test_keyword_arguments_and_python_scalars_are_the_same_at_every_point():
    f = lambda x, y, scale=1.0, power=2: scale * x ** power + y  # noqa: E731
    xs, y = jnp.linspace(0.5, 2.0, 12).reshape(4, 3), jnp.ones(3)
    jf = rayjac.jacfwd(f, argnums=(0, 1))
    got = jf.map(xs, y, in_axes=(0, None), scale=3.0, power=3)
    tree_allclose(got, loop(jf, (xs, y), 4, (0, None), kwargs={"scale": 3.0, "power": 3}))


def test_numpy_points_and_scalar_points():
    xs = np.linspace(0.0, 1.0, 5)  # float64 numpy: each point a 0-d array, x64 rules
    jf = rayjac.jacfwd(lambda x: jnp.sin(x) * x, return_value=True)
    got = jf.map(xs)
    assert got[0].shape == (5,) and got[0].dtype == jnp.float32
    tree_allclose(got, loop(jf, (xs,), 5))
    tree_allclose(got[0], jax.vmap(jax.jacfwd(lambda x: jnp.sin(x) * x))(jnp.asarray(xs)))


@pytest.mark.parametrize("batch_size", [None, 2])
def test_dtypes_and_weak_types_follow_the_loop(batch_size):
    f = lambda x: {"h": (x * 2).astype(jnp.float16), "w": x * 3, "i": jnp.round(x).astype(int)}
    xs = jnp.broadcast_to(jnp.asarray(1.5), (3, 2))  # weakly typed points
    jf = rayjac.jacfwd(f, return_value=True)
    got, want = jf.map(xs, batch_size=batch_size), loop(jf, (xs,), 3)
    tree_allclose(got, want)
    weak = lambda t: [x.weak_type for x in jax.tree_util.tree_leaves(t)]  # noqa: E731
    assert weak(got) == weak(want)


def test_holomorphic_and_complex_points():
    f = lambda z: z ** 2 * jnp.roll(z, 1)  # noqa: E731
    zs = (jax.random.normal(KEY, (3, 4)) + 1j * jax.random.normal(KEY, (3, 4))).astype(
        jnp.complex64)
    jf = rayjac.jacfwd(f, holomorphic=True)
    tree_allclose(jf.map(zs, batch_size=2), jax.vmap(jax.jacfwd(f, holomorphic=True))(zs))


# --- states, Variables ---

@pytest.mark.parametrize("batch_size", [None, 2])
def test_states_of_grad_vars_give_the_jacobian_at_each_state(batch_size):
    w = jax.random.normal(KEY, (4, 4))
    v = rayjac.Variable(jnp.zeros(4))
    step = lambda u: jnp.tanh(w @ u) - u  # noqa: E731
    jf = rayjac.jacfwd(lambda: step(v.value), grad_vars=v, return_value=True)
    us = jax.random.normal(jax.random.PRNGKey(3), (5, 4))
    got = jf.map(in_axes=None, states={v: us}, batch_size=batch_size)
    tree_allclose(got, (jax.vmap(jax.jacfwd(step))(us), jax.vmap(step)(us)))
    tree_allclose(got, loop(jf, (), 5, states={v: us}))
    np.testing.assert_array_equal(v.value, np.zeros(4))


def test_states_of_other_variables_and_batched_arguments_together():
    gain = rayjac.Variable(jnp.ones(()))
    bias = rayjac.Variable(jnp.zeros(3))
    f = lambda x: gain.value * jnp.sin(x) + bias.value * x  # noqa: E731
    xs = jax.random.normal(KEY, (4, 3))
    gains = jnp.arange(1.0, 5.0)
    jf = rayjac.jacfwd(f, grad_vars=bias, argnums=0, has_aux=False)
    got = jf.map(xs, states={gain: gains}, batch_size=3)
    tree_allclose(got, loop(jf, (xs,), 4, states={gain: gains}, variables=(bias,)))
    assert float(gain.value) == 1.0


def test_writes_stay_inside_their_point_and_map_writes_nothing():
    v = rayjac.Variable(jnp.asarray([1.0, 2.0, 3.0]))
    count = rayjac.Variable(jnp.zeros(()))

    def f(x):
        count.value = count.value + 1
        v.value = 2 * v.value + x
        return v.value ** 2 * count.value  # reads its own writes

    jf = rayjac.jacfwd(f, grad_vars=v, argnums=0, return_value=True)
    xs = jax.random.normal(KEY, (4, 3))
    got = jf.map(xs, batch_size=3)
    tree_allclose(got, loop(jf, (xs,), 4, variables=(v, count)))
    np.testing.assert_array_equal(v.value, [1.0, 2.0, 3.0])  # nothing leaked, nothing written
    assert float(count.value) == 0.0
    want = jax.vmap(jax.jacfwd(lambda u, x: (2 * u + x) ** 2, argnums=(0, 1)),
                    in_axes=(None, 0))(jnp.asarray([1.0, 2.0, 3.0]), xs)
    tree_allclose(got[0], want)


def test_variables_unchanged_when_func_raises():
    v = rayjac.Variable(jnp.ones(3))

    def f(x):
        v.value = v.value + x
        raise RuntimeError("func failed")

    with pytest.raises(RuntimeError, match="func failed"):
        rayjac.jacfwd(f).map(jnp.ones((2, 3)), states={v: jnp.zeros((2, 3))})
    np.testing.assert_array_equal(v.value, np.ones(3))


# --- jit, recompilation ---

@pytest.mark.parametrize("batch_size", [None, 2])
def test_composes_with_jit(batch_size):
    v = rayjac.Variable(jnp.ones(3))

    def f(x):
        v.value = v.value * x
        return jnp.sin(v.value) * x.sum()

    jf = rayjac.jacfwd(f, return_value=True)
    xs = jax.random.normal(KEY, (5, 3))
    got = jax.jit(lambda xs: jf.map(xs, batch_size=batch_size))(xs)
    tree_allclose(got, loop(jf, (xs,), 5, variables=(v,)))
    np.testing.assert_array_equal(v.value, np.ones(3))
    us = jax.random.normal(jax.random.PRNGKey(4), (5, 3))
    jg = rayjac.jacfwd(f, grad_vars=v)
    tree_allclose(jax.jit(lambda us: jg.map(xs, states={v: us}, batch_size=batch_size))(us),
                  loop(jg, (xs,), 5, states={v: us}))


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # 4 colours, 4 columns
def test_a_new_number_of_points_does_not_recompile_with_batch_size():
    traces = []

    def f(x):
        traces.append(1)
        return jnp.cumsum(jnp.sin(x))

    counts = (7, 2, 3, 1, 12)
    xs = jax.random.normal(KEY, (max(counts), 4))
    want = jax.vmap(jax.jacfwd(f))(xs), jax.vmap(f)(xs)
    for sparsity in (None, "auto"):
        jf = rayjac.jacfwd(f, return_value=True, chunk_size=2, sparsity=sparsity)
        jf.map(jax.random.normal(KEY, (5, 4)), batch_size=3)  # the map's kernels compile
        traces.clear()
        got = [densify(jf.map(xs[:count], batch_size=3)) for count in counts]
        assert traces == []
        for count, each in zip(counts, got):  # the Jacobian at point i is want's row i
            tree_allclose(each, jax.tree_util.tree_map(lambda a: a[:count], want))


# --- sparse ---

def lorenz96(x):
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0


@pytest.mark.parametrize("chunk_size,batch_size", [(None, None), (1, 2), (3, 64)])
def test_sparse_map_is_bcoo_with_one_batch_dimension(chunk_size, batch_size):
    xs = jax.random.normal(KEY, (5, 12))
    jf = rayjac.jacfwd(lorenz96, sparsity="auto", chunk_size=chunk_size, return_value=True)
    jac, value = jf.map(xs, batch_size=batch_size)
    pattern = jf.sparsity(xs[0])
    assert _is_bcoo(jac) and jac.n_batch == 1 and jac.shape == (5, 12, 12)
    assert jac.data.shape == (5, pattern.nnz) and jac.dtype == jnp.float32
    np.testing.assert_array_equal(jac.indices[0], jf(xs[0])[0].indices)  # shared by all
    tree_allclose(jac.todense(), jax.vmap(jax.jacfwd(lorenz96))(xs))
    tree_allclose((jac.todense(), value), loop(rayjac.jacfwd(lorenz96, return_value=True),
                                               (xs,), 5))


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # small blocks
@pytest.mark.parametrize("kind,argnums,has_aux", [("dict", (0, 1), True), ("none", 1, False)])
def test_sparse_return_table_and_jit(kind, argnums, has_aux):
    vs, container = make_vars(kind)
    options = dict(grad_vars=container, argnums=argnums, has_aux=has_aux, return_value=True)
    jf = rayjac.jacfwd(stateful_model(vs, has_aux), sparsity="auto", **options)
    args = batched_model_args(3)
    got = jax.jit(lambda *a: jf.map(*a, batch_size=2))(*args)  # detection under jit too
    assert all(b.n_batch == 1 for b in jax.tree_util.tree_leaves(got[0], is_leaf=_is_bcoo))
    want = loop(rayjac.jacfwd(stateful_model(vs, has_aux), **options), args, 3)
    tree_allclose(densify(got), want)
    tree_allclose(densify(jf.map(*args)), want)  # nothing traced was cached


# --- map_stream in process ---

@pytest.mark.parametrize("sparsity", [None, "auto"])
def test_map_stream_yields_numpy_parts_one_per_batch(sparsity):
    v = rayjac.Variable(jnp.ones(8))

    def f(x):
        v.value = v.value + 1
        return lorenz96(x * v.value), jnp.sum(x)

    jf = rayjac.jacfwd(f, has_aux=True, return_value=True, sparsity=sparsity)
    xs = jax.random.normal(KEY, (7, 8))
    stream = jf.map_stream((xs,), batch_size=3)
    want_jac, want_value, want_aux = loop(jf, (xs,), 7, variables=(v,))
    assert stream.points == 7 and (stream.plan is None) == (sparsity is None)
    tree_allclose((stream.value, stream.aux), (want_value, want_aux))
    spans = []
    for part in stream.parts:
        assert isinstance(part, MapPart) and isinstance(part.values[0], np.ndarray)
        spans.append((part.p0, part.p1, part.start, part.stop))
        dense = want_jac[part.p0:part.p1]
        if sparsity is None:  # J^T rows at the part's points
            np.testing.assert_allclose(part.values[0], np.swapaxes(dense, 1, 2), rtol=1e-6)
        else:
            pos = stream.plan.positions(0, part.start, part.stop)
            rows, cols = stream.plan.rows[0][pos], stream.plan.cols[0][pos]
            np.testing.assert_allclose(part.values[0], dense[:, rows, cols], rtol=1e-6)
    size = 8 if sparsity is None else stream.plan.num_colors
    assert spans == [(0, 3, 0, size), (3, 6, 0, size), (6, 7, 0, size)]
    np.testing.assert_array_equal(v.value, np.ones(8))


# --- errors ---

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(in_axes=(0,)), ValueError, r"in_axes=\(0,\) has 1 entries.*2 positional argument"),
    (dict(in_axes=1), ValueError, r"in_axes must be 0, None, or a tuple.*got 1"),
    (dict(in_axes=(0, 1)), ValueError, r"in_axes must be 0, None.*got \(0, 1\)"),
    (dict(in_axes=True), ValueError, r"in_axes must be 0, None.*got True"),
    (dict(in_axes=None), ValueError, r"needs points: no positional argument is batched"),
    (dict(batch_size=0), ValueError, r"batch_size must be a positive int or None, got 0"),
    (dict(batch_size=2.5), ValueError, r"batch_size must be a positive int"),
    (dict(batch_size=True), ValueError, r"batch_size must be a positive int"),
    (dict(states=[1]), TypeError, r"states must be a dict"),
    (dict(states={"v": np.ones((4, 3))}), TypeError, r"states keys must be rayjac.Variable.*str"),
])
def test_option_errors(kwargs, error, match):
    jf = rayjac.jacfwd(tanh_net)
    with pytest.raises(error, match=match):
        jf.map(jnp.ones((4, 3)), jnp.ones((4, 3, 3)), **kwargs)


def test_input_errors_name_what_is_wrong():
    v = rayjac.Variable(jnp.ones(3, jnp.float32))
    jf = rayjac.jacfwd(lambda x, w: tanh_net(x, w) * v.value)
    x, w = jnp.ones((4, 3)), jnp.ones((5, 3, 3))
    with pytest.raises(ValueError, match=r"disagree.*args\[0\] has 4, args\[1\] has 5"):
        jf.map(x, w)
    with pytest.raises(ValueError, match=r"args\[0\] has 4.*states\[Variable of shape \(3,\)\] "
                                         r"has 2"):
        jf.map(x, w[0], in_axes=(0, None), states={v: jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"must have shape \(B, 3\).*got shape \(4, 2\)"):
        jf.map(x, w[0], in_axes=(0, None), states={v: jnp.ones((4, 2))})
    with pytest.raises(ValueError, match=r"dtype float32, got shape \(4, 3\) and dtype int32"):
        jf.map(x, w[0], in_axes=(0, None), states={v: jnp.ones((4, 3), jnp.int32)})
    with pytest.raises(ValueError, match="0 points"):
        jf.map(x[:0], w[0], in_axes=(0, None))
    with pytest.raises(ValueError, match=r"axis 0 of args\[1\].*float with no axis 0"):
        rayjac.jacfwd(lambda x, s: x * s).map(x, 2.0)
    with pytest.raises(TypeError, match="close over it instead"):
        jf.map(x, v, in_axes=(0, None))


@pytest.mark.parametrize("shards", [None, 2])
def test_call_errors_come_before_any_work(shards, monkeypatch):
    monkeypatch.setattr(engine, "run_map", lambda *a, **k: pytest.fail("work was sent"))
    calls = []

    def f(x, y):
        calls.append(1)
        return x * y

    xs = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"index 2 is not valid for a call with 2 positional"):
        rayjac.jacfwd(f, argnums=2, shards=shards).map(xs, xs)
    with pytest.raises(TypeError, match="jacfwd requires real-valued inputs.*got int32"):
        rayjac.jacfwd(f, shards=shards).map(xs.astype(jnp.int32), xs)
    with pytest.raises(TypeError, match="holomorphic=True requires inputs with complex"):
        rayjac.jacfwd(f, holomorphic=True, shards=shards).map(xs, xs)
    assert calls == []
    with pytest.raises(TypeError, match="has_aux=True requires func to return a pair"):
        rayjac.jacfwd(f, has_aux=True, shards=shards).map(xs, xs)
    with pytest.raises(ValueError, match=r"sparsity.*\(2, 2\)"):
        rayjac.jacfwd(f, sparsity=np.ones((3, 3), bool), shards=shards).map(xs, xs)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        rayjac.jacfwd(f, shards=shards).map(xs, xs, batch_size=-1)


def test_sharded_map_inside_jit_is_an_error():
    jf = rayjac.jacfwd(jnp.sin, shards=2)
    with pytest.raises(TypeError, match="outermost call"):
        jax.jit(lambda xs: jf.map(xs))(jnp.ones((3, 2)))


# --- sharded ---

def _callback(fn, x):
    """``fn(x)`` on the host, inside the kernel (its value scales the tangents)."""
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jax.lax.stop_gradient(x),
                             vmap_method="expand_dims")


@pytest.mark.parametrize("count,shards,batch_size,chunk_size", [
    (1, 2, None, None), (2, 5, None, 2), (7, 3, 2, 3), (12, 4, 5, None), (3, 50, 1, 1)])
def test_sharded_equals_in_process(ray_local, count, shards, batch_size, chunk_size):
    xs = jax.random.normal(KEY, (count, 6))
    w = jax.random.normal(jax.random.PRNGKey(1), (6, 6))
    local = rayjac.jacfwd(tanh_net, argnums=(0, 1), return_value=True, chunk_size=chunk_size)
    sharded = rayjac.jacfwd(tanh_net, argnums=(0, 1), return_value=True, chunk_size=chunk_size,
                            shards=shards)
    got = sharded.map(xs, w, in_axes=(0, None), batch_size=batch_size)
    tree_allclose(got, local.map(xs, w, in_axes=(0, None)), rtol=1e-6)
    tree_allclose(got, loop(local, (xs, w), count, (0, None)), rtol=1e-6)


@pytest.mark.parametrize("kind,argnums,has_aux,return_value", [
    ("dict", (0, 1), True, True), ("none", 0, True, False)])
def test_sharded_return_table_and_states(ray_local, kind, argnums, has_aux, return_value):
    vs, container = make_vars(kind)
    options = dict(grad_vars=container, argnums=argnums, has_aux=has_aux,
                   return_value=return_value)
    local = rayjac.jacfwd(stateful_model(vs, has_aux), **options)
    sharded = rayjac.jacfwd(stateful_model(vs, has_aux), shards=3, **options)
    args = batched_model_args(4)
    bs = jax.random.normal(KEY, (4, 2, 2))
    before = values(vs)
    got = sharded.map(*args, states={vs["b"]: bs}, batch_size=3)
    tree_allclose(got, loop(local, args, 4, states={vs["b"]: bs}, variables=tuple(vs.values())))
    assert_unchanged(vs, before)


@pytest.mark.parametrize("count,shards", [(5, 2), (2, 3)])
def test_sharded_sparse_map(ray_local, count, shards):
    xs = jax.random.normal(KEY, (count, 12))
    local = rayjac.jacfwd(lorenz96, sparsity="auto", return_value=True)
    got = rayjac.jacfwd(lorenz96, sparsity="auto", return_value=True, shards=shards).map(xs)
    want = local.map(xs)
    assert _is_bcoo(got[0]) and got[0].n_batch == 1 and got[0].shape == (count, 12, 12)
    np.testing.assert_array_equal(got[0].indices, want[0].indices)
    tree_allclose(densify(got), densify(want), rtol=1e-6)
    tree_allclose(got[0].todense(), jax.vmap(jax.jacfwd(lorenz96))(xs), rtol=1e-6)


@pytest.mark.parametrize("sparsity", [None, "auto"])
def test_sharded_stream_parts_cover_every_point_and_column_once(ray_local, sparsity):
    jf = rayjac.jacfwd(lorenz96, shards=5, sparsity=sparsity)
    stream = jf.map_stream((jax.random.normal(KEY, (3, 8)),))
    size = 8 if sparsity is None else stream.plan.num_colors
    seen = np.zeros((3, size), int)
    for part in stream.parts:
        seen[part.p0:part.p1, part.start:part.stop] += 1
        assert part.values[0].shape[:2] == (part.p1 - part.p0, (
            part.stop - part.start if sparsity is None else
            len(stream.plan.positions(0, part.start, part.stop))))
    np.testing.assert_array_equal(seen, 1)


def test_batched_arrays_are_put_once(ray_local, monkeypatch):
    import ray
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda x: puts.append(type(x)) or real_put(x))
    w = rayjac.Variable(jax.random.normal(KEY, (6, 6)))
    jf = rayjac.jacfwd(lambda x, y: jnp.tanh(w.value @ x) * y, shards=4)
    xs, y = jax.random.normal(KEY, (9, 6)), jnp.ones(6)
    got = jf.map(xs, y, in_axes=(0, None))
    assert puts.count(np.ndarray) == 3 and len(puts) == 4  # xs, y, W; the program once
    tree_allclose(got, jax.vmap(jax.jacfwd(lambda x: jnp.tanh(w.value @ x)))(xs), rtol=1e-6)


def test_function_that_raises_on_a_worker_names_the_points(ray_local):
    driver = os.getpid()

    def check(x):
        if os.getpid() != driver:
            raise ValueError("bad point on worker")
        return x

    jf = rayjac.jacfwd(lambda x: x * _callback(check, x), shards=2)
    with pytest.raises(engine.ShardError, match=r"(?s)points \[(0, 4|4, 8)\), tangent columns "
                                                r"\[0, 3\).*bad point on worker.*shards=None"):
        jf.map(jnp.ones((8, 3)))


def test_worker_killed_mid_part_costs_only_its_part(ray_local, tmp_path):
    marker = str(tmp_path / "killed-once")

    def kill_first_caller(x):  # only workers call it before the oracle below
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return x
        os.kill(os.getpid(), signal.SIGKILL)

    f = lambda x: jnp.sin(x) * _callback(kill_first_caller, x)  # noqa: E731
    xs = jax.random.normal(KEY, (6, 4))
    got = rayjac.jacfwd(f, shards=3).map(xs, batch_size=1)
    assert os.path.exists(marker)
    tree_allclose(got, rayjac.jacfwd(f).map(xs), rtol=1e-6)
