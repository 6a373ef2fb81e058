"""What users get from a regular install: the wheel that ``pip wheel .`` builds, installed
non-editable and imported by a fresh interpreter that sees neither the source tree nor the
editable install, carries every module and works (``import rayjac`` without Ray, a sparse
Jacobian, the ``rayjac`` command's entry point)."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: drops the source tree and any editable-install finder, imports
# rayjac from the target folder only, and reports what it saw.
_CHECK = """
import json, sys
target, repo = sys.argv[1], sys.argv[2]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()
                    and "editable" not in getattr(f, "__name__", "").lower()]
sys.path[:] = [target] + [p for p in sys.path if p and not p.startswith(repo)]
import rayjac
imported_ray = "ray" in sys.modules
import jax.numpy as jnp
jf = rayjac.jacfwd(lambda x: x[1:] * x[:-1], sparsity="auto")
dense = jf(jnp.arange(1.0, 6.0)).todense()
import rayjac.cli, rayjac.runs, rayjac.store, rayjac.engine
print(json.dumps({"file": rayjac.__file__, "ray_on_import": imported_ray,
                  "colors": jf.sparsity(jnp.ones(5)).num_colors,
                  "dense": dense.tolist(), "version": rayjac.__version__}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           "-w", str(out), str(REPO)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [built] = out.glob("rayjac-*.whl")
    return built


def test_the_wheel_carries_every_module_of_the_source_tree(wheel):
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "rayjac").rglob("*.py")}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert source - names == set()
    assert "rayjac/py.typed" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "rayjac = rayjac.cli:main" in zipfile.ZipFile(wheel).read(
        entry[0]).decode()


def test_the_installed_wheel_works_without_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                           "--target", str(target), str(wheel)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = subprocess.run([sys.executable, "-c", _CHECK, str(target), str(REPO)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert seen.returncode == 0, seen.stderr[-3000:]
    report = json.loads(seen.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(target)
    assert report["ray_on_import"] is False
    assert report["colors"] == 2
    assert report["dense"] == [[2.0, 1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 2.0, 0.0, 0.0],
                               [0.0, 0.0, 4.0, 3.0, 0.0], [0.0, 0.0, 0.0, 5.0, 4.0]]
