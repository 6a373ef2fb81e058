"""The distributed engine, the one layer that imports Ray: a pool of long-lived worker actors,
each running the jitted ``vmap(jvp)`` kernel over column shards of the tangent basis.

Per call, the inputs go into the object store once (numpy) and every shard gets the reference;
each program (function, Variables, layout) is shipped once per actor and cached there. Importing
this package imports Ray; ``import rayjac`` does not.
"""

from ._cluster import WorkerOptions as WorkerOptions
from ._cluster import capacity as capacity
from ._cluster import embedded_driver as embedded_driver
from ._cluster import ensure_ray as ensure_ray
from ._cluster import stop_now as stop_now
from ._pool import ENGINE as ENGINE
from ._shards import ShardError as ShardError
from ._shards import run_map as run_map
from ._shards import run_shards as run_shards
from ._worker import pin_to_cores as pin_to_cores
from ._watchdog import follow as follow_driver
from ._worker import worker_env as worker_env

__all__ = ["ENGINE", "ShardError", "WorkerOptions", "capacity", "embedded_driver", "ensure_ray",
           "follow_driver", "pin_to_cores", "run_map", "run_shards", "stop_now", "worker_env"]
