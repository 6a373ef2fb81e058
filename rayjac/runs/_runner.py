"""What runs inside a sweep's runner actor (the Ray wrapper and the scheduling live in
``_scheduler``): chunks of whole runs, one chunk at a time (``_batch``)."""

from __future__ import annotations

import os
from typing import Any

import jax

from ..engine import follow_driver, pin_to_cores
from ._batch import Chunk, Done


class Runner:
    """One long-lived sweep runner: executes chunks of whole runs (factory, primal, Jacobian,
    writing), the runs of one structure as one map through a program it keeps for later chunks.
    An in-process run's runner holds its run's cores; a sharded run's runner holds none itself
    and starts its own shard workers (``max_workers`` of them at most)."""

    def __init__(self, num_cpus: float, env: dict[str, str]):
        if env.get("RAYJAC_DRIVER"):
            follow_driver(env["RAYJAC_DRIVER"])
        self.cores, self._locks = pin_to_cores(num_cpus)
        # Set here rather than in a runtime_env of its own, which would cost each runner a
        # fresh worker process (seconds); JAX has not started a backend yet.
        os.environ.update(env)
        jax.config.update("jax_enable_x64", env["JAX_ENABLE_X64"] == "1")
        if "JAX_PLATFORMS" in env:
            jax.config.update("jax_platforms", env["JAX_PLATFORMS"])
        self.chunk = Chunk()  # its compiled programs serve every later chunk of the sweep

    def describe(self) -> dict:
        return {"pid": os.getpid(), "cores": self.cores, "x64": jax.config.jax_enable_x64,
                "platforms": jax.config.jax_platforms,
                "devices": [d.platform for d in jax.devices()]}

    def run(self, items: list[tuple[int, Any, dict]], cwd: str, max_workers: int | None
            ) -> tuple[list[Done], int]:
        """Every run of ``items`` (``(index, config, point)``); returns how each ended and how
        many programs this runner compiled for them (none when it kept them from earlier)."""
        if os.path.isdir(cwd):  # the driver's folder on this node: its relative paths hold
            os.chdir(cwd)
        before = self.chunk.built
        return list(self.chunk.run(items, max_workers)), self.chunk.built - before
