"""Maps over a read-only Variable's values alternating with plain calls (issue 18): each kind
of call keeps its own pattern (the map's with the Variable unknown, the call's pruned by its
zeros), detected once, and every result equals dense ``jax.jacfwd``, also after the
Variable's zero structure changes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rayjac
from test_sparse_variables import connectivity, counters, network, points  # noqa: F401

N = 24


def assert_map_exact(jf, x, w, ws) -> None:
    got = jf.map(x, in_axes=None, states={w: ws})
    for i in range(ws.shape[0]):
        want = jax.jacfwd(lambda y: -y + ws[i] @ jnp.tanh(y))(x)
        np.testing.assert_allclose(got.todense()[i], want, rtol=1e-5, atol=1e-6)


def assert_call_exact(jf, x, w) -> None:
    want = jax.jacfwd(lambda y: -y + w.value @ jnp.tanh(y))(x)
    np.testing.assert_allclose(jf(x).todense(), want, rtol=1e-5, atol=1e-6)


def make(w: rayjac.Variable):
    return rayjac.jacfwd(network(w), sparsity="auto")


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # the map's dense pattern
def test_alternating_map_and_calls_detect_each_pattern_once(counters):  # noqa: F811
    w = rayjac.Variable(jnp.asarray(connectivity(0)))
    jf, x = make(w), points(0)[0]
    ws = jnp.asarray(np.stack([connectivity(s, p=0.3) for s in (5, 6)]))
    pruned = jf.sparsity(x)
    for _ in range(3):
        assert_map_exact(jf, x, w, ws)
        assert_call_exact(jf, x, w)
    assert counters["detect"] == 2  # one per kind of call, not one per switch
    assert jf.sparsity(x) is pruned


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")
def test_new_zeros_between_maps_detect_the_calls_pattern_again(counters):  # noqa: F811
    w = rayjac.Variable(jnp.asarray(connectivity(0)))
    jf, x = make(w), points(0)[0]
    ws = jnp.asarray(np.stack([connectivity(s, p=0.3) for s in (5, 6)]))
    assert_call_exact(jf, x, w)
    assert_map_exact(jf, x, w, ws)
    w.value = jnp.asarray(connectivity(1, p=0.25))  # the kept pruned pattern no longer holds
    assert_call_exact(jf, x, w)
    assert_map_exact(jf, x, w, ws)  # the map's pattern holds for any value of w
    assert_call_exact(jf, x, w)
    assert counters["detect"] == 3
    new = np.asarray(w.value) != 0
    np.testing.assert_array_equal(jf.sparsity(x).to_scipy().toarray(),
                                  new | np.eye(N, dtype=bool))
