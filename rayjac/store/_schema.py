"""The on-disk schema of a result folder (``SCHEMA``): its file names, the schema-metadata key
every file's JSON description is kept under, and the newest schema version this rayjac reads.

A run's folder holds ``jacobian.arrow`` (dense: one row per tangent column; sparse: one row per
stored entry, with ``colors.arrow`` beside it), ``value_aux.arrow`` (one row: the primal value and
aux leaves) and ``metadata.json``, or ``.parquet`` files on request. ``_treespec`` turns pytrees
and dense shards into those tables, ``_coords`` sparse shards; the README documents them.
"""

from __future__ import annotations

import dataclasses

from . import _folders
from . import _treespec as ts
from ._formats import FORMATS


@dataclasses.dataclass(frozen=True)
class Schema:
    """The names a result folder uses (the README documents each file)."""

    version: int = 3  # the newest this rayjac reads: dense 1, sparse 2, many points 3
    key: str = "rayjac"  # schema-metadata key of every file's JSON description
    index: tuple = ts.INDEX  # the Jacobian table's first columns, then out_0, out_1, ...
    jacobian: str = "jacobian"
    value_aux: str = "value_aux"
    metadata: str = "metadata.json"
    colors: str = "colors"  # sparse results: the colour of each column
    runs_table: str = "runs.parquet"  # a sweep's folder: one row per run
    spectrum: str = "spectrum"  # with an analysis: eigenvalues, one row per (point, index)
    stability: str = "stability"  # with an analysis: one row per point

    def files(self, fmt: str) -> tuple[str, str, str]:
        return f"{self.jacobian}.{fmt}", f"{self.value_aux}.{fmt}", self.metadata

    def colors_file(self, fmt: str) -> str:
        return f"{self.colors}.{fmt}"

    def analysis_files(self, fmt: str) -> tuple[str, str]:
        return f"{self.spectrum}.{fmt}", f"{self.stability}.{fmt}"


SCHEMA = Schema()
FOLDERS = _folders.Folders(
    files=frozenset(f for fmt in FORMATS for f in SCHEMA.files(fmt) + (
        SCHEMA.colors_file(fmt),) + SCHEMA.analysis_files(fmt)), last=SCHEMA.metadata)
