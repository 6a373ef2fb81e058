"""Ends an embedded Ray when the driver that started it dies, however it dies (kill -9 too).

Run as a script (``python _watchdog.py DRIVER_PID PID...``, in a session of its own), so that
it imports nothing of rayjac or Ray. While the driver lives it notes, twice a second, every
process under the given ones (Ray's head processes: raylet, GCS, dashboard, and under them the
agents, workers, runners); when the driver is gone (seen at once, through a pidfd) it kills
every noted process that is still the same process (same start time), so no run of a dead
driver computes anything, and no agent lingers as an orphan. A sweep's runners also
``follow`` the driver themselves and end the moment it does, so none publishes a run after it,
however the watchdog's poll and the run's last step fall. Linux only (``/proc``); elsewhere
it does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading

POLL_S = 0.5


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, start time)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry)] = (int(fields[1]), fields[19])
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot), None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def identity(pid: int | None = None) -> str:
    """``"PID:START"`` of a process (this one by default): the PID alone may be reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_started(pid)}"


class _Exit:
    """Waits for a process to end: at once through a pidfd where Linux has them, else by
    polling. ``wait(timeout)`` is true once it has ended."""

    def __init__(self, pid: int):
        self.pid, self.fd = pid, None
        try:
            self.fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass

    def wait(self, timeout: float | None) -> bool:
        if self.fd is not None and select.select([self.fd], [], [], timeout)[0]:
            return True
        if self.fd is None:
            threading.Event().wait(timeout if timeout is not None else POLL_S)
        return not _alive(self.pid)


def follow(driver: str) -> None:
    """Ends this process (SIGKILL) the moment the process ``driver`` (an ``identity``) ends,
    so a worker of a dead driver publishes nothing, whatever the watchdog's timing."""
    if not os.path.isdir("/proc"):
        return
    pid, started = driver.split(":", 1)
    if _started(int(pid)) != started:
        os.kill(os.getpid(), signal.SIGKILL)
    exit_ = _Exit(int(pid))

    def wait() -> None:
        while not exit_.wait(None):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="rayjac-follow-driver", daemon=True).start()


def watch(driver: int, roots: list[int]) -> None:
    noted: dict[int, str] = {}
    exit_ = _Exit(driver)
    while True:
        table = _processes()
        todo = [pid for pid in roots if pid in table] + [p for p in noted if p in table]
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
        while todo:
            pid = todo.pop()
            if pid not in noted and pid in table:
                noted[pid] = table[pid][1]
            todo.extend(c for c in children.get(pid, ()) if c not in noted)
        if exit_.wait(POLL_S):
            break
    table = _processes()
    for pid, started in noted.items():
        if pid in table and table[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    if os.path.isdir("/proc"):
        watch(int(sys.argv[1]), [int(p) for p in sys.argv[2:]])
