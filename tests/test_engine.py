"""The Ray engine: sharded results equal in-process ones, broadcast once, faults, resources."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rayjac
from helpers import check_case, doubling_model, tree_allclose
import ray
from rayjac import engine


@pytest.fixture(autouse=True)
def _ray(ray_local):
    yield


@pytest.mark.parametrize("return_value", [False, True])
@pytest.mark.parametrize("has_aux", [False, True])
@pytest.mark.parametrize("argnums", [None, 0, (1,), (0, 1)])
@pytest.mark.parametrize("kind", ["none", "single", "list", "tuple", "dict"])
def test_return_table_sharded(kind, argnums, has_aux, return_value):
    check_case(kind, argnums, has_aux, return_value, shards=3)


@pytest.mark.parametrize("shards", [1, 2, 3, 50])
@pytest.mark.parametrize("kind,argnums,has_aux,return_value", [
    ("none", None, False, False), ("dict", (0, 1), True, True), ("list", None, False, True),
    ("single", 1, True, False), ("tuple", (1,), False, False)])
def test_sharded_matches_in_process(kind, argnums, has_aux, return_value, shards):
    check_case(kind, argnums, has_aux, return_value, shards=shards)


@pytest.mark.parametrize("shards,chunk_size", [(2, 1), (3, 5), (2, 17), (4, 40)])
def test_sharded_with_chunks(shards, chunk_size):
    check_case("dict", (0, 1), True, True, chunk_size=chunk_size, shards=shards)


def test_sharded_equals_in_process_exactly_and_keeps_dtypes():
    f = lambda a, b: (jnp.tanh(a) * b.sum(), (a * 2).astype(jnp.float16))  # noqa: E731
    a = jnp.linspace(0, 1, 9, dtype=jnp.float16)
    b = jnp.linspace(-1, 1, 4)
    local = rayjac.jacfwd(f, argnums=(0, 1), chunk_size=4)(a, b)
    tree_allclose(rayjac.jacfwd(f, argnums=(0, 1), shards=3, chunk_size=4)(a, b), local,
                  rtol=0, atol=0)


def test_state_writes_applied_once_on_the_driver():
    f, v, calls = doubling_model()

    jac = rayjac.jacfwd(f, grad_vars=v, shards=3, chunk_size=1)()
    tree_allclose(jac, jnp.diag(8 * jnp.array([1.0, 2.0, 3.0])))
    np.testing.assert_array_equal(v.value, [2.0, 4.0, 6.0])
    assert float(calls.value) == 1.0


def test_holomorphic_and_integer_outputs_sharded():
    z = jnp.array([1 + 1j, 0.5 - 2j, 2j], jnp.complex64)
    f = lambda z: z ** 3  # noqa: E731
    tree_allclose(rayjac.jacfwd(f, holomorphic=True, shards=2)(z),
                  jax.jacfwd(f, holomorphic=True)(z))
    jac = rayjac.jacfwd(lambda x: (x * 3).astype(jnp.int32), shards=2)(jnp.ones(3))
    assert jac.dtype == jnp.int32 and not jac.any()


def _callback(fn, x):
    """``fn(x)`` on the host, inside the tangent kernel (its value scales the tangents)."""
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jax.lax.stop_gradient(x),
                             vmap_method="expand_dims")


def _fetches():
    pool = engine.ENGINE.pool(engine.WorkerOptions())
    stats = ray.get([a.describe.remote() for a in pool.actors])
    return {s["pid"]: s["fetches"] for s in stats}


def test_inputs_broadcast_once_and_program_shipped_once(monkeypatch):
    rayjac.jacfwd(lambda x: x, shards=2)(jnp.ones(2))  # the pool exists
    before = _fetches()
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda x: puts.append(type(x)) or real_put(x))
    w = rayjac.Variable(jax.random.normal(jax.random.PRNGKey(0), (64, 64)))
    jf = rayjac.jacfwd(lambda x: jnp.tanh(w.value @ x), shards=6)
    x = jnp.ones(64)
    jf(x)  # the program once; x and W once each, whatever the number of shards
    assert puts.count(np.ndarray) == 2 and len(puts) == 3
    jf(x * 2)  # W did not change (the same immutable array): only the new x is sent
    assert puts.count(np.ndarray) == 3 and len(puts) == 4
    w.value = w.value * 2
    got = jf(x)  # both changed
    assert puts.count(np.ndarray) == 5 and len(puts) == 6
    tree_allclose(got, jax.jacfwd(lambda x: jnp.tanh(w.value @ x))(x), rtol=1e-5)
    after = _fetches()
    for pid, fetched in after.items():
        old = before.get(pid, {"program": 0, "data": 0})
        assert fetched["program"] - old["program"] <= 1  # then cached on the actor
        assert fetched["data"] - old["data"] <= 5  # each array once per worker, not per shard


def test_function_that_raises_on_a_worker_reports_the_shard():
    driver = os.getpid()

    def check(x):
        if os.getpid() != driver:
            raise ValueError("bad column on worker")
        return x

    def f(x):
        return x * _callback(check, x)

    with pytest.raises(engine.ShardError, match=r"(?s)tangent columns \[\d+, \d+\).*"
                       r"bad column on worker.*shards=None"):
        rayjac.jacfwd(f, shards=2)(jnp.ones(4))


def test_worker_killed_mid_shard_is_retried(tmp_path):
    marker = str(tmp_path / "killed-once")
    driver = os.getpid()

    def maybe_die(x):
        if os.getpid() != driver and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies mid-shard, once
        return x

    def f(x):
        return jnp.sin(x) * _callback(maybe_die, x)

    x = jnp.linspace(0, 1, 6)
    got = rayjac.jacfwd(f, shards=3)(x)
    assert os.path.exists(marker)
    tree_allclose(got, rayjac.jacfwd(f)(x), rtol=0, atol=0)


def test_sharded_call_inside_jit_is_an_error():
    jf = rayjac.jacfwd(lambda x: x * 2, shards=2)
    with pytest.raises(TypeError, match="outermost call"):
        jax.jit(jf)(jnp.ones(3))


def test_stream_yields_shards_that_cover_all_columns():
    jf = rayjac.jacfwd(lambda x: jnp.cumsum(x), shards=4)
    stream = jf.stream((jnp.ones(10),))
    starts = sorted((s, len(r[0])) for s, r in stream.shards)
    assert starts == [(0, 2), (2, 3), (5, 2), (7, 3)]


def test_workers_pin_distinct_cores():
    pool = engine.ENGINE.pool(engine.WorkerOptions())
    rayjac.jacfwd(lambda x: x * 2, shards=2)(jnp.ones(4))
    cores = [ray.get(a.describe.remote())["cores"] for a in pool.actors]
    pinned = [c for c in cores if c]
    assert len({tuple(c) for c in pinned}) == len(pinned)  # never two on one core
    envs = [ray.get(a.describe.remote())["env"] for a in pool.actors]
    assert all(e["JAX_PLATFORMS"] == "cpu" for e in envs)  # zero-GPU workers stay off GPUs


# One ray.cluster_utils.Cluster (a head with 1 CPU, a node with 1 CPU and 2 logical GPUs, and a
# node with 1 CPU that is removed mid-run) in one subprocess serves both multi-node checks: each
# part prints "<part> OK" or its traceback, and each test below asserts its own part.
_MULTI_NODE = """
    import os, threading, time, tempfile, traceback
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                             "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=2)
    node = cluster.add_node(num_cpus=1)
    import ray
    ray.init(address=cluster.address)
    import jax, jax.numpy as jnp, numpy as np, rayjac
    from rayjac import engine

    def logical_gpus():
        f = lambda x: jnp.tanh(x) * x.sum()
        x = jnp.linspace(0, 1, 8)
        opts = engine.WorkerOptions(num_cpus=0, num_gpus=0.5)
        stream = rayjac.jacfwd(f, shards=4).stream((x,), workers=opts)
        rows = dict(stream.shards)
        pool = engine.ENGINE.pool(opts)
        assert len(pool.actors) == 4, len(pool.actors)  # 2 logical GPUs / 0.5 each
        env = [ray.get(a.describe.remote())["env"] for a in pool.actors]
        assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450" for e in env), env
        assert all(e["JAX_PLATFORMS"] is None for e in env), env
        full = np.concatenate([rows[k][0] for k in sorted(rows)]).T
        np.testing.assert_allclose(full, rayjac.jacfwd(f)(x), rtol=1e-6)
        return len(pool.actors)

    def node_removed():
        started = tempfile.mktemp()
        driver = os.getpid()
        def slow(x):
            if os.getpid() != driver:
                open(started, "a").close()
                time.sleep(1.0)
            return x
        def f(x):
            y = jax.pure_callback(slow, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                  jax.lax.stop_gradient(x), vmap_method="expand_dims")
            return jnp.sin(x) * y
        x = jnp.linspace(0, 1, 8)
        def remove():
            while not os.path.exists(started):
                time.sleep(0.05)
            cluster.remove_node(node)
        threading.Thread(target=remove).start()
        got = rayjac.jacfwd(f, shards=4)(x)
        np.testing.assert_allclose(got, rayjac.jacfwd(f)(x), rtol=0, atol=0)

    for part in (logical_gpus, node_removed):
        try:
            print(part.__name__, "OK", part(), flush=True)
        except BaseException:
            print(part.__name__, "FAILED", traceback.format_exc(), flush=True)
    ray.shutdown(); cluster.shutdown()
