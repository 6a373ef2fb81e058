"""Sparse calls on ordinary functions that once crashed (issue 18): outputs that are a
differentiated input passed through unchanged, custom_jvp rules that return or re-wrap their
tangent, and zero-size inputs. Each gives exact BCOO blocks: in process, chunked, under jit,
for a map and sharded, against dense ``jax.jacfwd``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import rayjac


@jax.custom_jvp
def _straight_through(y):
    return jnp.round(y)


_straight_through.defjvp(lambda p, t: (_straight_through(p[0]), t[0]))


@jax.custom_jvp
def _rewraps(y):
    return 2.0 * y[::-1]


_rewraps.defjvp(lambda p, t: (_rewraps(p[0]), _rewraps(t[0])))

_X = jnp.linspace(0.5, 1.5, 3)
CASES = {
    "identity": (lambda x: x, _X),
    "pair": (lambda x: (x, x ** 2), _X),
    "pytree": (lambda p: {"a": p["a"], "b": 2 * p["b"]}, {"a": _X[:2], "b": _X}),
    "straight_through": (_straight_through, _X),
    "rule_rewraps_tangent": (_rewraps, _X),
    "same_dtype_astype": (lambda x: x.astype(jnp.float32), _X),
    "scan_identity": (lambda x: jax.lax.scan(lambda c, y: (c, y), 0.0, x)[1], _X),
    "zero_size_input": (jnp.sum, jnp.zeros(0)),
    "zero_size_both": (lambda x: x * 2, jnp.zeros((0, 2))),
}
_is_bcoo = lambda b: isinstance(b, jsparse.BCOO)  # noqa: E731


def assert_matches_dense(got, want):
    leaves = jax.tree_util.tree_leaves(got, is_leaf=_is_bcoo)
    assert leaves and all(_is_bcoo(b) for b in leaves)
    got = jax.tree_util.tree_map(lambda b: b.todense(), got, is_leaf=_is_bcoo)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # tiny, dense patterns
@pytest.mark.parametrize("mode", ["jit", "chunked"])
@pytest.mark.parametrize("name", list(CASES))
def test_passthrough_and_zero_size_give_exact_blocks(name, mode):
    f, x = CASES[name]
    jf = rayjac.jacfwd(f, sparsity="auto", chunk_size=1 if mode == "chunked" else None)
    assert_matches_dense(jax.jit(jf)(x) if mode == "jit" else jf(x), jax.jacfwd(f)(x))


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")
@pytest.mark.parametrize("name", ["pair", "straight_through", "zero_size_input"])
def test_passthrough_map(name):
    f, x = CASES[name]
    xs = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), x)
    assert_matches_dense(rayjac.jacfwd(f, sparsity="auto").map(xs),
                         jax.vmap(jax.jacfwd(f))(xs))


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")
def test_passthrough_sharded(ray_local):
    for name in ("pair", "zero_size_input"):
        f, x = CASES[name]
        assert_matches_dense(rayjac.jacfwd(f, sparsity="auto", shards=2)(x), jax.jacfwd(f)(x))
