"""Running a config: one job, or every point of its sweep, recorded in ``runs.parquet``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Sequence

import pyarrow.compute as pc
import pyarrow.fs as pafs

from .._progress import SweepProgress
from ..store import _folders
from .. import store
from ._config import AnalysisConfig, Config, load_config
from ._grid import SweepRun, expand_sweep
from ._lock import sweep_lock
from ._one import engine, run_one
from ._table import RUNS_TABLE, RunsLog, column_types


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The outcome of one run: a row of ``runs.parquet``.

    Attributes:
        run_id: the run's folder name (the config's ``name`` for a single run).
        point: the swept values, by dotted key (empty for a single run).
        status: ``"done"`` or ``"failed"``.
        error: ``None``, or the error message of a failed run.
        path: the run's folder (relative to the sweep folder in a sweep).
        stability: for a done run with an ``analysis`` spectrum, ``{"abscissa": largest real
            part, "radius": largest modulus, "stable": every point stable}`` over its points;
            else ``None``.
        program: the key of the compiled program the run shared with the sweep's other runs
            of its structure (``None``: it ran on its own, or was done already).
    """

    run_id: str
    point: dict
    status: str
    error: str | None
    path: str
    stability: dict | None = None
    program: str | None = None


def run(config: Config | str | os.PathLike, overrides: Sequence[str] = (), *,
        progress: Callable[[str], None] | None = None) -> list[RunRecord]:
    """Run a config: a single job, or every point of its ``sweep``.

    A single run raises on any error. A sweep runs its points on the cluster, up to
    ``execution.parallel_runs`` at once, the points of one structure through one compiled
    program; it records a failed run and goes on, skips the runs already done, and logs each
    run as it ends, compacted into ``<output.path>/runs.parquet`` every few seconds.

    Args:
        config: a :class:`Config` or the path of a YAML config.
        overrides: ``"dotted.key=value"`` strings (only with a path).
        progress: for a sweep, called with one line as each run ends and a summary line;
            ``None``: rayjac's own display on stderr (a live bar on a terminal, else those
            lines; nothing with ``RAYJAC_QUIET=1``).

    Returns:
        One :class:`RunRecord` per run.

    Example:
        >>> records = run("configs/quickstart.yaml", ["output.path=/tmp/rayjac-doc",
        ...                                           "execution.shards=null",
        ...                                           "output.overwrite=true"])
        >>> records[0].status
        'done'
    """
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        raise TypeError("overrides apply to a config file; pass a path, or use parse_config.")
    if config.sweep:
        return run_sweep(config, progress=progress)
    path = run_one(config)
    return [RunRecord(config.name, {}, "done", None, path)]


# ----------------------------------------------------------------------------------- sweeps

def run_sweep(config: Config, *, progress: Callable[[str], None] | None = None
              ) -> list[RunRecord]:
    """Run every point of ``config.sweep`` on the cluster, skipping those done; see :func:`run`.

    Up to ``execution.parallel_runs`` points run at once (``None``: as many as the cluster's
    resources fit), wholly on Ray runners, in chunks; a runner runs the points of a chunk that
    share a structure as one map through one compiled program (``_batch``). This process (the
    driver) only decides what to run and records the runs (``RunsLog``). It holds the sweep
    folder's lock throughout: a second ``run`` of the same folder waits for it.

    Example:
        >>> from rayjac.runs import parse_config
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "sweep": {"params.n": [4, 8]},
        ...                     "output": {"path": "/tmp/rayjac-doc-sweep"}})
        >>> [r.status for r in run_sweep(cfg)]
        ['done', 'done']
    """
    engine().ensure_ray(config.execution.address)  # before this process starts JAX (fork safety)
    runs = expand_sweep(config)
    show = SweepProgress(len(runs), progress)
    with sweep_lock(config.output.path, show.notice):
        records = _sweep_locked(config, runs, show)
    failed = sum(r.status == "failed" for r in records)
    grouped = sum(r.program is not None for r in records)
    structures = len({r.program for r in records} - {None})
    programs = (f"; {grouped} runs of {structures} structure(s), {show.programs} "
                "program(s) compiled" if grouped > structures else "")  # when runs shared
    show.close(f"{len(records) - failed} of {len(records)} runs done, {failed} failed; table: "
               f"{config.output.path.rstrip('/')}/{RUNS_TABLE}{programs}")
    return records


