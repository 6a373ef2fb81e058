"""Start-up time of the ``rayjac`` command: ``--help`` and a config error (goals: 0.5 s and 1 s
on the 2-core development machine), and ``import rayjac`` against ``import jax``.

    python benchmarks/bench_cli.py [--repeats 5]

Each case runs in a fresh interpreter; the table shows the best and the median wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "rayjac --help": [sys.executable, "-m", "rayjac", "--help"],
    "rayjac run BAD.yaml (config error)": [sys.executable, "-m", "rayjac", "run", "{bad}"],
    "python -c 'import rayjac'": [sys.executable, "-c", "import rayjac"],
    "python -c 'import jax' (reference)": [sys.executable, "-c", "import jax"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bad = os.path.join(folder, "bad.yaml")
        with open(bad, "w") as f:
            f.write("problem: jobs.lorenz96:make\nexecution: {shards: 0}\n")
        print("| command | best (s) | median (s) |\n|---|---|---|")
        for name, argv in CASES.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                subprocess.run([a.format(bad=bad) for a in argv], capture_output=True,
                               check=False)
                times.append(time.perf_counter() - start)
            print(f"| `{name}` | {min(times):.2f} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
