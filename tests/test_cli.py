"""The ``rayjac`` command line (rayjac.cli): exit codes, messages, run/show/plot."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rayjac.cli import main
from rayjac.store import load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run from a tmp folder that sees the shipped jobs and configs, like a user's checkout."""
    (tmp_path / "jobs").symlink_to(REPO / "jobs")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path, text):
    path.write_text(text)
    return str(path)


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


MLP = ["--set", "params.sizes=[3, 4, 4, 2]", "--set", "params.batch=2",
       "--set", "execution.shards=null"]


def test_run_show_and_plot(workdir, capsys):
    code, out, err = cli(capsys, "run", "configs/mlp.yaml", *MLP)
    assert code == 0 and out == f"wrote {workdir / 'results' / 'mlp'}\n"
    assert [leaf.shape for leaf in load("results/mlp").jacobian][:2] == [(2, 2, 3, 4),
                                                                          (2, 2, 4)]
    code, out, _ = cli(capsys, "show", "results/mlp")
    assert code == 0
    assert "problem  jobs.mlp:make" in out
    assert "jacobian w0                   float32    (2, 2, 3, 4)" in out
    assert "timings  factory_s" in out and "versions rayjac" in out
    code, out, _ = cli(capsys, "plot", "results/mlp", "-o", "mlp.png")
    assert code == 0 and out == "wrote mlp.png\n"
    assert (workdir / "mlp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_result_is_a_short_error(workdir, capsys):
    assert cli(capsys, "run", "configs/mlp.yaml", *MLP)[0] == 0
    code, out, err = cli(capsys, "run", "configs/mlp.yaml", *MLP)
    assert code == 1 and out == ""
    assert err.startswith("rayjac run: error: A result already exists at results/mlp.")
    assert cli(capsys, "run", "configs/mlp.yaml", *MLP, "--set", "output.overwrite=true")[0] == 0


def test_address_option_sets_execution_address(workdir, capsys):
    assert cli(capsys, "run", "configs/mlp.yaml", *MLP, "--address", "ray://head:10001")[0] == 0
    assert load("results/mlp").metadata["config"]["execution"]["address"] == "ray://head:10001"


@pytest.mark.parametrize("text, words", [
    ("problem: jobs.lorenz96:make\nexecution: {shard: 2}\n",
     ["invalid bad.yaml (1 problem):", "execution.shard: unknown key; valid keys: shards,"]),
    ("problem: jobs/lorenz96.py\nname: a/b\n",
     ["(2 problems)", "name: 'a/b' is not a valid run name", "problem: expected 'module:function'"]),
    ("name: x\n", ["problem: required key is missing"]),
    ("problem: [oops\n", ["invalid YAML at line 2"]),
    ("problem: nowhere_xyz.jobs:make\n", ["problem: cannot import 'nowhere_xyz.jobs'"]),
    ("problem: jobs.lorenz96:make\njacfwd: {grad_vars: F}\n",
     ["jacfwd.grad_vars: jobs.lorenz96:make has no variable 'F'; its variables are: forcing"]),
])
def test_config_errors_exit_2_with_every_problem(workdir, capsys, text, words):
    write(workdir / "bad.yaml", text)
    code, out, err = cli(capsys, "run", "bad.yaml")
    assert code == 2 and out == ""
    assert err.startswith("rayjac run: error: invalid bad.yaml (")
    for word in words:
        assert word in err


def test_bad_overrides_and_missing_config(workdir, capsys):
    code, _, err = cli(capsys, "run", "configs/mlp.yaml", "--set", "execution.shard=2",
                       "--set", "params")
    assert code == 2
    assert "--set execution.shard=2: unknown key 'execution.shard'" in err
    assert "--set params: expected KEY=VALUE" in err
    code, _, err = cli(capsys, "run", "nope.yaml")
    assert code == 2 and "invalid nope.yaml (1 problem):\n  - cannot read the config file" in err


def test_sweep_with_a_failed_run_exits_1_and_reports_it(workdir, capsys, monkeypatch):
    monkeypatch.delenv("RAYJAC_QUIET", raising=False)  # conftest silences the per-run lines
    config = write(workdir / "sweep.yaml", "problem: jobs.lorenz96:make\n"
                                           "output: {path: sw}\nsweep: {params.n: [4, 2]}\n")
    code, out, err = cli(capsys, "run", config)
    assert code == 1 and out == ""
    # runs end in any order: the count is of runs finished so far
    assert re.search(r"\[[12]/2\] n-2: FAILED: FactoryError: the job factory "
                     r"jobs\.lorenz96:make raised ValueError when called with params "
                     r"\{'n': 2\}: Lorenz-96 needs n >= 4 sites, "
                     r"got n=2\.", err)
    assert "1 of 2 runs done, 1 failed" in err
    assert "failed: n-2: FactoryError: the job factory jobs.lorenz96:make raised ValueError" in err
    code, out, _ = cli(capsys, "show", "sw")
    assert code == 0
    assert out.splitlines()[0].split() == ["run_id", "params.n", "status", "error", "path"]
    assert out.splitlines()[1].split() == ["n-4", "4", "done", "-", "n-4"]
    code, _, err = cli(capsys, "run", config, "--set", "sweep.params.n=[4]")
    assert code == 0 and "[1/1] n-4: done already, skipped" in err


def test_show_and_plot_errors(workdir, capsys):
    code, _, err = cli(capsys, "show", "missing")
    assert code == 1 and err.startswith("rayjac show: error: ") and "missing" in err
    code, _, err = cli(capsys, "plot", "missing", "-o", "x.png")
    assert code == 1 and "missing" in err
    code, _, err = cli(capsys, "plot", "missing")
    assert code == 2 and "the following arguments are required: -o/--output" in err


def test_help_and_usage(capsys):
    assert main(["--help"]) == 0
    assert "rayjac run configs/quickstart.yaml" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2


def test_python_dash_m_prints_no_traceback(workdir):
    write(workdir / "bad.yaml", "problem: nowhere_xyz:make\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv, code in ((["run", "bad.yaml"], 2), (["run", "missing.yaml"], 2),
                       (["show", "missing"], 1)):
        proc = subprocess.run([sys.executable, "-m", "rayjac", *argv], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"rayjac {argv[0]}: error: ")


_LOADED = """
import sys
from rayjac.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("jax", "ray", "pyarrow", "matplotlib", "scipy") if m in sys.modules)
print("LOADED", heavy)
sys.exit(code)
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0), (["run", "--help"], 0), (["run", "missing.yaml"], 2),
    (["run", "bad.yaml"], 2), (["run", "bad.yaml", "--set", "execution.shards=0"], 2),
])
def test_help_and_config_errors_come_before_jax_and_ray_load(workdir, argv, code):
    write(workdir / "bad.yaml", "problem: jobs.lorenz96:make\nexecution: {shard: 2}\n")
    done = subprocess.run([sys.executable, "-c", _LOADED, *argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert "LOADED []" in done.stdout


def test_import_rayjac_loads_names_on_first_use():
    done = subprocess.run([sys.executable, "-c", "import sys, rayjac; before = 'jax' in "
                           "sys.modules; f = rayjac.jacfwd; print(before, 'jax' in sys.modules,"
                           " sorted(rayjac.__all__) == sorted(set(dir(rayjac)) & set("
                           "rayjac.__all__)))"], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "True"], done.stderr


def test_a_raising_factory_is_named_with_its_params(workdir, capsys):
    (workdir / "myjobs").mkdir()
    write(workdir / "myjobs" / "__init__.py", "")
    write(workdir / "myjobs" / "broken.py", "def make(n=3):\n    return range('x')\n")
    write(workdir / "c.yaml", "problem: myjobs.broken:make\nparams: {n: 5}\n")
    assert main(["run", "c.yaml"]) == 1
    err = capsys.readouterr().err
    assert ("FactoryError: the job factory myjobs.broken:make raised TypeError when called "
            "with params {'n': 5}: 'str' object cannot be interpreted as an integer") in err


def test_a_closed_stdout_is_not_an_error(workdir):
    main(["run", "configs/quickstart.yaml", "--set", "execution.shards=null",
          "--set", "output.path=qs"])
    done = subprocess.run(f"{sys.executable} -m rayjac show qs | head -1", shell=True,
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith("result") and "Broken pipe" not in done.stderr, done.stderr


def test_a_sharded_call_prints_no_ray_or_fork_chatter(tmp_path):
    code = ("import jax.numpy as jnp, rayjac\n"
            "print(rayjac.jacfwd(jnp.sin, shards=2)(jnp.ones(3)).shape)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAYJAC_VERBOSE", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "(3, 3)", done.stderr
    for chatter in ("Started a local Ray instance", "Token authentication is enabled",
                    "os.fork() was called"):
        assert chatter not in done.stderr
