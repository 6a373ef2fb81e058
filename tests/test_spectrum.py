"""rayjac.analysis.spectrum and stability_summary (SPEC 1.8) against LAPACK and closed forms."""

from __future__ import annotations

import ast
import doctest
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse import linalg as spla

import rayjac.analysis
from rayjac.analysis import _spectrum, spectrum, stability_summary

SYSTEMS = ("continuous", "discrete")

# --- oracles ------------------------------------------------------------------------------------


def _lead_key(lam: np.ndarray, system: str) -> np.ndarray:
    """The quantity spectrum sorts by, descending: real part or modulus."""
    return lam.real if system == "continuous" else np.abs(lam)


def assert_same_multiset(got, want, tol=1e-8) -> None:
    """Each eigenvalue in `got` matched one-to-one to one in `want` (Hungarian assignment)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{got.shape} != {want.shape}"
    cost = np.abs(got[:, None] - want[None, :])
    rows, cols = linear_sum_assignment(cost)
    worst = cost[rows, cols].max(initial=0.0)
    assert worst <= tol * (1 + np.abs(want).max(initial=0.0)), f"{worst}: {got} vs {want}"


def assert_sorted(lam: np.ndarray, system: str) -> None:
    """Non-increasing sort key along the last axis (ties in any order, up to rounding)."""
    key = _lead_key(lam, system)
    assert np.all(np.diff(key, axis=-1) <= 1e-12 * (1 + np.abs(key).max(initial=0.0)))


def assert_leading(got: np.ndarray, J: np.ndarray, k: int, system: str, tol=1e-8) -> None:
    """`got` (one point) holds the min(k, n) leading eigenvalues of the dense matrix J."""
    full = np.linalg.eigvals(J)
    m = min(k, len(full))
    assert got.shape == (m,) and got.dtype == np.complex128
    assert_sorted(got, system)
    want_key = np.sort(_lead_key(full, system))[::-1][:m]  # unambiguous even where ties are
    scale = 1 + np.abs(full).max()
    np.testing.assert_allclose(_lead_key(got, system), want_key, atol=tol * scale)
    assert np.abs(got[:, None] - full[None, :]).min(axis=1).max() <= tol * scale


# --- inputs -------------------------------------------------------------------------------------


def _random(shape, seed=0, dtype=np.float64, density=0.5) -> np.ndarray:
    """Random matrices, about `density` of entries nonzero, exact in float32 (JAX's default)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * (rng.random(shape) < density)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape) * (a != 0)
    return a.astype(np.complex64 if a.dtype.kind == "c" else np.float32).astype(dtype)


def _bcoo(a: np.ndarray, n_batch=None, n_dense=0, pad=0) -> jsparse.BCOO:
    """`a` as a BCOO built in numpy (no JAX compile); n_batch = a.ndim - 2 (as jf.map gives).

    Each batch element stores its nonzero sparse positions, padded to the largest count + pad
    with out-of-range indices (the sparse shape), as BCOO.fromdense pads.
    """
    n_batch = a.ndim - 2 if n_batch is None else n_batch
    batch, dense = a.shape[:n_batch], a.shape[a.ndim - n_dense:]
    sparse_shape = a.shape[n_batch:a.ndim - n_dense]
    flat = a.reshape((int(np.prod(batch)),) + a.shape[n_batch:])
    masks = flat.any(axis=tuple(range(1 + len(sparse_shape), flat.ndim)))
    nonzeros = [np.argwhere(m) for m in masks]
    nse = max((len(z) for z in nonzeros), default=0) + pad
    indices = np.tile(np.array(sparse_shape, np.int32), (len(flat), nse, 1))
    data = np.zeros((len(flat), nse) + dense, a.dtype)
    for b, z in enumerate(nonzeros):
        indices[b, : len(z)], data[b, : len(z)] = z, flat[b][tuple(z.T)]
    indices = indices.reshape(batch + (nse, len(sparse_shape)))
    return jsparse.BCOO((jnp.asarray(data.reshape(batch + (nse,) + dense)), jnp.asarray(indices)),
                        shape=a.shape)


MATRIX_KINDS = {
    "numpy": lambda a: a,
    "jax": jnp.asarray,
    "bcoo": _bcoo,
    "bcoo_padded": lambda a: _bcoo(a, pad=3),
    "csr_array": sp.csr_array,
    "csr_matrix": sp.csr_matrix,
    "coo_array": sp.coo_array,
    "coo_matrix": sp.coo_matrix,
    "csc_array": sp.csc_array,
}
STACK_KINDS = {
    "numpy": lambda a: a,
    "jax": jnp.asarray,
    "bcoo_batched": _bcoo,
    "bcoo_padded": lambda a: _bcoo(a, pad=3),
}
SPARSE_MATRIX_KINDS = [k for k in MATRIX_KINDS if k not in ("numpy", "jax")]


def _separated(n: int, system: str, seed=0):
    """A sparse n x n 'network' matrix with known, well separated leading eigenvalues.

    P (D + N) P^T with N strictly upper triangular (4 random entries a row) and P a random
    permutation: a similarity of a triangular matrix, so its eigenvalues are exactly diag(D).
    """
    rng = np.random.default_rng(seed)
    if system == "continuous":
        lead, bulk = np.array([0.5, 0.3, 0.1, -0.1]), rng.uniform(-3.0, -1.0, n - 4)
    else:
        lead, bulk = np.array([2.0, -1.8, 1.6, -1.4]), rng.uniform(-0.9, 0.9, n - 4)
    rows, cols = rng.integers(0, n, (2, 4 * n))
    upper = rows < cols
    strict = sp.coo_array((0.2 * rng.standard_normal(upper.sum()), (rows[upper], cols[upper])),
                          shape=(n, n))
    p = rng.permutation(n)
    A = (sp.diags_array(np.concatenate([lead, bulk])) + strict).tocsr()[p][:, p]
    return sp.csr_array(A), lead


def _toeplitz(n: int, a, b, c) -> sp.csr_array:
    """Tridiagonal Toeplitz: a on the diagonal, b above it, c below it."""
    return sp.csr_array(sp.diags_array([np.full(n - 1, c), np.full(n, a), np.full(n - 1, b)],
                                       offsets=[-1, 0, 1]))


def _toeplitz_eigenvalues(n: int, a, b, c) -> np.ndarray:
    """a + 2 sqrt(bc) cos(pi j / (n + 1)), j = 1..n."""
    j = np.arange(1, n + 1)
    return a + 2 * np.sqrt(complex(b * c)) * np.cos(np.pi * j / (n + 1))


@pytest.fixture
def count_arpack(monkeypatch):
    """A list that gets the ncv of every ARPACK call spectrum makes."""
    calls, eigs = [], spla.eigs

    def recording_eigs(*args, **kwargs):
        calls.append(kwargs["ncv"])
        return eigs(*args, **kwargs)

    monkeypatch.setattr(spla, "eigs", recording_eigs)
    return calls


# --- every eigenvalue ---------------------------------------------------------------------------


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("kind", MATRIX_KINDS)
def test_every_eigenvalue_matches_lapack(kind, system):
    J = _random((12, 12), seed=1)
    lam = spectrum(MATRIX_KINDS[kind](J), system=system)
    assert lam.shape == (12,) and lam.dtype == np.complex128
    assert_sorted(lam, system)
    assert_same_multiset(lam, np.linalg.eigvals(J))


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("kind", STACK_KINDS)
def test_stack_matches_lapack_point_by_point(kind, system):
    Js = _random((3, 10, 10), seed=2)
    lam = spectrum(STACK_KINDS[kind](Js), system=system)
    assert lam.shape == (3, 10) and lam.dtype == np.complex128
    assert_sorted(lam, system)
    for got, J in zip(lam, Js):
        assert_same_multiset(got, np.linalg.eigvals(J))


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("kind", ["numpy", "jax", "bcoo", "csr_array"])
def test_dtypes_give_complex128(kind, dtype):
    J = (np.arange(25).reshape(5, 5) % 7 - 3).astype(dtype) if dtype == np.int32 else _random(
        (5, 5), 3, dtype)
    lam = spectrum(MATRIX_KINDS[kind](J))
    assert lam.dtype == np.complex128
    assert_same_multiset(lam, np.linalg.eigvals(J.astype(np.complex128)))


def test_continuous_and_discrete_sort_orders():
    J = np.diag([-3.0, 0.5, -0.5, 2.0]) + np.diag([1.0, 1.0, 1.0], 1)
    np.testing.assert_array_equal(spectrum(J), [2.0, 0.5, -0.5, -3.0])
    np.testing.assert_array_equal(spectrum(J, system="discrete"), [-3.0, 2.0, 0.5, -0.5])
    rotation = np.array([[0.0, -2.0], [2.0, 0.0]])  # +-2i: a conjugate pair, equal keys
    assert_same_multiset(spectrum(rotation), [2j, -2j])


# --- k leading eigenvalues ----------------------------------------------------------------------


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("k", [1, 2, 10, 11, 12, 40])
@pytest.mark.parametrize("kind", ["numpy", "jax", "bcoo", "csr_array", "coo_matrix"])
def test_k_leading_match_lapack(kind, k, system, count_arpack):
    J = _random((12, 12), seed=4, density=0.6)
    lam = spectrum(MATRIX_KINDS[kind](J), k=k, system=system)
    assert_leading(lam, J, k, system)
    arpack = kind in SPARSE_MATRIX_KINDS and k < 12 - 1
    assert len(count_arpack) == arpack  # ARPACK exactly when sparse with k < n - 1


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("k", [1, 3, 8, 9, 30])
@pytest.mark.parametrize("kind", STACK_KINDS)
def test_k_leading_of_a_stack(kind, k, system, count_arpack):
    Js = _random((3, 10, 10), seed=5, density=0.6)
    lam = spectrum(STACK_KINDS[kind](Js), k=k, system=system)
    assert lam.shape == (3, min(k, 10))
    for got, J in zip(lam, Js):
        assert_leading(got, J, k, system)
    assert len(count_arpack) == (3 if kind.startswith("bcoo") and k < 9 else 0)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("a, b, c", [
    (-1.0, 1.0, 0.95), (0.5, 1.0, 1.0), (0, 1 + 0.5j, 0.9 + 0.45j),  # the last: complex, and
])                                                                   # ties in modulus
def test_arpack_matches_toeplitz_closed_form(a, b, c, system):
    n, k = 200, 6  # |c / b| near 1: far from it the eigenvalues are ill-conditioned
    exact = _toeplitz_eigenvalues(n, a, b, c)
    lam = spectrum(_toeplitz(n, a, b, c), k=k, system=system)
    assert_sorted(lam, system)
    assert_same_multiset(lam, exact[np.argsort(-_lead_key(exact, system))][:k])


def test_batched_bcoo_runs_arpack_per_point(count_arpack):
    n, diagonals = 200, (-1.0, 0.25, 3.0)
    mats = [_toeplitz(n, a, 1.0, 0.9).tocoo() for a in diagonals]
    indices = np.stack([np.stack([m.row, m.col], axis=1) for m in mats])
    data = np.stack([m.data for m in mats])
    Js = jsparse.BCOO((data, indices), shape=(3, n, n))  # what jf.map gives for sparse results
    lam = spectrum(Js, k=5)
    assert lam.shape == (3, 5) and count_arpack == [20, 20, 20]
    for got, a in zip(lam, diagonals):
        np.testing.assert_allclose(got, _toeplitz_eigenvalues(n, a, 1.0, 0.9)[:5], atol=1e-8)


@pytest.mark.parametrize("shape, layout, build", [
    ((6, 6), {"n_batch": 1, "n_dense": 0}, _bcoo),
    ((6, 6), {"n_batch": 0, "n_dense": 1}, _bcoo),
    ((2, 6, 6), {"n_batch": 0, "n_dense": 0}, _bcoo),
    ((2, 6, 6), {"n_batch": 2, "n_dense": 0}, _bcoo),
    ((2, 6, 6), {"n_batch": 1, "n_dense": 1}, _bcoo),
    ((2, 6, 6), {"n_batch": 1, "n_dense": 1}, jsparse.BCOO.fromdense),  # JAX's own, compiled
])
def test_other_bcoo_layouts(shape, layout, build):
    Js = _random(shape, seed=7, density=0.7)
    J = build(Js, **layout)
    assert (J.n_batch, J.n_dense) == (layout["n_batch"], layout["n_dense"])
    lam = spectrum(J, k=3)
    for got, J in zip(np.atleast_2d(lam), Js.reshape((-1,) + shape[-2:])):
        assert_leading(got, J, 3, "continuous")


def test_bcoo_padding_and_duplicates():
    indices = np.array([[[0, 0], [0, 0], [1, 2], [3, 3]], [[2, 2], [3, 3], [3, 3], [0, 1]]])
    data = np.array([[1.0, 2.0, 5.0, np.nan], [4.0, 1.0, 1.0, 7.0]])  # index 3 == n: padding
    lam = spectrum(jsparse.BCOO((data, indices), shape=(2, 3, 3)))
    assert_same_multiset(lam[0], [3.0, 0.0, 0.0])  # duplicates sum; padding is dropped
    assert_same_multiset(lam[1], [4.0, 0.0, 0.0])


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("kind", ["csr_array", "csr_matrix", "coo_array", "bcoo", "bcoo_stack"])
def test_large_sparse_never_made_dense(kind, system, monkeypatch):
    n, k = 20000, 4
    A, lead = _separated(n, system)
    J = {
        "csr_array": lambda: A, "csr_matrix": lambda: sp.csr_matrix(A),
        "coo_array": lambda: A.tocoo(), "bcoo": lambda: jsparse.BCOO.from_scipy_sparse(A),
        "bcoo_stack": lambda: jsparse.bcoo_broadcast_in_dim(
            jsparse.BCOO.from_scipy_sparse(A), shape=(2, n, n), broadcast_dimensions=(1, 2)),
    }[kind]()

    def densify(*args, **kwargs):
        raise AssertionError("spectrum made a sparse J dense")

    for cls in {c for t in (sp.csr_array, sp.csr_matrix, sp.coo_array) for c in t.__mro__}:
        for name in ("toarray", "todense"):
            if name in vars(cls):
                monkeypatch.setattr(cls, name, densify)
    monkeypatch.setattr(jsparse.BCOO, "todense", densify)
    monkeypatch.setattr(np.linalg, "eigvals", densify)
    lam = spectrum(J, k=k, system=system)
    np.testing.assert_allclose(lam, np.broadcast_to(lead, lam.shape), atol=1e-9)


def test_arpack_is_deterministic():
    A, _ = _separated(3000, "continuous", seed=3)
    np.testing.assert_array_equal(spectrum(A, k=3), spectrum(A, k=3))


# --- empty inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("J, k, shape", [
    (np.zeros((0, 0)), None, (0,)),
    (np.zeros((0, 0)), 3, (0,)),
    (np.zeros((0, 5, 5)), None, (0, 5)),
    (np.zeros((0, 5, 5)), 2, (0, 2)),
    (np.zeros((2, 0, 0)), None, (2, 0)),
    (sp.csr_array((0, 0)), None, (0,)),
    (_bcoo(np.zeros((0, 5, 5))), None, (0, 5)),
    (_bcoo(np.zeros((0, 5, 5))), 2, (0, 2)),
    (_bcoo(np.zeros((0, 0))), None, (0,)),
])
def test_empty_inputs_give_empty_arrays(J, k, shape):
    lam = spectrum(J, k=k)
    assert lam.shape == shape and lam.dtype == np.complex128


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("J, shape", [
    (np.zeros((3, 4)), r"\(3, 4\)"),
    (np.zeros((2, 3, 4)), r"\(2, 3, 4\)"),
    (np.zeros(5), r"\(5,\)"),
    (np.zeros((2, 2, 2, 2)), r"\(2, 2, 2, 2\)"),
    (jnp.zeros((3, 4)), r"\(3, 4\)"),
    (sp.csr_array((3, 4)), r"\(3, 4\)"),
    (jsparse.BCOO.fromdense(np.ones((2, 3, 4)), n_batch=1), r"\(2, 3, 4\)"),
])
def test_non_square_is_a_value_error_naming_the_shape(J, shape):
    with pytest.raises(ValueError, match=r"square J of shape \(n, n\).*got .*" + shape):
        spectrum(J)


