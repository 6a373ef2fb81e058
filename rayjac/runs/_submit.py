"""``rayjac submit``: run a config as a Ray job through the Jobs API (``JobSubmissionClient``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

from ..store._folders import is_uri
from ._config import Config, ConfigError, dump_config

_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
CONFIG_FILE = "config.yaml"
ENTRYPOINT = f"python -m rayjac run {CONFIG_FILE}"


def submit(config: Config, address: str | None = None, *, wait: bool = False,
           say: Callable[[str], None] = print) -> tuple[str, int]:
    """Submit ``config`` as a Ray job; with ``wait``, follow its logs until it ends.

    The job's ``working_dir`` holds the job modules (the config's top-level package, e.g.
    ``jobs/``, from the current directory) and the resolved config; the ``rayjac`` package
    itself travels in ``py_modules``, so the cluster needs only rayjac's dependencies. Token
    auth is forwarded from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, or (with
    ``RAY_AUTH_MODE=token``) ``~/.ray/auth_token``.

    Args:
        config: the job; its ``output.path`` must be absolute or a URI.
        address: the dashboard, e.g. ``http://head:8265`` (default: ``RAY_API_SERVER_ADDRESS``
            or ``RAY_ADDRESS``).
        wait: follow the job's logs and return its outcome.
        say: receives the lines to show the user (job id, follow-up commands, logs).

    Returns:
        ``(job_id, exit_code)``: 0 when submitted (or, with ``wait``, when the job succeeded).

    Example:
        A relative ``output.path`` is refused before anything is sent (the job's working
        directory on the cluster is temporary):

        >>> from rayjac.runs import parse_config
        >>> submit(parse_config({"problem": "jobs.lorenz96:make"}), "http://127.0.0.1:8265")
        Traceback (most recent call last):
        ...
        rayjac.runs.ConfigError: ...output.path: 'results/lorenz96' is relative...
    """
    _check_output_path(config)
    address = _resolve_address(address)
    client = _client(address)
    with _working_dir(config) as folder:
        job_id = client.submit_job(
            entrypoint=ENTRYPOINT, submission_id=f"rayjac-{config.name}-{uuid.uuid4().hex[:8]}",
            runtime_env=_runtime_env(folder), metadata={"rayjac_config": config.name})
    say(f"Submitted job {job_id} to {address}; results go to {config.output.path}")
    say("Follow it with:")
    for command in ("status", "logs --follow", "stop"):
        say(f"  ray job {command} --address {address} {job_id}")
    if not wait:
        return job_id, 0
    asyncio.run(_follow(client, job_id, say))
    status = client.get_job_status(job_id)
    say(f"Job {job_id} finished: {status.value}")
    return job_id, 0 if status.value == "SUCCEEDED" else 1


def auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for a token-authenticated cluster ({} when none applies).

    Example:
        >>> import os; os.environ["RAY_AUTH_TOKEN"] = "abc"
        >>> auth_headers()
        {'Authorization': 'Bearer abc'}
        >>> del os.environ["RAY_AUTH_TOKEN"]
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and not token_path and mode == "token":
        default = Path.home() / ".ray" / "auth_token"
        token_path = str(default) if default.exists() else None
    if not token and token_path:
        try:
            token = Path(token_path).expanduser().read_text().strip()
        except OSError as err:
            raise ValueError(f"Cannot read the Ray auth token at RAY_AUTH_TOKEN_PATH="
                             f"{token_path}: {err.strerror}.") from None
    if not token and mode == "token":
        raise ValueError("RAY_AUTH_MODE=token but no token was found: set RAY_AUTH_TOKEN or "
                         "RAY_AUTH_TOKEN_PATH, or copy the cluster's token to ~/.ray/auth_token "
                         "(`ray get-auth-token` on the head node prints it).")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_output_path(config: Config) -> None:
    path = config.output.path
    if not is_uri(path) and not os.path.isabs(path):
        raise ConfigError([
            f"output.path: {path!r} is relative, but a submitted job runs in a temporary "
            "working directory on the cluster and its results would be lost. Use an absolute "
            "path on storage the cluster shares (--set output.path=/shared/results/"
            f"{config.name}) or a URI (s3://bucket/results/{config.name})."])
    folders = [config.jacfwd.sparsity] + list((config.sweep or {}).get("jacfwd.sparsity", []))
    relative = [f for f in folders if isinstance(f, str) and f != "auto" and not is_uri(f)
                and not os.path.isabs(f)]
    if relative:
        raise ConfigError([
            f"jacfwd.sparsity: {relative[0]!r} is a relative folder, but a submitted job runs "
            "in a temporary working directory on the cluster, where it does not exist. Name "
            "the earlier sparse result by an absolute path on shared storage or a URI."])


def _resolve_address(address: str | None) -> str:
    for var in _ADDRESS_VARS:
        address = address or os.environ.get(var)
    if not address:
        raise ValueError("No cluster to submit to: pass --address http://HEAD:8265 (the Ray "
                         "dashboard) or set RAY_API_SERVER_ADDRESS.")
    return address


def _client(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers()
    with _without_env(_ADDRESS_VARS):  # Ray lets these override an explicit address
        try:
            return JobSubmissionClient(address, headers=headers)
        except AuthenticationError:
            raise PermissionError(_refused(address, bool(headers))) from None
        except ConnectionError as err:
            raise ConnectionError(f"Cannot reach the Ray dashboard at {address}: "
                                  f"{str(err).rstrip('.')}. Check "
                                  "the address (http://HEAD:8265) and that the head runs "
                                  "ray[default].") from None


def _refused(address: str, sent: bool) -> str:
    """Why a token-auth cluster refused us, in terms of what the user set (Ray's own message
    talks about RAY_AUTH_MODE, which the user need not set to submit)."""
    what = ("refused the token rayjac sent (from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or, with "
            "RAY_AUTH_MODE=token, ~/.ray/auth_token): it is not this cluster's"
            if sent else "requires a token, and none was sent")
    return (f"The Ray cluster at {address} uses token authentication and {what}. Run `ray "
            "get-auth-token` on the head (or read its token file) and set RAY_AUTH_TOKEN to "
            "it, or RAY_AUTH_TOKEN_PATH to a file holding it; then submit again.")


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _working_dir(config: Config) -> Iterator[str]:
    """A temporary folder with the job's top-level package and the resolved config."""
    with tempfile.TemporaryDirectory(prefix="rayjac-submit-") as folder:
        source = _job_source(config.problem)
        if source is not None:
            copy = shutil.copytree if source.is_dir() else shutil.copy2
            kwargs = {"ignore": _IGNORE} if source.is_dir() else {}
            copy(source, Path(folder) / source.name, **kwargs)
        raw = config.model_dump(mode="json")
        raw["execution"]["address"] = None  # inside the job, Ray's RAY_ADDRESS finds the cluster
        (Path(folder) / CONFIG_FILE).write_text(dump_config(raw))
        yield folder


def _job_source(problem: str) -> Path | None:
    """The file or package folder of the job module's top-level package, if under the cwd."""
    top = problem.split(":")[0].split(".")[0]
    cwd = Path.cwd().resolve()
    if str(cwd) not in sys.path:
        sys.path.insert(0, str(cwd))
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None and not spec.submodule_search_locations:
        raise ConfigError([f"problem: cannot find the module {top!r} to ship with the job; "
                           "run `rayjac submit` from the folder that holds it"])
    location = (Path(list(spec.submodule_search_locations)[0]) if spec.submodule_search_locations
                else Path(spec.origin))
    return location.resolve() if location.resolve().is_relative_to(cwd) else None


def _runtime_env(folder: str) -> dict:
    rayjac_dir = str(Path(__file__).resolve().parent)
    return {"working_dir": folder, "py_modules": [rayjac_dir],
            "excludes": ["__pycache__", "*.pyc", "results/"]}


async def _follow(client, job_id: str, say: Callable[[str], None]) -> None:
    async for lines in client.tail_job_logs(job_id):
        for line in lines.rstrip("\n").split("\n"):
            say(line)
