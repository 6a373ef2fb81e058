"""Live progress on stderr, drawn with tqdm: the shards of a run, the runs of a sweep.

On a terminal: a live bar. Not on a terminal (a log file, a Ray job's logs): nothing for shards,
one line per finished run of a sweep. ``RAYJAC_QUIET=1`` silences both.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from tqdm import tqdm


def quiet() -> bool:
    """Whether ``RAYJAC_QUIET`` asks for no progress output (any value but empty or ``0``)."""
    return os.environ.get("RAYJAC_QUIET", "") not in ("", "0")


def _live() -> bool:
    return not quiet() and sys.stderr.isatty()


def shard_bar(total: int) -> tqdm:
    """A bar over the shards of one call, on a terminal only (and only for more than one)."""
    return tqdm(total=total, desc="rayjac: shards", unit="shard", file=sys.stderr,
                disable=total <= 1 or not _live(), dynamic_ncols=True)


class SweepProgress:
    """The runs of a sweep: a live bar (done, failed and running counts, ETA) on a terminal,
    else one line per finished run (``[3/6] n-40: done in 0.6 s``).

    Args:
        total: the number of runs in the sweep.
        say: where the lines go instead of stderr (then there is never a bar).

    Example:
        >>> lines = []
        >>> progress = SweepProgress(2, lines.append)
        >>> progress.started()
        >>> progress.finished("n-4", "done", "done in 0.1 s")
        >>> progress.finished("n-8", "failed", "FAILED: ValueError: bad n", ran=False)
        >>> progress.close("1 of 2 runs done, 1 failed")
        >>> lines
        ['[1/2] n-4: done in 0.1 s', '[2/2] n-8: FAILED: ValueError: bad n', '1 of 2 runs done, 1 failed']
    """

    def __init__(self, total: int, say: Callable[[str], None] | None = None):
        self.total, self.done, self.failed, self.running = total, 0, 0, 0
        self.programs = 0  # compiled by the sweep's runners so far
        self.live = say is None and _live()
        if say is None and not self.live and not quiet():
            say = _to_stderr
        self.say, self.bar = say, None

    def notice(self, line: str) -> None:
        """A line shown even with ``RAYJAC_QUIET`` (e.g. that the sweep waits for a lock)."""
        (self.say or _to_stderr)(line)

    def started(self) -> None:
        self.running += 1
        self._refresh()

    def finished(self, run_id: str, status: str, message: str, *, ran: bool = True) -> None:
        """One run ended (``ran=False``: decided without running, e.g. done already)."""
        self.running -= ran
        self.done += status == "done"
        self.failed += status != "done"
        line = f"[{self.done + self.failed}/{self.total}] {run_id}: {message}"
        if self.say is not None:
            self.say(line)
        elif self.live and ran:
            if status != "done":
                self._bar().write(line, file=sys.stderr)  # failures stay above the bar
            self._bar().update()
        self._refresh()

    def tick(self) -> None:
        """Redraws the bar (elapsed time and ETA) while no run ends."""
        if self.bar is not None:
            self.bar.refresh()

    def close(self, summary: str) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.say is not None:
            self.say(summary)
        elif self.live:
            print(summary, file=sys.stderr, flush=True)

    def _bar(self) -> tqdm:
        if self.bar is None:  # started at the first real run: skipped runs do not skew the ETA
            self.bar = tqdm(total=self.total, initial=self.done + self.failed, unit="run",
                            desc="rayjac: runs", file=sys.stderr, dynamic_ncols=True)
        return self.bar

    def _refresh(self) -> None:
        if self.live and (self.running or self.bar is not None):
            self._bar().set_postfix_str(f"done={self.done} failed={self.failed} "
                                        f"running={self.running} programs={self.programs}")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