@pytest.mark.parametrize("system", ["Continuous", "flow", None, 1])
def test_bad_system_names_the_option(system):
    with pytest.raises(ValueError, match=r"system must be one of \('continuous', 'discrete'\)"):
        spectrum(np.eye(2), system=system)
    with pytest.raises(ValueError, match="system="):
        stability_summary(np.zeros(2), system=system)


@pytest.mark.parametrize("k", [0, -1, True, False, 2.0, "3", [2]])
def test_bad_k_names_the_option(k):
    with pytest.raises(ValueError, match=r"k must be None .* or a positive int .*got k="):
        spectrum(np.eye(3), k=k)


def test_numpy_integer_k_is_fine():
    assert spectrum(np.eye(3), k=np.int64(2)).shape == (2,)


@pytest.mark.parametrize("kind", ["csr_array", "bcoo"])
@pytest.mark.parametrize("k", [None, 4096, 5000])
def test_every_eigenvalue_of_a_large_sparse_j_needs_k(kind, k):
    J = sp.eye_array(4097, format="csr")
    J = jsparse.BCOO.from_scipy_sparse(J) if kind == "bcoo" else J
    with pytest.raises(ValueError, match=r"\(4097, 4097\).*4096 x 4096.*Pass k < n - 1"):
        spectrum(J, k=k)


