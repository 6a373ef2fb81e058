"""Storage benchmark: write/load speed of result folders, and the driver's peak memory when
shards stream to disk against gathering the Jacobian in memory.

    python benchmarks/bench_storage.py            # n = 4096 (a 64 MiB float32 Jacobian)
    python benchmarks/bench_storage.py --n 1024 --no-engine
    python benchmarks/bench_storage.py --nnz 1000000    # sparse: a banded 250000^2 Jacobian

Each memory case runs in its own process: the peak resident set (VmHWM) is reset with
/proc/self/clear_refs once everything is imported and set up, so a case's peak minus its
resident set at that moment is the memory the case itself needed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import rayjac
from rayjac._jacobian import JacStream
from rayjac.core._plan import SparsePlan, SparseShard, gather_values
from rayjac.sparsity import Sparsity
from rayjac.store import load, write_result

MIB = 2 ** 20


def synthetic_stream(n: int, shards: int, fresh: bool = False) -> JacStream:
    """A JacStream of an n x n float32 Jacobian in ``shards`` shards of random rows.

    ``fresh`` draws every shard anew (as a worker would send it); otherwise one block of rows
    is drawn once and reused, so that timings measure writing only.
    """
    bounds = np.linspace(0, n, shards + 1).astype(int)
    block = None if fresh else _rows(max(np.diff(bounds)), n)

    def shards_():  # keeps no reference to a shard once it is yielded
        for start, stop in zip(bounds[:-1], bounds[1:]):
            yield int(start), [_rows(stop - start, n) if fresh else block[:stop - start]]
    return JacStream(_layout(n), None, None, shards_())


@functools.lru_cache
def _layout(n: int):
    return rayjac.jacfwd(lambda x: x).stream((jnp.zeros(n),)).layout


def _rows(length: int, n: int) -> np.ndarray:
    return np.random.default_rng(length).standard_normal((length, n), dtype=np.float32)


# ------------------------------------------------------------------------------------ sparse

SPARSE_COLORS = 8  # shards of a sparse stream: one per colour


@functools.lru_cache
def sparse_plan(nnz: int) -> SparsePlan:
    """A Lorenz-96-like banded pattern with ``nnz`` entries (4 per row, cyclic), coloured by
    ``col % 8`` (valid: columns that share a row are less than 4 apart)."""
    n = max(nnz // 4 // SPARSE_COLORS, 1) * SPARSE_COLORS
    rows = np.repeat(np.arange(n), 4)
    cols = (rows + np.tile([-2, -1, 0, 1], n)) % n
    pattern = Sparsity(rows, cols, (n, n), colors=np.arange(n) % SPARSE_COLORS)
    return SparsePlan.build(pattern, _layout(n))


def sparse_stream(nnz: int, fresh: bool = False) -> JacStream:
    """A JacStream of the banded pattern's nonzeros, one shard per colour (as sharded
    workers send them); ``fresh`` draws each shard's values anew."""
    plan = sparse_plan(nnz)
    sizes = [plan.positions(0, c, c + 1).size for c in range(SPARSE_COLORS)]
    block = None if fresh else _values(max(sizes))

    def shards_():
        for c, size in enumerate(sizes):
            yield SparseShard(c, c + 1, [_values(size) if fresh else block[:size]])
    return JacStream(plan.layout, None, None, shards_(), plan=plan)


def _values(size: int) -> np.ndarray:
    return np.random.default_rng(size).standard_normal(size, dtype=np.float32)


def sparse_speed_rows(nnz: int, folder: str) -> list[tuple[str, float, str]]:
    """(case, seconds, note): writing and loading the sparse result, IPC and Parquet."""
    nnz = sparse_plan(nnz).pattern.nnz
    raw = nnz * 20  # row and col int64, value float32
    rows = []
    for fmt in ("arrow", "parquet"):
        path = f"{folder}/sparse-{fmt}"

        def fresh():
            shutil.rmtree(path, ignore_errors=True)
            return (sparse_stream(nnz),)
        write = _best(lambda stream: write_result(path, stream, format=fmt), fresh)
        size = os.path.getsize(f"{path}/jacobian.{fmt}")
        rows.append((f"write {fmt}, {SPARSE_COLORS} shards", write,
                     f"{_rate(raw, write)}, {size / nnz:.2f} bytes/entry on disk"))
        loaded = _best(lambda: load(path))
        rows.append((f"load {fmt} -> BCOO + Sparsity", loaded, _rate(raw, loaded)))
    return rows


