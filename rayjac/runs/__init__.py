"""Running YAML configs: the validated config model, the sweep grid, one run, sweeps (run
concurrently on the cluster, resumable, recorded in ``runs.parquet``) and submission to a Ray
cluster through the Jobs API. Ray itself loads only when a run or submission needs it.

Example:
    >>> from rayjac.runs import parse_config, expand_sweep
    >>> config = parse_config({"problem": "jobs.lorenz96:make", "sweep": {"params.n": [8, 16]}})
    >>> [run.run_id for run in expand_sweep(config)]
    ['n-8', 'n-16']
"""

from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._config import parse_config as parse_config
from ._grid import SweepRun as SweepRun
from ._grid import expand_sweep as expand_sweep
from ._one import load_problem as load_problem
from ._one import run_one as run_one
from ._submit import submit as submit
from ._sweep import RunRecord as RunRecord
from ._sweep import run as run
from ._sweep import run_sweep as run_sweep
from ._table import RUNS_TABLE as RUNS_TABLE

__all__ = ["Config", "ConfigError", "RUNS_TABLE", "RunRecord", "SweepRun", "expand_sweep",
           "load_config", "load_problem", "parse_config", "run", "run_one", "run_sweep",
           "submit"]