def test_sparse_up_to_the_limit_is_made_dense_for_every_eigenvalue():
    lam = spectrum(sp.diags_array(np.arange(4096.0)).tocsr(), system="discrete")
    np.testing.assert_array_equal(lam, np.arange(4096.0)[::-1])


@pytest.mark.parametrize("kind, point", [
    ("numpy", 0), ("csr_array", 0), ("bcoo", 0), ("numpy_stack", 1), ("bcoo_stack", 1),
])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_entries_are_a_value_error(kind, point, bad):
    J = np.eye(3)
    J[1, 2] = bad
    stack = np.stack([np.eye(3), J, np.eye(3)])
    J = {"numpy": J, "csr_array": sp.csr_array(J), "bcoo": _bcoo(J), "numpy_stack": stack,
         "bcoo_stack": _bcoo(stack)}[kind]
    with pytest.raises(ValueError, match=rf"NaN or inf entries at point\(s\) \[{point}\] "):
        spectrum(J)


@pytest.mark.parametrize("J", [np.array([["a", "b"], ["c", "d"]]), object()])
def test_non_numbers_are_a_type_error(J):
    with pytest.raises(TypeError, match="spectrum"):
        spectrum(J)


def test_inside_jit_is_a_type_error_that_says_so():
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(spectrum)(jnp.eye(3))


