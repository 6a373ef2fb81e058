"""Ends an embedded Ray when the driver that started it dies, however it dies (kill -9 too).

Run as a script (``python _watchdog.py DRIVER_PID PID...``, in a session of its own), so that
it imports nothing of rayjac or Ray. While the driver lives it notes, about once a second, every
process under the given ones (Ray's head processes: raylet, GCS, dashboard, and under them the
agents, workers, runners); when the driver is gone it kills every noted process that is still
the same process (same start time), so no run of a dead driver computes or publishes anything,
and no agent lingers as an orphan. Linux only (``/proc``); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

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


def watch(driver: int, roots: list[int]) -> None:
    noted: dict[int, str] = {}
    while _alive(driver):
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
        time.sleep(POLL_S)
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
