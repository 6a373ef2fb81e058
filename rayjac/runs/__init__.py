"""Running YAML configs: the validated config model, the sweep grid, one run, sweeps (run
concurrently on the cluster, resumable, recorded in ``runs.parquet``) and submission to a Ray
cluster through the Jobs API. Names load on first use, so reading and checking a config loads
neither JAX nor Ray.

Example:
    >>> from rayjac.runs import parse_config, expand_sweep
    >>> config = parse_config({"problem": "jobs.lorenz96:make", "sweep": {"params.n": [8, 16]}})
    >>> [run.run_id for run in expand_sweep(config)]
    ['n-8', 'n-16']
"""

from typing import TYPE_CHECKING

from .._lazy import attributes as _attributes

if TYPE_CHECKING:
    from ._config import Config as Config
    from ._config import ConfigError as ConfigError
    from ._config import load_config as load_config
    from ._config import parse_config as parse_config
    from ._grid import SweepRun as SweepRun
    from ._grid import expand_sweep as expand_sweep
    from ._one import FactoryError as FactoryError
    from ._one import load_problem as load_problem
    from ._one import run_one as run_one
    from ._submit import submit as submit
    from ._sweep import RunRecord as RunRecord
    from ._sweep import run as run
    from ._sweep import run_sweep as run_sweep
    from ._table import RUNS_TABLE as RUNS_TABLE
    from ._table import read_runs_table as read_runs_table

_HOMES = {"Config": "._config", "ConfigError": "._config", "load_config": "._config",
          "parse_config": "._config", "SweepRun": "._grid", "expand_sweep": "._grid",
          "FactoryError": "._one", "load_problem": "._one", "run_one": "._one", "submit": "._submit",
          "RunRecord": "._sweep", "run": "._sweep", "run_sweep": "._sweep",
          "RUNS_TABLE": "._table", "read_runs_table": "._table"}
__all__ = sorted(_HOMES)
__getattr__, __dir__ = _attributes(__name__, _HOMES)