def _best(func, setup=lambda: None, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        args = setup()
        start = time.perf_counter()
        func(*args) if args else func()
        times.append(time.perf_counter() - start)
    return min(times)


def speed_rows(n: int, shards: int, folder: str) -> list[tuple[str, float, str]]:
    """(case, seconds, note) for writing and loading an n x n float32 Jacobian."""
    size = n * n * 4
    rows = []
    for fmt in ("arrow", "parquet"):
        path = f"{folder}/{fmt}"

        def fresh():  # a new stream, and no old result to replace
            shutil.rmtree(path, ignore_errors=True)
            return (synthetic_stream(n, shards),)
        write = _best(lambda stream: write_result(path, stream, format=fmt), fresh)
        rows.append((f"write {fmt}, {shards} shards", write, _rate(size, write)))
        loaded = _best(lambda: load(path))
        rows.append((f"load {fmt}, {shards} shards (one copy)", loaded, _rate(size, loaded)))
    single = f"{folder}/single"
    write_result(single, synthetic_stream(n, 1))
    zero_copy = _best(lambda: load(single), repeat=10)
    jac = load(single).jacobian
    note = "zero-copy view" if not jac.flags.owndata else "copied"
    rows.append((f"load arrow, 1 shard ({size // MIB} MiB, memory-mapped)", zero_copy, note))
    return rows


PARQUET_VARIANTS = {
    "no compression": {"compression": "none"},
    "zstd(1)": {"compression": "zstd", "compression_level": 1},
    "byte-stream-split + zstd(1) (rayjac)": {"compression": "zstd", "compression_level": 1,
                                             "use_byte_stream_split": ["out_0.list.element"]},
}


def parquet_rows(n: int, folder: str) -> list[tuple[str, str, float, float]]:
    """(data, variant, size ratio, write seconds) of Parquet settings on a Jacobian table."""
    dense = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    banded = np.zeros((n, n), np.float32)  # a Lorenz-96-like Jacobian: 4 diagonals
    for k in (-2, -1, 0, 1):
        banded[np.arange(n), (np.arange(n) + k) % n] = dense[0, :n]
    found = []
    for data, jac in (("dense random", dense), ("banded", banded)):
        stream = JacStream(_layout(n), None, None, iter([(0, [jac])]))
        table = pa.ipc.open_file(f"{write_result(f'{folder}/{data}', stream)}/jacobian.arrow"
                                 ).read_all()
        for variant, options in PARQUET_VARIANTS.items():
            file = f"{folder}/{data}.parquet"
            seconds = _best(lambda: pq.write_table(table, file, use_dictionary=False,
                                                   **options))
            found.append((data, variant, os.path.getsize(file) / jac.nbytes, seconds))
    return found


def _rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e9:.2f} GB/s"


def _engine_func(x):
    """A dense, cheap Jacobian with no large constants: row i depends on x[:i+1]."""
    return jnp.tanh(jnp.cumsum(x) * 1e-2) * x


def memory_case(case: str, n: int, shards: int, folder: str) -> dict:
    """Runs one case in this process; returns its peak memory above the resident set before."""
    x = jnp.linspace(0.0, 1.0, n)
    if case.startswith("engine"):
        from rayjac.engine import ensure_ray
        ensure_ray()
        jf = rayjac.jacfwd(_engine_func, shards=shards)
        # Warm up (start the workers, compile) without ever holding the Jacobian here.
        write_result(f"{folder}/{case}-warm", jf.stream((x,)))
    path = f"{folder}/{case}"
    if case.startswith("sparse"):
        sparse_plan(n).by_color  # the plan (the driver holds it either way) is set up first
    run = {
        "sparse-stream": lambda: write_result(path, sparse_stream(n, True)),
        "sparse-gather": lambda: gather_values(sparse_plan(n), sparse_stream(n, True).shards),
        "synthetic-stream": lambda: write_result(path, synthetic_stream(n, shards, True)),
        "synthetic-gather": lambda: _gather(synthetic_stream(n, shards, True)),
        "engine-stream": lambda: write_result(path, jf.stream((x,))),
        "engine-gather": lambda: jax.block_until_ready(jf(x)),
    }[case]
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # set-up garbage would otherwise hide new memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before, anon = _status("VmRSS"), _status("RssAnon")
    with _PeakSampler("RssAnon") as private:
        run()
    return {"case": case, "rss_mib": (_status("VmHWM") - before) / MIB,
            "private_mib": (private.peak - anon) / MIB}


