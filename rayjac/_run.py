"""Running a config: one job, or a sweep of jobs recorded in ``runs.parquet``."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import _folders, _storage
from ._config import Config, ConfigError, load_config
from ._lock import sweep_lock
from ._progress import SweepProgress
from ._sweep import SweepRun, expand_sweep
from ._jacobian import jacfwd
from ._problem import Problem

RUNS_TABLE = "runs.parquet"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The outcome of one run: a row of ``runs.parquet``.

    Attributes:
        run_id: the run's folder name (the config's ``name`` for a single run).
        point: the swept values, by dotted key (empty for a single run).
        status: ``"done"`` or ``"failed"``.
        error: ``None``, or the error message of a failed run.
        path: the run's folder (relative to the sweep folder in a sweep).
    """

    run_id: str
    point: dict
    status: str
    error: str | None
    path: str


def run(config: Config | str | os.PathLike, overrides: Sequence[str] = (), *,
        progress: Callable[[str], None] | None = None) -> list[RunRecord]:
    """Run a config: a single job, or every point of its ``sweep``.

    A single run raises on any error. A sweep runs its points on the cluster, up to
    ``execution.parallel_runs`` at once; it records a failed run and goes on, skips the runs
    already done, and rewrites ``<output.path>/runs.parquet`` as each run ends.

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


def run_one(config: Config, point: dict | None = None, *, max_workers: int | None = None
            ) -> str:
    """Compute and store one config's Jacobian (its ``sweep`` is ignored); returns the path.

    The destination is checked before any work; the factory is imported with the current
    directory on ``sys.path``. ``max_workers`` caps the shard workers (a sweep run's share of
    the cluster).

    Example:
        >>> from rayjac._config import parse_config
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 8},
        ...                     "output": {"path": "/tmp/rayjac-doc-l96", "overwrite": True}})
        >>> run_one(cfg).endswith("rayjac-doc-l96")
        True
    """
    _storage.check_destination(config.output.path, config.output.overwrite)
    start = time.perf_counter()
    if config.execution.shards is not None:
        from ._engine import ensure_ray
        ensure_ray(config.execution.address)  # before the factory starts JAX (fork safety)
    problem = load_problem(config.problem, config.params)
    options = config.jacfwd
    argnums = tuple(options.argnums) if isinstance(options.argnums, list) else options.argnums
    jf = jacfwd(problem.func, grad_vars=_grad_vars(problem, config), argnums=argnums,
                has_aux=options.has_aux, return_value=options.return_value,
                holomorphic=options.holomorphic, shards=config.execution.shards,
                chunk_size=config.execution.chunk_size, sparsity=_sparsity(config))
    built = time.perf_counter()
    stream = jf.stream(problem.args, {}, workers=_workers(config, max_workers))
    timings = {"factory_s": built - start, "primal_s": time.perf_counter() - built}
    return _storage.write_result(config.output.path, stream, format=config.output.format,
                                 overwrite=config.output.overwrite,
                                 metadata=_metadata(config, point, timings))


def load_problem(ref: str, params: dict) -> Problem:
    """Import ``"module:function"`` (current directory first) and call it with ``params``.

    Raises:
        ConfigError: the module or function is missing, rejects ``params``, or does not return
            a ``rayjac.Problem``.

    Example:
        >>> load_problem("jobs.lorenz96:make", {"n": 8}).args[0].shape
        (8,)
    """
    module_name, func_name = ref.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if err.name is None or not (module_name + ".").startswith(err.name + "."):
            raise  # an import inside the job module failed: its traceback is the useful part
        raise ConfigError([f"problem: cannot import {module_name!r} ({err}); run from the "
                           "folder that holds it or add that folder to PYTHONPATH"]) from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError([f"problem: module {module_name!r} ({module.__file__}) has no "
                           f"function {func_name!r}"])
    try:
        inspect.signature(factory).bind(**params)
    except TypeError as err:  # only the call's signature: errors inside the factory propagate
        raise ConfigError([f"params: {ref} rejected the parameters {sorted(params)}: {err}"]
                          ) from None
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass
    problem = factory(**params)
    if not isinstance(problem, Problem):
        raise ConfigError([f"problem: {ref} returned {type(problem).__name__}, expected a "
                           "rayjac.Problem(func, args=..., variables=...)"])
    return problem


def _grad_vars(problem: Problem, config: Config) -> Any:
    names = config.jacfwd.grad_vars
    if names is None:
        return None
    listed = [names] if isinstance(names, str) else names
    missing = [name for name in listed if name not in problem.variables]
    if missing:
        raise ConfigError([f"jacfwd.grad_vars: {config.problem} has no variable "
                           f"{', '.join(map(repr, missing))}; its variables are: "
                           f"{', '.join(problem.variables) or '(none)'}"])
    chosen = [problem.variables[name] for name in listed]
    return chosen[0] if isinstance(names, str) else chosen


def _sparsity(config: Config) -> Any:
    """``jacfwd.sparsity``: None, ``"auto"``, or the pattern stored in an earlier sparse
    result's folder (a ``ConfigError`` naming the key when that folder holds none)."""
    option = config.jacfwd.sparsity
    if option is None or option == "auto":
        return option
    start = time.perf_counter()
    try:
        pattern = _storage.read_sparsity(option)
    except (OSError, ValueError) as err:
        raise ConfigError([f"jacfwd.sparsity: {option!r} is not 'auto' and not the folder of "
                           f"a sparse rayjac result: {err}"]) from None
    pattern.times = {"read_s": time.perf_counter() - start}  # this run's, not the original's
    return pattern


