"""Config validation, YAML traps, ``--set`` overrides and sweep expansion (rayjac.runs._config)."""

import pytest

from rayjac.runs import expand_sweep
from rayjac.runs._config import (Config, ConfigError, apply_overrides, dump_config, load_config,
                                 parse_config, parse_yaml)

BASE = {"problem": "jobs.lorenz96:make"}


def problems_of(raw):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_defaults():
    cfg = parse_config(BASE)
    assert cfg.name == "lorenz96"
    assert cfg.output.path == "results/lorenz96"
    assert cfg.output.format == "arrow" and cfg.output.overwrite is False
    assert cfg.execution.shards is None and cfg.execution.chunk_size is None
    assert cfg.execution.num_cpus == 1.0 and cfg.execution.num_gpus == 0.0
    assert cfg.jacfwd.grad_vars is None and cfg.jacfwd.argnums is None
    assert cfg.params == {} and cfg.sweep is None


def test_name_sets_default_output_path_and_null_sections_are_defaults():
    cfg = parse_config({**BASE, "name": "my.run-1", "jacfwd": None, "params": None,
                        "output": {"overwrite": True}})
    assert cfg.output.path == "results/my.run-1" and cfg.output.overwrite
    assert cfg.jacfwd.has_aux is False and cfg.params == {}


def test_config_is_frozen():
    cfg = parse_config(BASE)
    with pytest.raises(Exception, match="frozen"):
        cfg.name = "other"
    with pytest.raises(Exception, match="frozen"):
        cfg.execution.shards = 3


@pytest.mark.parametrize("raw, path, words", [
    ({"foo": 1}, "foo", "valid keys: name, problem, params, jacfwd, execution, output, analysis, sweep"),
    ({"execution": {"shard": 2}}, "execution.shard",
     "valid keys: shards, chunk_size, num_cpus, num_gpus, address, parallel_runs, batch_size"),
    ({"jacfwd": {"grad_var": "x"}}, "jacfwd.grad_var",
     "valid keys: grad_vars, argnums, has_aux, return_value, holomorphic, sparsity"),
    ({"output": {"fmt": "arrow"}}, "output.fmt", "valid keys: path, format, overwrite"),
])
def test_unknown_keys_name_the_path_and_the_valid_keys(raw, path, words):
    (problem,) = problems_of({**BASE, **raw})
    assert problem.startswith(f"{path}: unknown key")
    assert words in problem


@pytest.mark.parametrize("raw, path, words", [
    ({"execution": {"shards": 0}}, "execution.shards", "a positive integer or null, got 0"),
    ({"execution": {"shards": "4"}}, "execution.shards", "got '4' (str)"),
    ({"execution": {"shards": 2.5}}, "execution.shards", "got 2.5 (float)"),
    ({"execution": {"chunk_size": True}}, "execution.chunk_size", "got True (bool)"),
    ({"execution": {"num_gpus": -1}}, "execution.num_gpus", "a non-negative number"),
    ({"execution": {"address": 5}}, "execution.address", "null, 'auto' or 'ray://host:port'"),
    ({"execution": 3}, "execution", "expected a mapping, got 3 (int)"),
    ({"jacfwd": {"grad_vars": ["a", 3]}}, "jacfwd.grad_vars", "a list of names"),
    ({"jacfwd": {"argnums": -1}}, "jacfwd.argnums", "a non-negative int"),
    ({"jacfwd": {"argnums": [0, "1"]}}, "jacfwd.argnums", "a list of them"),
    ({"jacfwd": {"has_aux": "yes"}}, "jacfwd.has_aux", "expected true or false"),
    ({"output": {"format": "csv"}}, "output.format", "expected 'arrow' or 'parquet'"),
    ({"output": {"path": 3}}, "output.path", "a folder path or URI"),
    ({"params": [1, 2]}, "params", "a mapping of factory keyword arguments"),
    ({"sweep": {"params.n": 40}}, "sweep.params.n", "non-empty lists"),
])
def test_wrong_types_name_the_path_expected_and_received(raw, path, words):
    (problem,) = problems_of({**BASE, **raw})
    assert problem.startswith(f"{path}: expected")
    assert words in problem