class _PeakSampler(threading.Thread):
    """The peak of a /proc/self/status field, sampled every millisecond (Ray's shared object
    store pages count in VmHWM but are not the driver's own memory; RssAnon is)."""

    def __init__(self, key: str):
        super().__init__(daemon=True)
        self.key, self.peak, self._stop_event = key, _status(key), threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.001):
            self.peak = max(self.peak, _status(self.key))

    def __enter__(self) -> _PeakSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _status(self.key))


def _gather(stream: JacStream) -> np.ndarray:
    """What a driver without streaming does: all shards into one array."""
    jac = np.empty((stream.layout.basis.n, *stream.layout.out_shapes[0]), np.float32)
    for start, (rows,) in stream.shards:
        jac[start:start + len(rows)] = rows
    return jac


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_rows(n: int, shards: int, folder: str, engine: bool,
                cases: tuple = (), nnz: int = 0) -> list[dict]:
    cases = list(cases) or ["synthetic-stream", "synthetic-gather"] + (
        ["engine-stream", "engine-gather"] if engine else [])
    found = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--memory-case", case, "--n", str(n),
                               "--shards", str(shards), "--folder", folder, "--nnz", str(nnz)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"memory case {case} failed:\n{proc.stderr[-3000:]}")
        found.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return found


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return (f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, pyarrow {pa.__version__}, numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--no-engine", dest="engine", action="store_false")
    parser.add_argument("--nnz", type=int, default=1_000_000, help="entries of the sparse "
                        "result")
    parser.add_argument("--sparse-only", action="store_true", help="only the sparse tables")
    parser.add_argument("--memory-case")
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.memory_case:
        size = args.nnz if args.memory_case.startswith("sparse") else args.n
        print(json.dumps(memory_case(args.memory_case, size, args.shards, args.folder)))
        return
    folder = tempfile.mkdtemp(prefix="rayjac-bench-")
    try:
        print(f"machine: {machine()}")
        if not args.sparse_only:
            dense_tables(args, folder)
        sparse_tables(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def dense_tables(args: argparse.Namespace, folder: str) -> None:
    """The dense write/load, Parquet and driver-memory tables."""
    print(f"Jacobian: {args.n} x {args.n} float32 ({args.n ** 2 * 4 / MIB:.0f} MiB)\n")
    print("| case | time | rate |\n|---|---|---|")
    for case, seconds, note in speed_rows(args.n, args.shards, folder):
        print(f"| {case} | {seconds * 1e3:.1f} ms | {note} |")
    print("\n| Parquet data | settings | size / raw | write |\n|---|---|---|---|")
    for data, variant, ratio, seconds in parquet_rows(args.n, folder):
        print(f"| {data} | {variant} | {ratio:.3f} | {seconds * 1e3:.0f} ms |")
    print("\n| driver memory, above its start | peak private (RssAnon) | peak RSS (VmHWM) |"
          "\n|---|---|---|")
    for row in memory_rows(args.n, args.shards, folder, args.engine):
        print(f"| {row['case']} | {row['private_mib']:.0f} MiB | {row['rss_mib']:.0f} MiB |")


def sparse_tables(args: argparse.Namespace, folder: str) -> None:
    """The sparse write/load and driver-memory tables."""
    nnz = sparse_plan(args.nnz).pattern.nnz
    m = sparse_plan(args.nnz).pattern.shape[0]
    print(f"\nSparse: {m} x {m} banded, {nnz} float32 entries ({nnz * 20 / MIB:.0f} MiB "
          "as row, col, value)\n\n| case | time | rate |\n|---|---|---|")
    for case, seconds, note in sparse_speed_rows(args.nnz, folder):
        print(f"| {case} | {seconds * 1e3:.1f} ms | {note} |")
    print("\n| driver memory, above its start | peak private (RssAnon) | peak RSS (VmHWM) |"
          "\n|---|---|---|")
    for row in memory_rows(args.n, args.shards, folder, args.engine,
                           ("sparse-stream", "sparse-gather"), args.nnz):
        print(f"| {row['case']} | {row['private_mib']:.0f} MiB | {row['rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