def test_arpack_tries_grow_the_subspace_within_a_restart_budget():
    assert _spectrum._arpack_tries(10**5, 6) == [(20, 300), (80, 18)]
    assert _spectrum._arpack_tries(10**6, 6) == [(20, 300), (80, 18)]
    assert _spectrum._arpack_tries(200, 6) == [(20, 2000), (80, 2000)]  # cheap restarts: 10 n
    assert _spectrum._arpack_tries(60, 4) == [(20, 600), (60, 600)]
    assert _spectrum._arpack_tries(15, 2) == [(15, 150)]  # the whole space at once: one try


@pytest.mark.parametrize("point", [0, 2])
def test_arpack_that_cannot_converge_is_a_runtime_error(point, count_arpack, monkeypatch):
    # Skew-symmetric: every eigenvalue has real part 0, so "largest real part" never settles;
    # a few restarts per try keep the test fast (the real budget takes ~10 s to give up here).
    monkeypatch.setattr(_spectrum, "_arpack_tries", lambda n, k: [(20, 3), (40, 3)])
    J = _toeplitz(200, 0.0, 1.0, -1.0)
    good = _separated(200, "continuous")[0].toarray()  # converges in a few restarts
    Js = _bcoo(np.stack([good] * point + [J.toarray()]))
    with pytest.raises(RuntimeError, match=rf"ARPACK found \d of the k=4 eigenvalues of largest "
                       rf"real part of the 200 x 200 sparse J at point {point} .*ncv.*k=None"):
        spectrum(Js if point else J, k=4)
    assert count_arpack == [20] * point + [20, 40]  # one retry, with a larger subspace


