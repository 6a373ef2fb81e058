"""Shared test helpers: tree comparison, random pytrees, finite differences, model cases."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rayjac


def tree_allclose(actual, expected, rtol=1e-5, atol=1e-6, check_dtype=True) -> None:
    """Asserts equal structure, shapes, dtypes and values (up to tolerance)."""
    a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
    e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
    assert a_tree == e_tree, f"structure {a_tree} != {e_tree}"
    for a, e in zip(a_leaves, e_leaves):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
        if check_dtype:
            assert a.dtype == e.dtype, f"dtype {a.dtype} != {e.dtype}"
        np.testing.assert_allclose(a.astype(np.complex128), e.astype(np.complex128),
                                   rtol=rtol, atol=atol)


def random_tree(key, structure):
    """Random float32 arrays in the given structure of shapes (tuples of ints are shapes)."""
    is_shape = lambda s: isinstance(s, tuple) and all(isinstance(i, int) for i in s)  # noqa
    shapes, tree = jax.tree_util.tree_flatten(structure, is_leaf=is_shape)
    keys = jax.random.split(key, len(shapes))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)])


def finite_difference_jacobian(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences in float64 of a function of one flat array; shape out + in."""
    x = np.asarray(x, np.float64)
    columns = []
    for i in range(x.size):
        dx = np.zeros_like(x).ravel()
        dx[i] = eps
        dx = dx.reshape(x.shape)
        columns.append((np.asarray(f(x + dx)) - np.asarray(f(x - dx))) / (2 * eps))
    jac = np.stack(columns, axis=-1)
    return jac.reshape(jac.shape[:-1] + x.shape)


# --- a stateful model with pytree inputs and outputs, and its pure twin for jax.jacfwd ---

VAR_SHAPES = {"w": (3,), "b": (2, 2)}


def make_vars(kind: str, key=jax.random.PRNGKey(0)):
    """Variables and the ``grad_vars`` container of the requested kind."""
    values = random_tree(key, VAR_SHAPES)
    vs = {k: rayjac.Variable(v) for k, v in values.items()}
    container = {"none": None, "single": vs["w"], "list": [vs["w"], vs["b"]],
                 "tuple": (vs["b"], vs["w"]), "dict": {"w": vs["w"], "b": vs["b"]}}[kind]
    return vs, container


def model_pure(w, b, x, y, scale=1.0):
    """Pure model: output is a pytree; aux is a dict."""
    h = jnp.tanh(w[:, None] * x["u"][None, :]) * scale
    out = {"h": h @ y + b.sum(), "s": jnp.sum(x["v"] ** 2) * w[0], "m": b @ b * x["u"][0]}
    return out, {"mean": jnp.mean(h)}


def stateful_model(vs, has_aux: bool):
    def func(x, y, scale=1.0):
        out, aux = model_pure(vs["w"].value, vs["b"].value, x, y, scale)
        return (out, aux) if has_aux else out
    return func


def model_args(key=jax.random.PRNGKey(1)):
    return random_tree(key, ({"u": (4,), "v": (2,)}, (4,)))


def rebind(kind: str, values, container_values):
    """All variable values with those of the ``grad_vars`` container replaced."""
    cv = container_values
    names = {"none": (), "single": None, "list": ("w", "b"), "tuple": ("b", "w"),
             "dict": None}[kind]
    if kind == "single":
        return {**values, "w": cv}
    if kind == "dict":
        return {**values, **cv}
    return {**values, **dict(zip(names, cv or ()))}


