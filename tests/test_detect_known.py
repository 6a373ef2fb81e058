"""Known inputs of ``detect`` (``_detect/_known.py``): a known value prunes as a closure
constant does, and what the pattern read of it is reported so that a cached pattern is never
too small: where detection says it read only the zeros, every value with the same zeros
(tiny, huge, either sign) has its dense Jacobian's nonzeros inside the pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from detect_cases import dense_nonzeros
from rayjac.sparsity._detect import detect, detect_reads

N = 6
_RNG = np.random.default_rng(3)
W = (_RNG.normal(size=(N, N)) * (_RNG.random((N, N)) < 0.4)).astype(np.float32)
W[0, 0], W[0, 1] = 1.5, 0.0  # a known sign and a known zero for the cases below
CANCELS = np.array([[1, 1, 0, 0, 0, 0], [1, -1, 0, 0, 0, 0]] + [[0] * N] * (N - 2),
                   np.float32)  # CANCELS @ CANCELS has exact zeros that other values lack
MASK = W != 0

# (name, g(x, w), w, what the pattern reads of w, whether it equals the closure-constant one)
CASES = [
    ("matmul", lambda x, w: w @ x, W, "mask", True),
    ("transpose", lambda x, w: w.T @ jnp.sin(x), W, "mask", True),
    ("scaled", lambda x, w: (2.0 * w) @ x, W, "mask", True),
    ("negated_slice", lambda x, w: -w[:3] @ x, W, "mask", True),
    ("rows", lambda x, w: (x * w).sum(1), W, "mask", True),
    ("concatenate", lambda x, w: jnp.concatenate([w, w], 1) @ jnp.concatenate([x, x]), W,
     "mask", True),
    ("not_zero_select", lambda x, w: jnp.where(w != 0, 1.0, 0.0) @ x, W, "mask", True),
    ("bool_mask", lambda x, w: jnp.where(w, x, 0.0).sum(1), MASK, "mask", True),
    ("fori", lambda x, w: lax.fori_loop(0, 3, lambda i, y: w @ jnp.tanh(y), x), W, "mask",
     True),
    ("product_of_known", lambda x, w: (w @ w) @ x, CANCELS, "mask", False),
    ("narrowed", lambda x, w: (w.astype(jnp.float16) @ x.astype(jnp.float16)), W, "value",
     True),
    ("predicate", lambda x, w: jnp.where(w > 0, x[None, :], 0.0).sum(1), W, "value", True),
    ("argmax_index", lambda x, w: x[jnp.argmax(w, axis=1)], W, "value", True),
    ("cond_on_w", lambda x, w: lax.cond(w[0, 0] > 0, jnp.sin, jnp.cos, x) * x[0], W,
     "value", True),
    ("not_read", lambda x, w: jnp.sum(w) + x, W, None, True),
]


def _detect(g, w, known: bool):
    avals = (jax.ShapeDtypeStruct((N,), jnp.float32), jax.ShapeDtypeStruct(w.shape, w.dtype))
    if known:
        found, reads = detect_reads(jax.make_jaxpr(g)(*avals), [True, False], [None, w])
        return found.toarray(), reads
    closed = jax.make_jaxpr(lambda x: g(x, jnp.asarray(w)))(avals[0])
    return detect(closed, [True]).toarray(), None


def _same_zeros(w: np.ndarray, seed: int) -> np.ndarray:
    """Another value with exactly the zeros of ``w``: tiny, huge, either sign."""
    if w.dtype == np.bool_:
        return w
    rng = np.random.default_rng(seed)
    scale = rng.choice([1e-18, 1e-3, 1.0, 1e12], w.shape) * rng.choice([-1, 1], w.shape)
    return np.where(w != 0, scale, 0).astype(w.dtype)


@pytest.mark.parametrize("name,g,w,kind,like_closure", CASES, ids=[c[0] for c in CASES])
def test_known_input_prunes_soundly_and_reports_its_reads(name, g, w, kind, like_closure):
    got, reads = _detect(g, w, known=True)
    assert reads.values == (frozenset([1]) if kind == "value" else frozenset())
    assert reads.masks == (frozenset([1]) if kind == "mask" else frozenset())
    closure, _ = _detect(g, w, known=False)
    if like_closure:
        np.testing.assert_array_equal(got, closure)
    else:
        assert not (closure & ~got).any()  # larger: it holds for every value with these zeros
    x = [(np.random.default_rng(k).uniform(-2, 2, N).astype(np.float32), w) for k in range(2)]
    if kind == "mask":  # every value with the same zeros
        x += [(x[0][0], _same_zeros(w, seed)) for seed in range(3)]
    with np.errstate(all="ignore"):
        want = dense_nonzeros(g, x, (True, False))
    assert not (want & ~got).any(), f"{name}: missed {np.argwhere(want & ~got)[:5]}"


def test_unknown_and_seeded_inputs_stay_unknown():
    g = lambda x, w: w @ x  # noqa: E731
    jaxpr = jax.make_jaxpr(g)(jnp.zeros(N), jnp.zeros((N, N)))
    found, reads = detect_reads(jaxpr, [True, False], [None, None])
    assert found.toarray().all() and reads == (frozenset(), frozenset())
    with pytest.raises(ValueError, match="one known value \\(or None\\) per jaxpr input"):
        detect(jaxpr, [True, False], [None])