def test_arpack_retry_rescues_a_first_failure(monkeypatch):
    calls, eigs = [], spla.eigs

    def fails_once(A, **kwargs):
        calls.append(kwargs["ncv"])
        if len(calls) == 1:
            raise spla.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))
        return eigs(A, **kwargs)

    monkeypatch.setattr(spla, "eigs", fails_once)
    A, lead = _separated(500, "continuous")
    np.testing.assert_allclose(spectrum(A, k=3), lead[:3], atol=1e-9)
    assert calls == [20, 80]


# --- stability_summary --------------------------------------------------------------------------


@pytest.mark.parametrize("system, lam, abscissa, radius, stable, unstable", [
    ("continuous", [-1 + 2j, -1 - 2j, -3], -1.0, 3.0, True, 0),
    ("continuous", [0.0, -1.0], 0.0, 1.0, False, 1),  # Re = 0 is not stable
    ("continuous", [0.5 + 1j, 0.5 - 1j, -2], 0.5, 2.0, False, 2),
    ("continuous", [np.nan, -1.0], np.nan, np.nan, False, 1),  # NaN counts as unstable
    ("continuous", [], -np.inf, 0.0, True, 0),
    ("discrete", [0.5j, -0.9], -0.0, 0.9, True, 0),
    ("discrete", [1.0, 0.2], 1.0, 1.0, False, 1),  # |lam| = 1 is not stable
    ("discrete", [-3.0, 0.6 + 0.8j, 0.1], 0.6, 3.0, False, 2),
    ("discrete", [], -np.inf, 0.0, True, 0),
])
def test_stability_summary_of_one_point(system, lam, abscissa, radius, stable, unstable):
    s = stability_summary(np.array(lam, dtype=complex), system=system)
    assert set(s) == {"abscissa", "radius", "stable", "unstable"}
    np.testing.assert_array_equal(s["abscissa"], [abscissa])
    np.testing.assert_array_equal(s["radius"], [radius])
    np.testing.assert_array_equal(s["stable"], [stable])
    np.testing.assert_array_equal(s["unstable"], [unstable])
    assert s["stable"].dtype == bool and s["unstable"].dtype == np.int32
    assert s["abscissa"].dtype == s["radius"].dtype == np.float64


