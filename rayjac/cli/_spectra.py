"""Pictures of spectra: every point's eigenvalues in the complex plane against the stability
boundary, and a sweep's stability diagram (each run's abscissa or radius against a swept key)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

_BOUNDARY = {"continuous": ("abscissa", "largest real part of the eigenvalues", 0.0),
             "discrete": ("radius", "largest modulus of the eigenvalues", 1.0)}


def draw_spectrum(ax: Any, lam: np.ndarray, system: str, title: str) -> None:
    """Eigenvalues ``(B, k)`` (or ``(k,)``) coloured by point, with the boundary: the imaginary
    axis (continuous) or the unit circle (discrete); stable points inside or left of it."""
    lam = np.atleast_2d(lam)
    points = lam.shape[0]
    colors = np.repeat(np.arange(points), lam.shape[1])
    image = ax.scatter(lam.real.ravel(), lam.imag.ravel(), c=colors, cmap="viridis", s=12,
                       vmin=0, vmax=max(points - 1, 1), alpha=0.8, edgecolors="none")
    if points > 1:
        ax.figure.colorbar(image, ax=ax, label="point")
    if system == "discrete":
        angle = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(angle), np.sin(angle), "k--", lw=1, label="|λ| = 1 (stability boundary)")
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax.axvline(0.0, color="k", ls="--", lw=1, label="Re λ = 0 (stability boundary)")
    ax.axhline(0.0, color="0.8", lw=0.5, zorder=0)
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(title)


def plot_sweep(folder: str | os.PathLike, file: str | os.PathLike, table: Any = None) -> str:
    """The stability diagram of a sweep whose runs have a spectrum: each run's abscissa (or
    radius) against the first numeric swept key, one line per value of the other swept keys,
    stable runs filled and unstable ones open, with the boundary. ``folder`` may be a URI;
    ``table`` is its ``runs.parquet`` when already read.

    Example:
        >>> plot_sweep("results/no-such-sweep", "x.png")
        Traceback (most recent call last):
        ...
        FileNotFoundError: results/no-such-sweep has no runs.parquet: ...
    """
    import matplotlib

    from ..runs import read_runs_table

    table = read_runs_table(os.fspath(folder)) if table is None else table
    if table is None:
        raise FileNotFoundError(f"{folder} has no runs.parquet: pass a sweep's folder (the "
                                "output.path of a config with a sweep).")
    rows = table.to_pylist()
    system = _system(folder, rows)
    column, label, boundary = _BOUNDARY[system]
    done = [r for r in rows if r.get(column) is not None]
    if not done:
        raise ValueError(f"No run of the sweep in {folder} has a spectrum: give the config an "
                         "analysis section (analysis: {spectrum: 6}) and run it again.")
    keys = [k for k in rows[0] if k not in _RUN_COLUMNS]
    x_key = next((k for k in keys if all(_number(r[k]) for r in done)), None)
    if x_key is None:
        raise ValueError(f"The sweep in {folder} has no numeric swept key to put on the x axis "
                         f"(swept: {', '.join(keys)}).")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    others = [k for k in keys if k != x_key]
    for group, runs in _groups(done, others).items():
        runs.sort(key=lambda r: r[x_key])
        x, y = [r[x_key] for r in runs], [r[column] for r in runs]
        line, = ax.plot(x, y, "-", lw=1, label=group or None)
        for stable in (True, False):
            pick = [(a, b) for a, b, r in zip(x, y, runs) if bool(r["stable"]) == stable]
            if pick:
                ax.plot(*zip(*pick), "o", color=line.get_color(), ms=6,
                        mfc=line.get_color() if stable else "white")
    ax.axhline(boundary, color="k", ls="--", lw=1)
    ax.plot([], [], "ko", label="stable")
    ax.plot([], [], "ko", mfc="white", label="unstable")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{label} ({column})")
    ax.set_title(f"{os.path.basename(os.fspath(folder).rstrip('/'))}: stability "
                 f"({system}; boundary {column} = {boundary:g})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return os.fspath(file)


_RUN_COLUMNS = {"run_id", "status", "error", "path", "abscissa", "radius", "stable"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _groups(rows: list[dict], keys: list[str]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = ", ".join(f"{k}={json.dumps(row[k])}" for k in keys)
        groups.setdefault(name, []).append(row)
    return groups


def _system(folder: Any, rows: list[dict]) -> str:
    """The sweep's ``analysis.system``, from the metadata of its first finished run."""
    from ..store._folders import resolve

    fs, root = resolve(folder, None)
    for row in rows:
        if row["status"] != "done":
            continue
        try:
            with fs.open_input_stream(f"{root}/{row['path']}/metadata.json") as src:
                return json.loads(src.read()).get("analysis", {}).get("system", "continuous")
        except OSError:
            continue
    return "continuous"
