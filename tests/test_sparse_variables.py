"""Read-only Variables as constants of a sparse call (SPEC 1.6 "Variables as constants"): their
zeros prune the pattern as a closure constant's do, a change that the pattern read is detected
again on the next call (and only then), a written or differentiated Variable never prunes, and
every result equals dense ``jax.jacfwd`` at random points after every kind of change."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rayjac
from rayjac.core import _constants, _plan
from rayjac.sparsity import DenseColoringWarning

N = 24


def connectivity(seed: int, p: float = 0.15, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, n)) * (rng.random((n, n)) < p)).astype(np.float32)


def points(seed: int, count: int = 2, n: int = N) -> list[jax.Array]:
    rng = np.random.default_rng(100 + seed)
    return [jnp.asarray(rng.uniform(-2, 2, n), jnp.float32) for _ in range(count)]


def assert_exact(jf, f, seed: int = 0) -> None:
    """At random points: the sparse call equals dense jax.jacfwd (Variables at their values)."""
    for x in points(seed):
        np.testing.assert_allclose(jf(x).todense(), jax.jacfwd(f)(x), rtol=1e-5, atol=1e-6)


def mask_of(jf, x) -> np.ndarray:
    return jf.sparsity(x).to_scipy().toarray()


@pytest.fixture
def counters(monkeypatch):
    """How many detections and fingerprints the calls run."""
    counts = {"detect": 0, "fingerprint": 0}

    def counting(module, name, key):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    counting(_plan, "_detect", "detect")
    counting(_constants, "fingerprint", "fingerprint")
    return counts


def network(w: rayjac.Variable):
    def rhs(x):
        return -x + w.value @ jnp.tanh(x)
    return rhs


def test_read_only_variable_prunes_like_a_closure_constant():
    w0 = connectivity(0)
    w = rayjac.Variable(jnp.asarray(w0))
    jf = rayjac.jacfwd(network(w), sparsity="auto")
    x = points(0)[0]
    closed = rayjac.jacfwd(lambda y: -y + jnp.asarray(w0) @ jnp.tanh(y), sparsity="auto")
    got, want = jf.sparsity(x), closed.sparsity(x)
    np.testing.assert_array_equal(got.to_scipy().toarray(), (w0 != 0) | np.eye(N, dtype=bool))
    assert (got.nnz, got.num_colors) == (want.nnz, want.num_colors)
    assert got.num_colors < N // 2
    assert_exact(jf, network(w))


@pytest.mark.filterwarnings("ignore::rayjac.DenseColoringWarning")  # 25 % dense: 13 colours
def test_new_zero_structure_is_detected_again(counters):
    w = rayjac.Variable(jnp.asarray(connectivity(0)))
    jf = rayjac.jacfwd(network(w), sparsity="auto")
    assert_exact(jf, network(w))
    for seed in (1, 2):  # new connections appear, old ones vanish
        new = connectivity(seed, p=0.25)
        w.value = jnp.asarray(new)
        assert_exact(jf, network(w), seed)
        np.testing.assert_array_equal(mask_of(jf, points(0)[0]),
                                      (new != 0) | np.eye(N, dtype=bool))
    assert counters["detect"] == 3


def test_same_zeros_new_values_keep_the_pattern_and_program(counters):
    w0 = connectivity(0)
    w = rayjac.Variable(jnp.asarray(w0))
    jf = rayjac.jacfwd(network(w), sparsity="auto")
    first = jf.sparsity(points(0)[0])
    w.value = jnp.asarray(-3.0 * w0 + np.sign(w0))  # other values, signs flipped, same zeros
    assert_exact(jf, network(w), seed=1)
    assert jf.sparsity(points(0)[0]) is first and counters["detect"] == 1


def test_warm_calls_fingerprint_nothing_until_an_assignment(counters):
    w = rayjac.Variable(jnp.asarray(connectivity(0)))
    jf = rayjac.jacfwd(network(w), sparsity="auto")
    x = points(0)[0]
    jf(x)
    base = counters["fingerprint"]  # those of the detection
    for _ in range(5):
        jf(x)
    assert counters["fingerprint"] == base
    w.value = w.value * 2.0
    jf(x)
    jf(x)
    assert counters["fingerprint"] == base + 1 and counters["detect"] == 1


def test_variable_the_pattern_does_not_read_needs_no_check(counters):
    w, bias = rayjac.Variable(jnp.asarray(connectivity(0))), rayjac.Variable(jnp.zeros(N))
    f = lambda x: w.value @ jnp.tanh(x) + bias.value  # noqa: E731 - bias never prunes
    jf = rayjac.jacfwd(f, sparsity="auto")
    jf(points(0)[0])
    base = counters["fingerprint"]
    bias.value = jnp.ones(N)
    assert_exact(jf, f)
    assert counters["fingerprint"] == base and counters["detect"] == 1


def test_written_variable_never_prunes_and_the_warning_names_it():
    w0 = connectivity(0)
    weights = rayjac.Variable(jnp.asarray(w0))

    def f(x):
        weights.value = weights.value * 1.0  # written: not a constant of the call
        return -x + weights.value @ jnp.tanh(x)

    jf = rayjac.jacfwd(f, sparsity="auto")
    with pytest.warns(DenseColoringWarning, match=r"(?s)24 colours for 24 columns.*the "
                      r"Variable `weights` \(shape \(24, 24\), float32\), which func writes.*"
                      r"would need \d+ colours"):
        pattern = jf.sparsity(points(0)[0])
    assert pattern.nnz == N * N
    assert_exact(jf, lambda x: -x + jnp.asarray(w0) @ jnp.tanh(x))


def test_grad_var_is_differentiated_and_a_read_only_mask_still_prunes():
    w0, mask0 = connectivity(0), connectivity(3) != 0
    w, mask = rayjac.Variable(jnp.asarray(w0)), rayjac.Variable(jnp.asarray(mask0))
    f = lambda x: (w.value * mask.value) @ jnp.tanh(x)  # noqa: E731
    jf = rayjac.jacfwd(f, grad_vars=w, argnums=0, sparsity="auto")
    x = points(0)[0]
    dw, dx = jf(x)
    pure = lambda u, y: (u * mask0) @ jnp.tanh(y)  # noqa: E731
    want_w, want_x = jax.jacfwd(pure, argnums=(0, 1))(jnp.asarray(w0), x)
    np.testing.assert_allclose(dw.todense(), want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx.todense(), want_x, rtol=1e-5, atol=1e-6)
    pattern = jf.sparsity(x).to_scipy().toarray()
    assert pattern[:, N * N:].all()  # w is differentiated, so its zeros never prune
    assert pattern[:, :N * N].sum() == mask0.sum()  # d out_i / d w_ij only where mask_ij
    mask.value = jnp.asarray(connectivity(4) != 0)
    dw, _ = jf(x)
    want_w = jax.jacfwd(lambda u: (u * np.asarray(mask.value)) @ jnp.tanh(x))(jnp.asarray(w0))
    np.testing.assert_allclose(dw.todense(), want_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["index", "predicate"])
def test_values_read_beyond_their_zeros_are_keyed_on_the_whole_value(case, counters):
    rng = np.random.default_rng(0)
    if case == "index":
        v = rayjac.Variable(jnp.asarray(rng.permutation(N) + 0))  # no zeros at all
        f = lambda x: x[v.value] * x  # noqa: E731
        new = jnp.asarray(np.roll(np.asarray(v.value), 3))
    else:
        v = rayjac.Variable(jnp.asarray(connectivity(0)))
        f = lambda x: jnp.where(v.value > 0, jnp.sin(x)[None, :], 0.0).sum(1)  # noqa: E731
        new = -v.value  # the same zeros, every sign flipped
    jf = rayjac.jacfwd(f, sparsity="auto")
    assert_exact(jf, f)
    v.value = new
    assert_exact(jf, f, seed=1)
    assert counters["detect"] == 2


def test_read_only_variable_of_a_map_prunes_nothing():
    w = rayjac.Variable(jnp.asarray(connectivity(0)))
    jf = rayjac.jacfwd(network(w), sparsity="auto")
    x = points(0)[0]
    jf(x)  # a pattern pruned by w's current zeros is cached first
    ws = jnp.asarray(np.stack([connectivity(s, p=0.3) for s in (5, 6)]))
    with pytest.warns(DenseColoringWarning, match=r"(?s)`w` .*differs per point"):
        got = jf.map(jnp.stack([x, x]), states={w: ws})
    for i in range(2):
        want = jax.jacfwd(lambda y: -y + ws[i] @ jnp.tanh(y))(x)
        np.testing.assert_allclose(got.todense()[i], want, rtol=1e-5, atol=1e-6)


def test_outer_jit_first_call_with_aux_value_and_a_read_only_variable():
    n = 96
    w = rayjac.Variable(jnp.asarray(connectivity(7, p=0.05, n=n)))

    def f(x):
        out = -x + w.value @ jnp.tanh(x)
        return out, jnp.sum(out)

    x = points(0, n=n)[0]
    jac, value, aux = jax.jit(rayjac.jacfwd(f, sparsity="auto", has_aux=True,
                                            return_value=True))(x)
    np.testing.assert_allclose(jac.todense(), jax.jacfwd(lambda y: f(y)[0])(x), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(value, f(x)[0], rtol=1e-6)
    assert jac.nse < n * n // 4