@pytest.mark.parametrize("system", SYSTEMS)
def test_stability_summary_of_a_spectrum_stack(system):
    R = _random((5, 8, 8), seed=6, density=1.0)
    R /= np.abs(np.linalg.eigvals(R)).max(axis=1)[:, None, None]  # spectral radius 1
    if system == "continuous":  # R - c I: stable for c > 1, unstable for c < 0
        Js = R - np.array([2.0, 1.5, -0.5, -1.0, 3.0])[:, None, None] * np.eye(8)
    else:  # s R: stable for s < 1
        Js = R * np.array([0.5, 0.9, 1.1, 2.0, 0.3])[:, None, None]
    lam = spectrum(Js, system=system)
    s = stability_summary(lam, system)
    full = np.linalg.eigvals(Js)
    np.testing.assert_allclose(s["abscissa"], full.real.max(axis=1))
    np.testing.assert_allclose(s["radius"], np.abs(full).max(axis=1))
    side = full.real >= 0 if system == "continuous" else np.abs(full) >= 1
    np.testing.assert_array_equal(s["unstable"], side.sum(axis=1))
    np.testing.assert_array_equal(s["stable"], side.sum(axis=1) == 0)
    np.testing.assert_array_equal(s["stable"], [True, True, False, False, True])


@pytest.mark.parametrize("lam", [np.zeros(()), np.zeros((2, 2, 2))])
def test_stability_summary_needs_1d_or_2d(lam):
    with pytest.raises(ValueError, match=r"shape \(k,\) or \(B, k\).*got shape"):
        stability_summary(lam)


# --- the module ---------------------------------------------------------------------------------


def test_face_module_exports_documented_names():
    assert rayjac.analysis.__all__ == ["spectrum", "stability_summary"]
    for name in rayjac.analysis.__all__:
        assert getattr(rayjac.analysis, name).__doc__


def test_docstring_examples_run():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failed, attempted = doctest.testmod(_spectrum, optionflags=flags)
    assert attempted >= 4 and failed == 0


def test_module_imports_only_numpy_at_top_and_nothing_from_rayjac():
    tree = ast.parse(inspect.getsource(_spectrum))
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
           for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert top <= {"__future__", "sys", "typing", "numpy"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not node.module.startswith("rayjac"), node.module
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("rayjac") for a in node.names)
