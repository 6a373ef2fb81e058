"""The spectrum and stability tables of a run with an ``analysis`` section.

``spectrum.{fmt}``: one row per (point, eigenvalue): ``point`` (int64), ``index`` (int32, 0 the
leading one), ``real``, ``imag`` (float64). ``stability.{fmt}``: one row per point: ``point``,
``abscissa`` (the largest real part computed), ``radius`` (the largest modulus computed),
``stable`` (bool) and ``unstable`` (int32: how many computed eigenvalues lie on the unstable
side). A single-point result has point 0.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ..analysis import stability_summary
from ..analysis._jobs import SinglePoint

SPECTRUM = pa.schema([("point", pa.int64()), ("index", pa.int32()), ("real", pa.float64()),
                      ("imag", pa.float64())])
STABILITY = pa.schema([("point", pa.int64()), ("abscissa", pa.float64()),
                       ("radius", pa.float64()), ("stable", pa.bool_()),
                       ("unstable", pa.int32())])


def spectrum_batch(first: int, lam: np.ndarray, metadata: dict) -> pa.RecordBatch:
    """Rows of points ``first, first + 1, ...`` with eigenvalues ``lam`` (``(P, k)``)."""
    points, k = lam.shape
    return pa.RecordBatch.from_arrays(
        [pa.array(np.repeat(np.arange(first, first + points, dtype=np.int64), k)),
         pa.array(np.tile(np.arange(k, dtype=np.int32), points)),
         pa.array(lam.real.reshape(-1).astype(np.float64)),
         pa.array(lam.imag.reshape(-1).astype(np.float64))],
        schema=SPECTRUM.with_metadata(metadata))


def stability_table(lam: np.ndarray, system: str, metadata: dict) -> pa.Table:
    """One row per point of ``lam`` (``(B, k)``): where its computed eigenvalues lie."""
    summary = stability_summary(lam, system)
    return pa.Table.from_arrays(
        [pa.array(np.arange(lam.shape[0], dtype=np.int64))] +
        [pa.array(summary[name]) for name in ("abscissa", "radius", "stable", "unstable")],
        schema=STABILITY.with_metadata(metadata))


def read_spectrum(table: pa.Table, points: int | None) -> np.ndarray:
    """The eigenvalues ``(B, k)`` (``(k,)`` for a single point), complex128."""
    count = 1 if points is None else points
    point = table.column("point").to_numpy()
    index = table.column("index").to_numpy()
    if point.size % max(count, 1):
        raise ValueError(f"it holds {point.size} eigenvalues, not the same number for each of "
                         f"the {count} points")
    k = point.size // max(count, 1)
    order = np.lexsort((index, point))
    if not (np.array_equal(point[order], np.repeat(np.arange(count), k))
            and np.array_equal(index[order], np.tile(np.arange(k), count))):
        raise ValueError(f"its rows are not points 0..{count - 1} with indices 0..{k - 1}")
    lam = (table.column("real").to_numpy() + 1j * table.column("imag").to_numpy())[order]
    lam = lam.reshape(count, k)
    return lam[0] if points is None else lam


class Spectra:
    """Collects the eigenvalues of a stream's points as its shards or parts go by: from each
    part's ``spectra`` when the worker computed them, else here from the part's values (whole
    points), or, for a single point, from the gathered Jacobian at the end."""

    def __init__(self, stream: Any, analysis: Any):
        self.analysis, self.plan = analysis, stream.plan
        points = getattr(stream, "points", None)
        self.single = SinglePoint(stream.layout, stream.plan) if points is None else None
        self.units = stream.layout.basis.n if stream.plan is None else stream.plan.num_colors
        self.found: dict[int, np.ndarray] = {}

    def watch(self, items: Iterator) -> Iterator:
        """The items, unchanged, after taking what the spectra need from each."""
        for item in items:
            if self.single is not None:
                self.single.add(item)
            else:
                self.found[item[0]] = self._of_part(item)
            yield item

    def _of_part(self, part: Any) -> np.ndarray:
        found = getattr(part, "spectra", None)
        if found is not None:
            return np.asarray(found)
        p0, p1, start, stop, values = part[:5]
        if (start, stop) != (0, self.units):
            raise ValueError(f"The part of points [{p0}, {p1}) holds {self.units} of "
                             f"[{start}, {stop}) only: a spectrum needs whole points.")
        if self.plan is None:
            return self.analysis.dense_spectra(values)
        return self.analysis.sparse_spectra(self.plan, values)

    def all(self) -> np.ndarray:
        """``(B, k)``: every point's eigenvalues, in point order."""
        if self.single is not None:
            return self.single.spectra(self.analysis)
        return np.concatenate([self.found[p] for p in sorted(self.found)])
