"""Progress output (rayjac._progress): tqdm bars on a terminal only, lines otherwise, quiet."""

import sys

import pytest

from rayjac._progress import SweepProgress, shard_bar


@pytest.fixture
def loud(monkeypatch):
    monkeypatch.delenv("RAYJAC_QUIET", raising=False)
    return monkeypatch


def terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)


def shards(total):
    bar = shard_bar(total)
    for _ in range(total):
        bar.update()
    bar.close()


def test_shard_bar_only_on_a_terminal(loud, capsys):
    shards(3)
    assert capsys.readouterr().err == ""
    terminal(loud)
    shards(2)
    err = capsys.readouterr().err
    assert "rayjac: shards" in err and "2/2" in err and "\r" in err
    loud.setenv("RAYJAC_QUIET", "1")
    shards(2)
    assert capsys.readouterr().err == ""


def sweep(progress):
    progress.finished("a", "done", "done already, skipped", ran=False)
    progress.started()
    progress.started()
    progress.finished("b", "failed", "FAILED: ValueError: bad")
    progress.tick()
    progress.finished("c", "done", "done in 0.1 s")
    progress.close("2 of 3 runs done, 1 failed; table: s/runs.parquet")


def test_sweep_lines_when_stderr_is_not_a_terminal(loud, capsys):
    sweep(SweepProgress(3))
    assert capsys.readouterr().err.splitlines() == [
        "[1/3] a: done already, skipped", "[2/3] b: FAILED: ValueError: bad",
        "[3/3] c: done in 0.1 s", "2 of 3 runs done, 1 failed; table: s/runs.parquet"]


def test_sweep_bar_on_a_terminal_counts_done_failed_running(loud, capsys):
    terminal(loud)
    sweep(SweepProgress(3))
    err = capsys.readouterr().err
    assert "rayjac: runs" in err and "\r" in err
    assert "done=1 failed=0 running=2" in err  # the skipped run, and two started
    assert "done=1 failed=1 running=1" in err
    assert "3/3" in err and "done=2 failed=1 running=0" in err
    assert "[2/3] b: FAILED: ValueError: bad" in err  # failures stay readable above the bar
    assert "[1/3] a" not in err and "[3/3] c" not in err  # done runs only move the bar
    assert err.rstrip().endswith("2 of 3 runs done, 1 failed; table: s/runs.parquet")


def test_quiet_silences_the_sweep_but_not_a_notice(loud, capsys):
    loud.setenv("RAYJAC_QUIET", "1")
    progress = SweepProgress(3)
    sweep(progress)
    assert capsys.readouterr().err == ""
    progress.notice("waiting for the lock")
    assert capsys.readouterr().err == "waiting for the lock\n"
    terminal(loud)
    sweep(SweepProgress(3))
    assert capsys.readouterr().err == ""


def test_lines_go_to_a_callback_instead(loud, capsys):
    terminal(loud)
    lines = []
    sweep(SweepProgress(3, lines.append))
    assert len(lines) == 4 and lines[1] == "[2/3] b: FAILED: ValueError: bad"
    assert capsys.readouterr().err == ""