def test_missing_problem():
    (problem,) = problems_of({"name": "x"})
    assert problem.startswith("problem: required key is missing")
    assert "'module:function'" in problem


@pytest.mark.parametrize("ref", ["jobs/lorenz96.py", "jobs.lorenz96", "jobs.lorenz96:",
                                 ":make", "jobs..x:make", "jobs.lorenz96:make:x", "1jobs:make"])
def test_bad_module_function(ref):
    (problem,) = problems_of({"problem": ref, "name": "x"})
    assert problem.startswith("problem: expected 'module:function'")
    assert repr(ref) in problem


def test_a_bad_problem_without_a_name_reports_only_the_problem():
    assert [p.split(":")[0] for p in problems_of({"problem": "jobs/x.py"})] == ["problem"]
    assert [p.split(":")[0] for p in problems_of({"params": {}})] == ["problem"]


@pytest.mark.parametrize("name", ["a/b", "..", "../up", "a..b", ".hidden", "a b", "a\\b", "",
                                  "é"])
def test_bad_names(name):
    (problem,) = problems_of({**BASE, "name": name})
    assert problem.startswith(f"name: {name!r} is not a valid run name")
    assert "no path separators" in problem


@pytest.mark.parametrize("name", ["run", "Run_2", "lorenz96-n40", "v1.2", "0"])
def test_good_names(name):
    assert parse_config({**BASE, "name": name}).name == name


def test_all_problems_are_reported_at_once():
    problems = problems_of({"name": "a/b", "execution": {"shard": 1, "chunk_size": 0},
                            "output": {"format": "csv"}, "extra": True})
    paths = [p.split(":")[0] for p in problems]
    assert paths == ["name", "problem", "execution.chunk_size", "execution.shard",
                     "output.format", "extra"]
    with pytest.raises(ConfigError, match=r"invalid config \(6 problems\)"):
        parse_config({"name": "a/b", "execution": {"shard": 1, "chunk_size": 0},
                      "output": {"format": "csv"}, "extra": True})


def test_not_a_mapping():
    (problem,) = problems_of(["problem", "x:y"])
    assert "must be a mapping with keys name, problem" in problem


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------- YAML 1.1 traps

@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1.0e3", 1000.0), ("-2E+5", -200000.0), (".5e1", 5.0), ("1.5", 1.5),
    ("'1e-3'", "1e-3"), ("no", False), ("yes", True), ("~", None), ("1_000", 1000),
])
def test_yaml_numbers_and_booleans(text, value):
    assert parse_yaml(f"x: {text}") == {"x": value}


def test_exponent_floats_validate_as_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("problem: jobs.lorenz96:make\nparams: {lr: 1e-3}\n"
                    "execution: {num_gpus: 5e-1}\n")
    cfg = load_config(path)
    assert cfg.params["lr"] == 0.001 and cfg.execution.num_gpus == 0.5


