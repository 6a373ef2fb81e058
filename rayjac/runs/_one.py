"""One run: the factory's problem, its Jacobian (in process or sharded), stored in its folder."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
from typing import Any

import jax

from .. import store
from .._jacobian import jacfwd
from ..analysis._jobs import Analysis
from ..core._problem import Problem
from ._config import Config, ConfigError


class FactoryError(RuntimeError):
    """A job factory raised; the message names it, its params and the exception."""

    __module__ = "rayjac.runs"  # its public home


def engine() -> Any:
    """The engine package. This layer's one deferred import: it imports Ray, which loads only
    when a run needs the cluster, so reading and checking a config stays fast."""
    from .. import engine as package

    return package


def run_one(config: Config, point: dict | None = None, *, max_workers: int | None = None
            ) -> str:
    """Compute and store one config's Jacobian (its ``sweep`` is ignored); returns the path.

    The destination is checked before any work; the factory is imported with the current
    directory on ``sys.path``. ``max_workers`` caps the shard workers (a sweep run's share of
    the cluster).

    Example:
        >>> from rayjac.runs import parse_config
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 8},
        ...                     "output": {"path": "/tmp/rayjac-doc-l96", "overwrite": True}})
        >>> run_one(cfg).endswith("rayjac-doc-l96")
        True
    """
    store.check_destination(config.output.path, config.output.overwrite)
    start = time.perf_counter()
    if config.execution.shards is not None:
        engine().ensure_ray(config.execution.address)  # before the factory starts JAX
    problem = load_problem(config.problem, config.params)
    options = config.jacfwd
    argnums = tuple(options.argnums) if isinstance(options.argnums, list) else options.argnums
    jf = jacfwd(problem.func, grad_vars=_grad_vars(problem, config), argnums=argnums,
                has_aux=options.has_aux, return_value=options.return_value,
                holomorphic=options.holomorphic, shards=config.execution.shards,
                chunk_size=config.execution.chunk_size, sparsity=_sparsity(config))
    analysis = _analysis(config, problem, jf)  # its problems are config errors, before work
    built = time.perf_counter()
    workers = _workers(config, max_workers)
    if problem.is_map:  # the Jacobian at every point: jf.map
        states = {problem.variables[name]: values
                  for name, values in (problem.states or {}).items()}
        stream = jf.map_stream(problem.args, {}, in_axes=problem.in_axes, states=states or None,
                               batch_size=config.execution.batch_size, workers=workers,
                               analysis=analysis)
    else:
        stream = jf.stream(problem.args, {}, workers=workers)
        stream.analysis = analysis  # a single point: gathered in this process as written
    timings = {"factory_s": built - start, "primal_s": time.perf_counter() - built}
    return store.write_result(config.output.path, stream, format=config.output.format,
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
    try:
        problem = factory(**params)
    except Exception as err:  # the user's code: say whose, with what, and keep the cause
        raise FactoryError(
            f"the job factory {ref} raised {type(err).__name__} when called with params "
            f"{params}: {err}. Fix the factory or the params (RAYJAC_TRACEBACK=1 shows the "
            "factory's traceback).") from err
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
        pattern = store.read_sparsity(option)
    except (OSError, ValueError) as err:
        raise ConfigError([f"jacfwd.sparsity: {option!r} is not 'auto' and not the folder of "
                           f"a sparse rayjac result: {err}"]) from None
    pattern.times = {"read_s": time.perf_counter() - start}  # this run's, not the original's
    return pattern


def _analysis(config: Config, problem: Problem, jf: Any) -> Analysis | None:
    """The run's ``analysis`` (None without a spectrum), checked against the flat Jacobian's
    shape, which tracing the function at its first point gives (no JVP runs)."""
    section = config.analysis
    if section.spectrum is None:
        return None
    analysis = Analysis(None if section.spectrum == "all" else section.spectrum, section.system,
                        section.keep_jacobian)
    args = problem.args
    if problem.is_map:
        axes = problem.in_axes
        axes = [axes] * len(args) if not isinstance(axes, (tuple, list)) else axes
        args = tuple(jax.tree_util.tree_map(lambda a: a[0], x) if axis == 0 else x
                     for x, axis in zip(args, axes))
    m, n = jf.flat_shape(*args)
    problems = analysis.check(m, n, config.jacfwd.sparsity is not None)
    if problems:
        raise ConfigError(problems)
    return analysis


def _workers(config: Config, max_workers: int | None) -> Any:
    if config.execution.shards is None:
        return None
    ex = config.execution
    return engine().WorkerOptions(num_cpus=ex.num_cpus, num_gpus=ex.num_gpus, address=ex.address,
                         max_workers=max_workers)


def _metadata(config: Config, point: dict | None, timings: dict) -> dict:
    """The run's description; ``write_result`` adds the package versions."""
    meta = {"config": config.model_dump(mode="json"), "timings": timings}
    if point is not None:
        meta["sweep_point"] = point
    return meta