def _workers(config: Config, max_workers: int | None) -> Any:
    if config.execution.shards is None:
        return None
    from ._engine import WorkerOptions

    ex = config.execution
    return WorkerOptions(num_cpus=ex.num_cpus, num_gpus=ex.num_gpus, address=ex.address,
                         max_workers=max_workers)


def _metadata(config: Config, point: dict | None, timings: dict) -> dict:
    """The run's description; ``write_result`` adds the package versions."""
    meta = {"config": config.model_dump(mode="json"), "timings": timings}
    if point is not None:
        meta["sweep_point"] = point
    return meta


# ----------------------------------------------------------------------------------- sweeps

def run_sweep(config: Config, *, progress: Callable[[str], None] | None = None
              ) -> list[RunRecord]:
    """Run every point of ``config.sweep`` on the cluster, skipping those done; see :func:`run`.

    Up to ``execution.parallel_runs`` points run at once (``None``: as many as the cluster's
    resources fit), each wholly on a Ray runner. This process (the driver) only decides what
    to run and rewrites ``runs.parquet`` as each run ends. It holds the sweep folder's lock
    throughout: a second ``run`` of the same folder waits for it.

    Example:
        >>> from rayjac._config import parse_config
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "sweep": {"params.n": [4, 8]},
        ...                     "output": {"path": "/tmp/rayjac-doc-sweep"}})
        >>> [r.status for r in run_sweep(cfg)]
        ['done', 'done']
    """
    from ._engine import ensure_ray

    ensure_ray(config.execution.address)  # before this process starts JAX (fork safety)
    runs = expand_sweep(config)
    show = SweepProgress(len(runs), progress)
    with sweep_lock(config.output.path, show.notice):
        records = _sweep_locked(config, runs, show)
    failed = sum(r.status == "failed" for r in records)
    show.close(f"{len(records) - failed} of {len(records)} runs done, {failed} failed; table: "
               f"{config.output.path.rstrip('/')}/{RUNS_TABLE}")
    return records


def _sweep_locked(config: Config, runs: list[SweepRun], show: SweepProgress
                  ) -> list[RunRecord]:
    from ._parallel import run_all

    folder, types = config.output.path, _column_types(runs)
    _remove_leftovers(folder, [r.run_id for r in runs])
    records: dict[int, RunRecord] = {}
    todo = []
    for index, sweep_run in enumerate(runs):
        decided = _decided(sweep_run, config.output.overwrite)
        if decided is None:
            todo.append((index, _redo(sweep_run.config), sweep_run.point))
            continue
        records[index], message = decided
        show.finished(sweep_run.run_id, records[index].status, message, ran=False)
    if records:
        _write_runs_table(folder, [records[i] for i in sorted(records)], types)
    outcomes = run_all(todo, config.execution.parallel_runs,
                       started=lambda index: show.started(), waiting=show.tick)
    with contextlib.closing(outcomes):  # on an error or Ctrl-C here, the runners stop at once
        for index, error, seconds in outcomes:
            run_id, point, run_config = runs[index]
            if error is None and not _storage.holds_result(run_config.output.path):
                error = _not_here(run_config.output.path)
            records[index] = RunRecord(run_id, point, "failed" if error else "done", error,
                                       run_id)
            _write_runs_table(folder, [records[i] for i in sorted(records)], types)
            show.finished(run_id, records[index].status,
                          f"FAILED: {error}" if error else f"done in {seconds:.1f} s")
    return [records[i] for i in range(len(runs))]


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
        return RunRecord(run_id, point, "done", None, run_id), "done already, skipped"
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
        stored = _storage.load(config.output.path).metadata.get("config", {})
    except Exception as err:
        if not _storage.holds_result(config.output.path):
            return "redo", None
        return "kept", f"that cannot be read ({type(err).__name__}: {err}); it is kept"
    current = config.model_dump(mode="json")
    if all(stored.get(key) == current[key] for key in ("problem", "params", "jacfwd")):
        return "done", None
    return "kept", "computed from another problem, params or jacfwd options"


def _column_types(runs: list[SweepRun]) -> dict[str, pa.DataType]:
    types = {}
    for key in runs[0].point:
        try:
            types[key] = pa.array([r.point[key] for r in runs]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: store JSON text
            types[key] = None
    return types


def _write_runs_table(folder: str, records: list[RunRecord], types: dict) -> None:
    columns = {"run_id": pa.array([r.run_id for r in records], pa.string())}
    for key, type_ in types.items():
        values = [r.point[key] for r in records]
        columns[key] = (pa.array(values, type_) if type_ is not None
                        else pa.array([json.dumps(v) for v in values], pa.string()))
    for name in ("status", "error", "path"):
        columns[name] = pa.array([getattr(r, name) for r in records], pa.string())
    _write_atomic(pa.table(columns), f"{folder.rstrip('/')}/{RUNS_TABLE}")


def _write_atomic(table: pa.Table, path: str) -> None:
    """Write then rename, so a reader (or a crash) never sees a half-written table."""
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
    else:
        fs, inner = pafs.LocalFileSystem(), str(Path(path).resolve())
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    tmp = _folders.sibling(inner, "tmp")
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, inner)