def expected_result(kind, argnums, has_aux, return_value, vs, container, args):
    """What rayjac.jacfwd must return, built from jax.jacfwd on the pure twin."""
    values = {k: v.value for k, v in vs.items()}
    cvals = jax.tree_util.tree_map(lambda v: v.value, container,
                                   is_leaf=lambda v: isinstance(v, rayjac.Variable))
    out, aux = model_pure(values["w"], values["b"], *args)
    parts = []
    if kind != "none":
        parts.append(jax.jacfwd(
            lambda c: model_pure(**rebind(kind, values, c), x=args[0], y=args[1])[0])(cvals))
    if argnums is not None or kind == "none":
        nums = 0 if argnums is None else argnums
        parts.append(jax.jacfwd(lambda *a: model_pure(values["w"], values["b"], *a)[0],
                                argnums=nums)(*args))
    jac = parts[0] if len(parts) == 1 else tuple(parts)
    extra = ([out] if return_value else []) + ([aux] if has_aux else [])
    return (jac, *extra) if extra else jac


def check_case(kind, argnums, has_aux, return_value, chunk_size=None, shards=None):
    """Runs rayjac.jacfwd on the stateful model and compares it with jax.jacfwd."""
    vs, container = make_vars(kind)
    args = model_args()
    before = {k: np.asarray(v.value) for k, v in vs.items()}
    jf = rayjac.jacfwd(stateful_model(vs, has_aux), grad_vars=container, argnums=argnums,
                       has_aux=has_aux, return_value=return_value, chunk_size=chunk_size,
                       shards=shards)
    got = jf(*args)
    tree_allclose(got, expected_result(kind, argnums, has_aux, return_value, vs, container,
                                       args))
    for k, v in vs.items():  # only read: untouched
        np.testing.assert_array_equal(np.asarray(v.value), before[k])
    return got


README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def readme_recipe(marker: str, driver: str) -> str:
    """The first ```python block after ``<!-- {marker}`` in the README, then ``driver``."""
    with open(README) as f:
        section = f.read().split(f"<!-- {marker}")[1]
    return section.split("```python")[1].split("```")[0] + textwrap.dedent(driver)


def wait_for(condition, what: str, timeout_s: float = 180) -> None:
    """Polls ``condition()`` until it holds; fails the test naming ``what`` after the timeout."""
    import pytest

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def job_package(folder, source: str) -> str:
    """Writes a fresh package (a new name each time, so no import cache gets in the way) with
    one module ``toy`` holding ``source`` into ``folder``; returns ``"<package>.toy"``."""
    package = f"tjobs_{uuid.uuid4().hex[:8]}"
    os.mkdir(os.path.join(folder, package))
    with open(os.path.join(folder, package, "__init__.py"), "w"):
        pass
    with open(os.path.join(folder, package, "toy.py"), "w") as f:
        f.write(textwrap.dedent(source))
    return f"{package}.toy"


def doubling_model():
    """``(f, v, calls)``: ``f()`` doubles the Variable ``v`` (1, 2, 3), returns ``v ** 2``
    (so d f / d v = diag(8 v) before the call) and counts its calls in the Variable ``calls``."""
    v = rayjac.Variable(jnp.array([1.0, 2.0, 3.0]))
    calls = rayjac.Variable(jnp.zeros(()))

    def f():
        calls.value = calls.value + 1
        v.value = 2 * v.value
        return v.value ** 2

    return f, v, calls


def calls_by_point(calls) -> dict[int, list[int]]:
    """``{n: [pid, ...]}`` of a job factory's calls, from the markers ``<n>-<pid>-<hex>`` that
    it leaves in the folder ``calls`` (a ``pathlib.Path``)."""
    out: dict[int, list[int]] = {}
    for marker in calls.iterdir():
        n, pid, _ = marker.name.split("-")
        out.setdefault(int(n), []).append(int(pid))
    return out


# --- the README's token-authenticated head node, shared by test_cluster_docs and test_submit ---

HEAD_MARKER = "head recipe:"
HEAD_PORTS = ("6390", "8275", "10000", "8375")  # --port, --dashboard-port, client server, agent
HEAD_TEMP_DIR = "/tmp/ray-a"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
             "RAY_API_SERVER_ADDRESS")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def readme_bash_blocks(marker: str, count: int) -> list[str]:
    """The first ``count`` ```bash blocks after ``<!-- {marker}`` in the README."""
    with open(README) as f:
        section = f.read().split(f"<!-- {marker}")[1]
    return [part.split("```")[0] for part in section.split("```bash")[1:count + 1]]


