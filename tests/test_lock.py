"""One driver per sweep folder (rayjac.runs._lock): a second run waits; a dead holder never blocks."""

import subprocess
import sys
import textwrap
import threading
import uuid

import pyarrow.parquet as pq
import pytest

from helpers import wait_for
from rayjac.runs import parse_config
from rayjac.runs._lock import LOCK_FILE, sweep_lock
from rayjac.runs import RUNS_TABLE, run


def test_a_second_sweep_of_the_folder_waits_for_the_first(tmp_path, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"problem": "jobs.lorenz96:make", "output": {"path": str(tmp_path / "s")},
                        "sweep": {"params.n": [4, 5]}})
    lines, records = [], []
    with sweep_lock(str(tmp_path / "s"), print):
        worker = threading.Thread(target=lambda: records.extend(run(cfg, progress=lines.append)))
        worker.start()
        wait_for(lambda: lines, "the waiting notice")
        assert "is in use by another `rayjac run` (pid " in lines[0]
        assert "waiting for it to finish" in lines[0]
        assert not (tmp_path / "s" / RUNS_TABLE).exists()  # nothing ran meanwhile
    worker.join(timeout=300)
    assert [r.status for r in records] == ["done", "done"]
    assert pq.read_table(tmp_path / "s" / RUNS_TABLE).column("status").to_pylist() == ["done"] * 2
    assert (tmp_path / "s" / LOCK_FILE).read_text() == ""  # released


def test_a_lock_held_by_a_killed_process_does_not_block(tmp_path):
    folder = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from rayjac.runs._lock import sweep_lock
        with sweep_lock({str(folder)!r}, print):
            print("locked", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lines, got = [], []

        def second():
            with sweep_lock(str(folder), lines.append) as locked:
                got.append(locked)

        blocked = threading.Thread(target=second, daemon=True)
        blocked.start()
        wait_for(lambda: lines, "the waiting notice")
        assert f"pid {holder.pid} on " in lines[0] and not got
        holder.kill()  # as kill -9: the OS releases its lock
        blocked.join(timeout=60)
        assert got == [True]
    finally:
        holder.kill()
        holder.wait()
    with sweep_lock(str(folder), pytest.fail) as locked:
        assert locked


def test_object_stores_are_not_locked_local_uris_are(tmp_path):
    with sweep_lock(f"s3://bucket-{uuid.uuid4().hex}/sweep", pytest.fail) as locked:
        assert locked is False
    with sweep_lock(f"file://{tmp_path}/s", pytest.fail) as locked:
        assert locked and (tmp_path / "s" / LOCK_FILE).exists()
