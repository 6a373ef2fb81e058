"""The README's first set-up command works from a plain install (``pip install -e .``, no
extras): run, show and plot, in a process that cannot import what only the extras install
(polars, duckdb, pytest, ...): as on a machine where only rayjac's own requirements are."""

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]

# Installs an import hook that hides the given top-level modules, then runs the CLI commands.
_DRIVER = """
import importlib.abc, json, os, sys
hidden = set(json.loads(os.environ["RAYJAC_TEST_HIDDEN"]))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: not a requirement)")
sys.meta_path.insert(0, Hide())
from rayjac.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(code)
"""


def _requirement_closure(name: str, extras: frozenset = frozenset()) -> set[str]:
    """Canonical names of ``name`` and every distribution its requirements pull in, with
    ``name``'s ``extras`` and the extras its requirements name (e.g. ``ray[default]``)."""
    seen, stack = set(), [(name, extras)]
    while stack:
        dist_name, extras = stack.pop()
        key = (canonicalize_name(dist_name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.distribution(dist_name).requires or []
        except md.PackageNotFoundError:  # its marker held nowhere we can see: nothing to add
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in extras | {""}):
                stack.append((req.name, frozenset(req.extras)))
    return {dist for dist, _ in seen}


def test_core_requirements_include_matplotlib_for_plot():
    core = [Requirement(r) for r in md.requires("rayjac")
            if Requirement(r).marker is None]
    assert "matplotlib" in {canonicalize_name(r.name) for r in core}


def test_readme_commands_work_without_test_extras(tmp_path):
    plain = _requirement_closure("rayjac")
    extras = frozenset(md.metadata("rayjac").get_all("Provides-Extra") or ())
    only_extras = _requirement_closure("rayjac", extras) - plain  # what extras add
    hidden = sorted(module for module, dists in md.packages_distributions().items()
                    if {canonicalize_name(d) for d in dists} <= only_extras)
    assert "polars" in hidden and "duckdb" in hidden
    (tmp_path / "jobs").symlink_to(REPO / "jobs")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    commands = [["run", "configs/quickstart.yaml"], ["show", "results/quickstart"],
                ["plot", "results/quickstart", "-o", "quickstart.png"]]
    env = {**os.environ, "RAYJAC_TEST_HIDDEN": json.dumps(hidden), "RAYJAC_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(commands)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jacobian" in done.stdout and "wrote quickstart.png" in done.stdout
    assert (tmp_path / "quickstart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