"""


@pytest.fixture(scope="module")
def multi_node():
    """The output of ``_MULTI_NODE``, run once in a subprocess with its own Ray cluster."""
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_MULTI_NODE)],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc


def _part(proc, name: str) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith(name + " ")]
    assert proc.returncode == 0 and lines and lines[0].split()[1] == "OK", (
        f"exit {proc.returncode}\n" + proc.stdout[-6000:] + proc.stderr[-6000:])
    return lines[0]


def test_logical_gpus_are_requested_on_a_multi_node_cluster(multi_node):
    assert _part(multi_node, "logical_gpus") == "logical_gpus OK 4"


def test_node_removed_mid_run_costs_only_its_shards(multi_node):
    _part(multi_node, "node_removed")


def test_module_level_variables_of_an_imported_module():
    import modstate  # the workers import it too (tests/ is on their PYTHONPATH)
    w = jax.random.normal(jax.random.PRNGKey(3), (3, 3))
    modstate.W.value = w  # the workers' own modstate.W still holds the identity
    x = jnp.array([0.3, -0.2, 0.5])
    local = rayjac.jacfwd(modstate.step, grad_vars=modstate.W, argnums=0, return_value=True)(x)
    sharded = rayjac.jacfwd(modstate.step, grad_vars=modstate.W, argnums=0, return_value=True,
                            shards=3)(x)
    tree_allclose(sharded, local)
    tree_allclose(sharded[0][1], jax.jacfwd(lambda x: jnp.tanh(w @ x))(x))
    assert float(modstate.STEPS.value) == 2.0  # one write per call, on the driver


def test_variables_touched_only_on_the_driver_are_a_clear_error():
    import modstate
    modstate.READ_EXTRA.append(True)
    try:
        with pytest.raises(engine.ShardError, match="does not match the Variables"):
            rayjac.jacfwd(modstate.step, shards=2)(jnp.ones(3))
    finally:
        modstate.READ_EXTRA.clear()


def test_programs_ship_without_variable_values():
    from ray import cloudpickle
    w = rayjac.Variable(jnp.ones((512, 512)))
    jf = rayjac.jacfwd(lambda x: w.value @ x, shards=2)
    tree_allclose(jf(jnp.ones(512)), w.value)
    program = next(iter(jf._programs.values()))
    with rayjac.core._variables.shipping():
        shipped = cloudpickle.dumps(program)
    assert len(shipped) < 0.1 * w.value.nbytes < len(cloudpickle.dumps(program))


def test_functions_may_use_variable_shapes_on_workers():
    v = rayjac.Variable(jnp.arange(4.0))

    def f(x):  # shape, dtype, ndim, size and len() of a shipped Variable, outside its value
        scale = jnp.ones(v.shape, v.dtype) * (v.ndim + v.size + len(v))
        return v.value * x * scale

    tree_allclose(rayjac.jacfwd(f, shards=2)(jnp.ones(4)), jnp.diag(9.0 * jnp.arange(4.0)))


def test_a_new_worker_shape_releases_the_old_pool():
    # Two 1-CPU workers fill this 2-CPU Ray; 2-CPU workers can start only once they are gone.
    jf = rayjac.jacfwd(lambda x: jnp.sin(x), shards=2)
    x = jnp.linspace(0, 1, 6)
    for cpus in (1.0, 2.0, 1.0):
        stream = jf.stream((x,), workers=engine.WorkerOptions(num_cpus=cpus))
        shards = sorted((start, rows[0]) for start, rows in stream.shards)
        np.testing.assert_allclose(np.concatenate([r for _, r in shards]), np.diag(np.cos(x)),
                                   rtol=1e-6)
    assert len(engine.ENGINE.pools) == 1


def test_a_new_ray_session_resends_program_and_inputs():
    w = rayjac.Variable(jnp.arange(3.0))
    jf = rayjac.jacfwd(lambda x: w.value * x, shards=2)
    tree_allclose(jf(jnp.ones(3)), jnp.diag(w.value))
    program = next(iter(jf._programs.values()))
    engine.ENGINE.program_ref(program)
    engine.ENGINE.forget_session(program)
    tree_allclose(jf(jnp.ones(3)), jnp.diag(w.value))


def test_sharded_call_nested_in_an_in_process_transform_is_a_clear_error():
    v = rayjac.Variable(jnp.ones(3))
    inner = rayjac.jacfwd(lambda x: v.value * x, shards=2)
    outer = rayjac.jacfwd(lambda: inner(jnp.ones(3)).sum(), grad_vars=v)
    with pytest.raises(TypeError, match="outermost call"):
        outer()


@pytest.mark.parametrize("f", [lambda x: x * jnp.float16(2), lambda x: x, lambda x: x * 2])
def test_sharded_dtypes_and_weak_types_follow_jax(f):
    got = rayjac.jacfwd(f, shards=2, return_value=True)(1.0)
    want = jax.jacfwd(f)(1.0), f(jnp.asarray(1.0))
    tree_allclose(got, want)
    assert [x.weak_type for x in got] == [x.weak_type for x in want]


# Last: a pool of another shape releases the default pool, which the tests above share.
def test_missing_gpus_is_a_clear_error():
    jf = rayjac.jacfwd(lambda x: x * 2, shards=2)
    with pytest.raises(ValueError, match=r"num_gpus=1.*has 0 GPU"):
        list(jf.stream((jnp.ones(3),), workers=engine.WorkerOptions(num_gpus=1)).shards)