def live_members(pgid: int) -> list[str]:
    """The processes of a process group that have not exited (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        state, _, group = rest.split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(f"{stat.parent.name} {comm.split('(', 1)[1]}")
    return members


@dataclass
class TokenHead:
    """A head started from the README's head block: its terminal's process, where it lives,
    and a user's shell environment (fresh HOME holding the token, no Ray auth variables)."""

    proc: subprocess.Popen
    root: Path
    ports: list[int]
    env: dict[str, str]

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}"

    @property
    def token(self) -> Path:
        return Path(self.env["HOME"]) / ".ray" / "auth_token"

    @property
    def gcs(self) -> str:
        return (self.temp_dir / "ray_current_cluster").read_text().strip()

    @property
    def log(self) -> Path:
        return self.root / "head.log"

    def with_free_ports(self, block: str) -> str:
        """A README block with this head's ports and temp dir in place of the documented."""
        for documented, port in zip(HEAD_PORTS, self.ports):
            block = block.replace(f"={documented}", f"={port}").replace(f":{documented}",
                                                                        f":{port}")
        return block.replace(HEAD_TEMP_DIR, str(self.temp_dir))


def start_token_head() -> TokenHead:
    """Runs the README's head block as written (free ports, a temp dir, a fresh HOME) in a
    process group of its own, as in its own terminal; returns once it prints ``Ray runtime
    started.`` (when the README says the client may go ahead)."""
    import pytest

    bin_dir = os.path.dirname(sys.executable)
    for command in ("ray", "rayjac"):
        if not os.path.exists(os.path.join(bin_dir, command)):
            pytest.fail(f"`{command}` is not installed next to {sys.executable}: "
                        "pip install -e '.[test]'")
    root = Path(tempfile.mkdtemp(prefix="rjd", dir="/tmp"))  # short: Ray's socket paths
    (root / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS + ("PYTHONPATH",)}
    env.update(HOME=str(root / "home"), PATH=bin_dir + os.pathsep + env["PATH"])
    head_env = {k: v for k, v in env.items() if k != "RAYJAC_QUIET"}  # job logs show progress
    head = TokenHead(None, root, free_ports(len(HEAD_PORTS)), env)
    (head_block,) = readme_bash_blocks(HEAD_MARKER, 1)
    for literal in [f"={port}" for port in HEAD_PORTS] + [f"--temp-dir={HEAD_TEMP_DIR}"]:
        if literal not in head_block:
            pytest.fail(f"the README's head block has no {literal}")
    with open(head.log, "wb") as out:
        head.proc = subprocess.Popen(["bash", "-e", "-c", head.with_free_ports(head_block)],
                                     env=head_env, cwd=root, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def started():
        if head.proc.poll() is not None:
            pytest.fail(f"the head exited with {head.proc.returncode}:\n"
                        f"{head.log.read_text()[-3000:]}")
        return "Ray runtime started." in head.log.read_text(errors="replace")

    try:
        wait_for(started, "the head to print `Ray runtime started.`", timeout_s=120)
    except BaseException:
        stop_token_head(head, check=False)
        raise
    return head


def stop_token_head(head: TokenHead, check: bool = True) -> None:
    """Ctrl-C in the head's terminal (SIGINT to its process group), as the README says to stop
    one head of several; with ``check``, fails unless every process of the group ends."""
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.proc.pid, signal.SIGINT)
        if check:  # patient: at a loaded session's end the head has run many jobs' actors
            head.proc.wait(timeout=120)
            wait_for(lambda: not live_members(head.proc.pid),
                     "Ctrl-C to stop the head's processes", timeout_s=120)
    finally:
        if live_members(head.proc.pid):
            os.killpg(head.proc.pid, signal.SIGKILL)
        head.proc.wait()
        shutil.rmtree(head.root, ignore_errors=True)
