"""One driver per sweep folder: an advisory lock (``fcntl.flock``) on ``<folder>/runs.lock``.

The operating system releases the lock when its process ends, however it ends (``kill -9``
included), so a stale lock file never blocks a later run. Object stores (``s3://``) have no
locks: there the sweep runs unlocked (see the README).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from typing import Callable, Iterator

from ..store._folders import is_uri

LOCK_FILE = "runs.lock"


@contextlib.contextmanager
def sweep_lock(folder: str, say: Callable[[str], None]) -> Iterator[bool]:
    """Holds the sweep folder's lock for the block; waits (telling ``say`` once, with who holds
    it) while another process has it. Yields whether a lock is held (``False`` on object stores).

    Example:
        >>> import tempfile
        >>> with sweep_lock(tempfile.mkdtemp(), print) as locked:
        ...     locked
        True
    """
    if is_uri(folder) and not folder.startswith("file://"):
        yield False
        return
    root = os.path.abspath(folder.removeprefix("file://"))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, LOCK_FILE), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            say(f"rayjac: the sweep folder {folder} is in use by another `rayjac run` ({holder});"
                " waiting for it to finish, then the runs it has not done will run here (Ctrl-C "
                "to stop waiting)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield True
        finally:
            handle.truncate(0)
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