def _sweep_locked(config: Config, runs: list[SweepRun], show: SweepProgress
                  ) -> list[RunRecord]:
    from ._scheduler import run_all  # imports Ray: only when a sweep runs (see _one.engine)

    folder = config.output.path
    _remove_leftovers(folder, [r.run_id for r in runs])
    log = RunsLog(folder, column_types(runs))
    log.resume()
    records: dict[int, RunRecord] = {}
    ordered = lambda: [records[i] for i in sorted(records)]  # noqa: E731
    todo = []
    for index, sweep_run in enumerate(runs):
        decided = _decided(sweep_run, config.output.overwrite)
        if decided is None:
            todo.append((index, _redo(sweep_run.config), sweep_run.point))
            continue
        records[index], message = decided
        show.finished(sweep_run.run_id, records[index].status, message, ran=False)
    if records:
        log.close(ordered())
    waiting = lambda: (show.tick(), log.tick(ordered))  # noqa: E731
    outcomes = run_all(todo, config.execution.parallel_runs,
                       started=lambda index: show.started(), waiting=waiting)
    try:
        with contextlib.closing(outcomes):  # on an error or Ctrl-C, the runners stop at once
            for outcome in outcomes:
                index, error, seconds = outcome.index, outcome.error, outcome.seconds
                run_id, point, run_config = runs[index]
                if error is None and not store.holds_result(run_config.output.path):
                    error = _not_here(run_config.output.path)
                records[index] = RunRecord(run_id, point, "failed" if error else "done",
                                           error, run_id,
                                           None if error else _stability(run_config),
                                           outcome.program)
                show.programs = outcome.programs
                log.add(records[index], ordered)
                show.finished(run_id, records[index].status,
                              f"FAILED: {error}" if error else f"done in {seconds:.1f} s")
    finally:  # also on an error or Ctrl-C: the table holds every run that ended
        log.close(ordered())
    return [records[i] for i in range(len(runs))]


def _stability(config: Config) -> dict | None:
    """A done run's stability over its points, for its row of ``runs.parquet``."""
    if config.analysis.spectrum is None:
        return None
    table = store.read_stability(config.output.path)
    if table is None:
        return None
    return {"abscissa": float(pc.max(table.column("abscissa")).as_py()),
            "radius": float(pc.max(table.column("radius")).as_py()),
            "stable": bool(pc.all(table.column("stable")).as_py())}


def _not_here(path: str) -> str:
    """The error of a run whose runner stored its result where this driver cannot see it."""
    return (f"ResultNotShared: the run finished, but its folder {path} is not there as seen "
            "from this driver: its runner ran on another node and wrote to that node's disk. "
            "Set output.path to storage that every node shares (an absolute path on a shared "
            "file system, or a URI such as s3://bucket/sweep).")


def _decided(sweep_run: SweepRun, overwrite: bool) -> tuple[RunRecord, str] | None:
    """The record of a run that needs no running (done already, or a result to keep)."""
    run_id, point, config = sweep_run
    state, why = ("redo", None) if overwrite else _stored_state(config)
    if state == "done":
        return (RunRecord(run_id, point, "done", None, run_id, _stability(config)),
                "done already, skipped")
    if state == "kept":
        error = (f"FileExistsError: {config.output.path} holds a result {why}; set "
                 "output.overwrite: true to recompute it, or choose another output.path")
        return RunRecord(run_id, point, "failed", error, run_id), f"FAILED: {error}"
    return None


def _redo(config: Config) -> Config:
    """The run's config as sent to its runner: a leftover at its path (a folder without
    metadata.json) is not a result, so it may be replaced."""
    return config.model_copy(update={"output": config.output.model_copy(
        update={"overwrite": True})})


def _remove_leftovers(folder: str, run_ids: list[str]) -> None:
    """Deletes the hidden temporary folders and files that a killed run left in a local sweep
    folder (never a published result: those have no leading dot). Called under the lock; not
    on object stores, where another driver's writes may be in flight."""
    fs, root = _folders.resolve(folder, None)
    if isinstance(fs, pafs.LocalFileSystem) and os.path.isdir(root):
        _folders.remove_siblings(root, [*run_ids, RUNS_TABLE])


def _stored_state(config: Config) -> tuple[str, str | None]:
    """``("done", None)``: a loadable result of the same problem/params/jacfwd; ``("redo",
    None)``: no complete result there; ``("kept", why)``: a result that must not be replaced."""
    try:
        stored = store.load(config.output.path).metadata.get("config", {})
    except Exception as err:
        if not store.holds_result(config.output.path):
            return "redo", None
        return "kept", f"that cannot be read ({type(err).__name__}: {err}); it is kept"
    current = config.model_dump(mode="json")
    defaults = {"analysis": AnalysisConfig().model_dump(mode="json")}  # results older than it
    if all(stored.get(key, defaults.get(key)) == current[key]
           for key in ("problem", "params", "jacfwd", "analysis")):
        return "done", None
    return "kept", "computed from another problem, params, jacfwd or analysis options"