def test_yaml_norway_problem_gives_a_type_error_not_a_silent_bool(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("problem: jobs.lorenz96:make\nname: no\n")
    with pytest.raises(ConfigError, match=r"name: expected a run name .*got False \(bool\)"):
        load_config(path)


def test_duplicate_keys_are_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("problem: jobs.lorenz96:make\nparams: {n: 4}\nparams: {n: 8}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3, column 1: duplicate key "
                                          r"'params'"):
        load_config(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("problem: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c.yaml \(1 problem\):\n  - invalid YAML at line"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read the config file: No such file"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_objects_are_refused():
    with pytest.raises(Exception, match="could not determine a constructor"):
        parse_yaml("x: !!python/object/apply:os.system ['true']")


# ----------------------------------------------------------------------------- overrides

def test_overrides_parse_values_as_yaml():
    raw = apply_overrides(BASE, ["params.n=80", "params.sizes=[4, 8]", "execution.shards=null",
                                 "jacfwd.grad_vars=state", "output.overwrite=true",
                                 "params.lr=1e-3", "sweep.params.n=[1, 2]"])
    assert raw["params"] == {"n": 80, "sizes": [4, 8], "lr": 0.001}
    assert raw["execution"] == {"shards": None}
    assert raw["jacfwd"] == {"grad_vars": "state"} and raw["output"] == {"overwrite": True}
    assert raw["sweep"] == {"params.n": [1, 2]}
    assert BASE == {"problem": "jobs.lorenz96:make"}  # the input is not modified


def test_override_replaces_existing_values_and_nested_params():
    raw = {**BASE, "params": {"opts": {"a": 1}}, "execution": {"shards": 4}}
    out = apply_overrides(raw, ["params.opts.b=2", "execution.shards=2"])
    assert out["params"] == {"opts": {"a": 1, "b": 2}} and out["execution"] == {"shards": 2}
    assert raw["params"] == {"opts": {"a": 1}}


def test_override_errors_are_all_reported():
    with pytest.raises(ConfigError) as info:
        apply_overrides({**BASE, "params": {"n": 4}},
                        ["execution.shard=3", "nokey", "foo.bar=1", "params.n.x=1",
                         "name.x=1", "output.path.x=1", "params.m=[1"])
    problems = info.value.problems
    assert problems[0].startswith("--set execution.shard=3: unknown key 'execution.shard'; "
                                  "valid keys of execution: shards, chunk_size")
    assert problems[1] == "--set nokey: expected KEY=VALUE"
    assert problems[2].startswith("--set foo.bar=1: unknown key 'foo'; valid keys: name,")
    assert problems[3] == "--set params.n.x=1: params.n is 4 (int), not a mapping"
    assert problems[4] == "--set name.x=1: 'name' has no sub-keys"
    assert "unknown key 'output.path.x'" in problems[5]
    assert problems[6].startswith("--set params.m=[1: the value is not valid YAML")


def test_load_config_applies_overrides_then_validates(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("problem: jobs.lorenz96:make\nexecution: {shards: 4}\n")
    cfg = load_config(path, ["execution.shards=2", "name=short"])
    assert cfg.execution.shards == 2 and cfg.output.path == "results/short"
    with pytest.raises(ConfigError, match="execution.shards: expected a positive integer"):
        load_config(path, ["execution.shards=0"])


# -------------------------------------------------------------------------------- sweeps

def test_sweep_expands_the_cartesian_product_in_order():
    cfg = parse_config({**BASE, "params": {"n": 4, "forcing": 8.0},
                        "sweep": {"params.n": [8, 16], "execution.chunk_size": [None, 4]}})
    runs = expand_sweep(cfg)
    assert [r.point for r in runs] == [
        {"params.n": 8, "execution.chunk_size": None}, {"params.n": 8, "execution.chunk_size": 4},
        {"params.n": 16, "execution.chunk_size": None},
        {"params.n": 16, "execution.chunk_size": 4}]
    assert [r.run_id for r in runs] == ["n-8_chunk_size-null", "n-8_chunk_size-4",
                                        "n-16_chunk_size-null", "n-16_chunk_size-4"]
    last = runs[-1].config
    assert isinstance(last, Config) and last.sweep is None
    assert last.params == {"n": 16, "forcing": 8.0} and last.execution.chunk_size == 4
    assert last.output.path == "results/lorenz96/n-16_chunk_size-4"
    assert last.name == "lorenz96"
    assert cfg.params == {"n": 4, "forcing": 8.0}  # expansion does not touch the sweep config


def test_sweep_expansion_is_deterministic_and_ids_are_safe():
    cfg = parse_config({**BASE, "sweep": {"params.label": ["a/b", "../x", "a b", ".."],
                                          "params.lr": [1e-3, 0.5]}})
    ids = [r.run_id for r in expand_sweep(cfg)]
    assert ids == [r.run_id for r in expand_sweep(cfg)]
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        assert "/" not in run_id and ".." not in run_id and not run_id.startswith(".")
        parse_config({**BASE, "name": run_id})  # a valid name, hence a valid folder name


def test_sweep_ids_disambiguate_clashes_and_long_values():
    cfg = parse_config({**BASE, "sweep": {"params.a.n": [1], "params.b.n": [1, 2],
                                          "params.label": ["x/y", "x_y"]}})
    ids = [r.run_id for r in expand_sweep(cfg)]
    assert ids[0].startswith("params.a.n-1_params.b.n-1_label-x_y-")  # hash appended
    assert len(set(ids)) == 4
    long = parse_config({**BASE, "sweep": {"params.sizes": [list(range(60))]}})
    (run,) = expand_sweep(long)
    assert len(run.run_id) <= 100


def test_sweep_of_a_sweep_path_and_no_sweep():
    cfg = parse_config({**BASE, "output": {"path": "s3://bucket/sweeps/"},
                        "sweep": {"jacfwd.return_value": [True]}})
    (run,) = expand_sweep(cfg)
    assert run.config.output.path == "s3://bucket/sweeps/return_value-true"
    plain = parse_config(BASE)
    assert expand_sweep(plain) == [("lorenz96", {}, plain)]


def test_sweep_errors_name_the_key_and_the_bad_value():
    problems = problems_of({**BASE, "sweep": {
        "execution.shards": [1, 0, "x"], "output.path": ["a"], "execution.shard": [1],
        "name": ["x"], "params.n": [], "jacfwd.argnums": [0, [0, 1], -2]}})
    assert problems == [
        "sweep.execution.shards[1]: expected a positive integer or null, got 0 (int)",
        "sweep.execution.shards[2]: expected a positive integer or null, got 'x' (str)",
        "sweep.output.path: cannot sweep 'output'; sweep keys start with one of: problem, "
        "params, jacfwd, execution",
        "sweep.execution.shard: unknown key 'execution.shard'; valid keys of execution: "
        "shards, chunk_size, num_cpus, num_gpus, address, parallel_runs, batch_size",
        "sweep.name: cannot sweep 'name'; sweep keys start with one of: problem, params, "
        "jacfwd, execution",
        "sweep.params.n: expected a non-empty list of values",
        "sweep.jacfwd.argnums[2]: expected a non-negative int, a list of them, or null, "
        "got -2 (int)"]


def test_sweep_over_problem_and_whole_sections():
    cfg = parse_config({**BASE, "sweep": {"problem": ["jobs.mlp:make", "jobs.lorenz96:make"],
                                          "execution": [{"shards": 2}, {"chunk_size": 8}]}})
    runs = expand_sweep(cfg)
    assert runs[0].config.problem == "jobs.mlp:make"
    assert runs[1].config.execution.chunk_size == 8 and runs[1].config.execution.shards is None
    assert runs[0].run_id == "problem-jobs.mlp_make_execution-_shards_2_"


def test_only_clashing_sweep_ids_get_a_digest():
    before = parse_config({**BASE, "sweep": {"params.label": ["a", "x/y"]}})
    after = parse_config({**BASE, "sweep": {"params.label": ["a", "x/y", "x_y"]}})
    old, new = ([r.run_id for r in expand_sweep(c)] for c in (before, after))
    assert old == ["label-a", "label-x_y"]
    assert new[0] == "label-a" and new[1].startswith("label-x_y-") and len(set(new)) == 3


def test_dumped_configs_read_back_to_the_same_values():
    raw = {"name": "1e3", "params": {"lr": "1e-3", "rate": 1e-3, "big": 1e20, "n": 4, "off": "no"}}
    assert parse_yaml(dump_config(raw)) == raw


def test_names_with_a_trailing_newline_and_distinct_int_and_str_keys():
    with pytest.raises(ConfigError, match="name"):
        parse_config({**BASE, "name": "abc\n"})
    with pytest.raises(ConfigError, match="problem"):
        parse_config({**BASE, "problem": "jobs.lorenz96:make\n"})
    assert parse_yaml("1: a\n'1': b\n") == {1: "a", "1": "b"}
    with pytest.raises(Exception, match="duplicate key"):
        parse_yaml("a: 1\na: 2\n")


def test_sweep_key_problems_are_reported_with_the_others():
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "execution": {"shard": 2},
                      "sweep": {"bogus.n": [1], "params.n": []}})
    text = str(err.value)
    assert "3 problems" in text and "execution.shard: unknown key" in text
    assert "sweep.bogus.n: cannot sweep 'bogus'" in text
    assert "sweep.params.n: expected a non-empty list" in text
