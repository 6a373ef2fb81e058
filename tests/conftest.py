"""Shared fixtures: one real single-node Ray per test session, started on first use."""

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAYJAC_QUIET", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# The suite compiles well over a thousand tiny programs, where XLA's backend optimisation
# (LLVM at -O2) costs more compile time than it saves at run time. Set before any backend
# starts; Ray workers and the subprocesses of tests inherit it. XLA_FLAGS naming a level wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

# Functions defined in test modules are pickled by reference: workers import them too. Set at
# import, not in the fixture, since some tests (a CLI sweep) start the embedded Ray themselves
# and every Ray worker inherits the environment of the process that started Ray.
_here = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_here, os.path.dirname(_here), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def ray_local():
    """A real single-node Ray (2 CPUs) shared by every test of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def token_head(ray_local):
    """The README's token-authenticated head ("head recipe" block), started once beside the
    session's Ray (as in "Several clusters on one machine") and shared by test_cluster_docs and
    test_submit. At the session's end it is stopped by Ctrl-C to its process group, as the
    README says, and the session fails if any of its processes survives."""
    from helpers import start_token_head, stop_token_head

    head = start_token_head()
    yield head
    stop_token_head(head)
