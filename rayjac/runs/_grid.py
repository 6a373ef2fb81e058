"""Sweeps: a config's cartesian grid expanded into ordinary single-run configs."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from typing import Any, NamedTuple

from ._config import Config, set_path, split_key, parse_config


class SweepRun(NamedTuple):
    """One point of a sweep: its id (a folder name), the swept values and its own config."""

    run_id: str
    point: dict[str, Any]
    config: Config



def expand_sweep(config: Config) -> list[SweepRun]:
    """Expand ``config.sweep`` (a cartesian grid) into ordinary single-run configs.

    Each run writes to ``<output.path>/<run_id>``. A run id joins ``<last key part>-<value>``
    for each swept key (characters other than letters, digits, ``.``, ``-`` become ``_``);
    a short hash of the point is appended when ids would collide or grow long. Ids depend only
    on the point, so they stay stable when the grid grows. Without ``sweep`` the result is one
    run: the config itself, with id ``name``.

    Example:
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make",
        ...                     "sweep": {"params.n": [8, 16], "execution.chunk_size": [None, 4]}})
        >>> [run.run_id for run in expand_sweep(cfg)]
        ['n-8_chunk_size-null', 'n-8_chunk_size-4', 'n-16_chunk_size-null', 'n-16_chunk_size-4']
    """
    if not config.sweep:
        return [SweepRun(config.name, {}, config)]
    keys = list(config.sweep)
    points = [dict(zip(keys, values)) for values in itertools.product(*config.sweep.values())]
    labels = _labels(keys)
    ids = [_run_id(point, labels) for point in points]
    clashing = {i for i in ids if ids.count(i) > 1}  # only these get a digest: ids stay stable
    base = config.model_dump()
    runs = []
    for run_id, point in zip(ids, points):
        if run_id in clashing or len(run_id) > 100:
            run_id = f"{run_id[:90]}-{_digest(point)}"
        raw = copy.deepcopy({**base, "sweep": None})
        for key, value in point.items():
            set_path(raw, split_key(key), value)
        raw["output"]["path"] = f"{config.output.path.rstrip('/')}/{run_id}"
        runs.append(SweepRun(run_id, point, parse_config(raw, f"sweep run {run_id}")))
    return runs


def _labels(keys: list[str]) -> dict[str, str]:
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def _run_id(point: dict[str, Any], labels: dict[str, str]) -> str:
    parts = []
    for key, value in point.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{labels[key]}-{text}")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(parts)).replace("..", "_.")


def _digest(point: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(point, sort_keys=True, default=repr).encode()).hexdigest()[:8]
