"""Shared fixtures: one real single-node Ray per test session, started on first use."""

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real single-node Ray (2 CPUs) shared by every test of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu"}})
    yield ray
    ray.shutdown()
