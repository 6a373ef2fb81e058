"""YAML job configs: strict, frozen models, validation of sweeps, ``--set`` overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveInt

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")  # \Z: no trailing newline, unlike $
_PROBLEM = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*\Z")
_SWEEPABLE = ("problem", "params", "jacfwd", "execution")
_SECTIONS = ("params", "jacfwd", "execution", "output", "analysis")
# YAML 1.1 reads 1e-3 and 1.0e3 as strings; YAML 1.2 (and JSON) read them as floats.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def _yaml12_floats(cls: type) -> type:
    """``cls`` (a PyYAML loader or dumper) with YAML 1.2 exponent floats, in its own table."""
    cls.yaml_implicit_resolvers = {k: list(v) for k, v in cls.yaml_implicit_resolvers.items()}
    cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
    return cls


@_yaml12_floats
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 exponent floats and an error on duplicate keys."""

    def construct_mapping(self, node, deep=False):
        keys = [(k.tag, k.value) for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        starts = [k.start_mark for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        for index, (key, start) in enumerate(zip(keys, starts)):
            if key in keys[:index]:  # 1 and '1' are different keys
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key[1]!r}", start)
        return super().construct_mapping(node, deep)


@_yaml12_floats
class _Dumper(yaml.SafeDumper):
    """Quotes the strings that ``_Loader`` would read as floats (``'1e-3'``)."""


def dump_config(raw: dict) -> str:
    """YAML text that ``load_config`` reads back to the same values."""
    return yaml.dump(raw, Dumper=_Dumper, sort_keys=False)


class ConfigError(ValueError):
    """A config is invalid; the message lists every problem, one per line.

    Example:
        >>> err = ConfigError(["execution.shards: expected a positive integer or null, got 0"])
        >>> err.problems
        ['execution.shards: expected a positive integer or null, got 0']
    """

    __module__ = "rayjac.runs"  # its public home

    def __init__(self, problems: Sequence[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) > 1 else "")
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {source} ({count}):\n{lines}")


def _check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"{name!r} is not a valid run name: use only letters, digits, '-', '_' "
                         "and '.' (no path separators, no '..', no leading '.')")
    return name


def _check_problem(ref: str) -> str:
    if not _PROBLEM.match(ref):
        raise ValueError(f"expected 'module:function' (e.g. 'jobs.lorenz96:make'), got {ref!r}")
    return ref


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class JacfwdConfig(_Section):
    """The options of ``rayjac.jacfwd`` (``grad_vars`` names keys of ``Problem.variables``)."""

    grad_vars: str | list[str] | None = Field(None, description="a variable name, a list of "
                                              "names, or null")
    argnums: NonNegativeInt | list[NonNegativeInt] | None = Field(
        None, description="a non-negative int, a list of them, or null")
    has_aux: bool = Field(False, description="true or false")
    return_value: bool = Field(False, description="true or false")
    holomorphic: bool = Field(False, description="true or false")
    sparsity: str | None = Field(None, description="null (dense), 'auto' (detect the pattern) "
                                 "or the folder of an earlier sparse result (reuse its pattern)")

    @pydantic.field_validator("sparsity")
    @classmethod
    def _sparsity_ok(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.strip().lower() == "auto"
                                  and value != "auto"):
            hint = " (did you mean 'auto'?)" if value.strip() else ""
            raise ValueError(f"expected null, 'auto' or the folder of an earlier sparse result, "
                             f"got {value!r}{hint}")
        return value


class ExecutionConfig(_Section):
    """Where the Jacobian is computed: in-process (``shards: null``) or on Ray workers."""

    shards: PositiveInt | None = Field(None, description="a positive integer or null")
    chunk_size: PositiveInt | None = Field(None, description="a positive integer or null")
    num_cpus: NonNegativeFloat = Field(1.0, description="a non-negative number")
    num_gpus: NonNegativeFloat = Field(0.0, description="a non-negative number")
    address: str | None = Field(None, description="null, 'auto' or 'ray://host:port'")
    parallel_runs: PositiveInt | None = Field(
        None, description="a positive integer (sweep runs at once) or null (as many as the "
        "cluster fits)")
    batch_size: PositiveInt | None = Field(
        None, description="a positive integer (map runs: points per kernel call) or null (all "
        "points of a shard at once)")


class OutputConfig(_Section):
    """Where the result goes: a folder (or ``pyarrow.fs`` URI), its format, overwrite policy."""

    path: str = Field(description="a folder path or URI (default: results/<name>)")
    format: Literal["arrow", "parquet"] = Field("arrow", description="'arrow' or 'parquet'")
    overwrite: bool = Field(False, description="true or false")


class AnalysisConfig(_Section):
    """What to keep of each point's Jacobian: its spectrum, and whether the Jacobian too."""

    spectrum: Literal["all"] | PositiveInt | None = Field(
        None, description="null (no spectrum), 'all' (every eigenvalue) or a positive integer "
        "k (the k leading ones)")
    system: Literal["continuous", "discrete"] = Field(
        "continuous", description="'continuous' (stable: every Re < 0) or 'discrete' (stable: "
        "every |.| < 1)")
    keep_jacobian: bool = Field(True, description="true or false")


class Config(_Section):
    """One job: the problem factory, its parameters, jacfwd options, execution and output.

    Build it with :func:`load_config` (a YAML file) or :func:`parse_config` (a dict).

    Example:
        >>> cfg = parse_config({"problem": "jobs.lorenz96:make", "params": {"n": 8}})
        >>> cfg.name, cfg.output.path, cfg.execution.shards
        ('lorenz96', 'results/lorenz96', None)
    """

    name: str = Field(description="a run name (letters, digits, '-', '_', '.')")
    problem: str = Field(description="'module:function', e.g. 'jobs.lorenz96:make'")
    params: dict[str, Any] = Field(default_factory=dict, description="a mapping of factory "
                                   "keyword arguments")
    jacfwd: JacfwdConfig = Field(default_factory=JacfwdConfig, description="a mapping")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig, description="a mapping")
    output: OutputConfig = Field(description="a mapping")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig, description="a mapping")
    sweep: dict[str, list[Any]] | None = Field(None, description="a mapping of dotted keys to "
                                               "non-empty lists of values, or null")

    _name_ok = pydantic.field_validator("name")(_check_name)
    _problem_ok = pydantic.field_validator("problem")(_check_problem)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        problem = data.get("problem")
        if data.get("name") is None:  # a bad or missing problem is reported on its own
            valid = isinstance(problem, str) and _PROBLEM.match(problem)
            data["name"] = problem.split(":")[0].rsplit(".", 1)[-1] if valid else "job"
        output = data.get("output", {})
        if isinstance(output, dict) and output.get("path") is None and "name" in data:
            data["output"] = {**output, "path": f"results/{data['name']}"}
        return data


def parse_yaml(text: str) -> Any:
    """Parse YAML safely (YAML 1.1 as PyYAML, except ``1e-3`` is a float; duplicate keys fail).

    Example:
        >>> parse_yaml("lr: 1e-3\\nn: 4")
        {'lr': 0.001, 'n': 4}
    """
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it.

    Args:
        path: the YAML file.
        overrides: ``"dotted.key=value"`` strings; each value is parsed as YAML.

    Returns:
        The validated, frozen :class:`Config`.

    Raises:
        ConfigError: the file is missing or invalid; the message lists every problem.

    Example:
        >>> cfg = load_config("configs/quickstart.yaml", ["params.n=12"])
        >>> cfg.params["n"]
        12
    """
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError([f"cannot read the config file: {err.strerror}"], str(path)) from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_problem(err)], str(path)) from None
    return parse_config(apply_overrides(raw, overrides, str(path)), str(path))


def parse_config(raw: Any, source: str = "config") -> Config:
    """Validate a config mapping (as loaded from YAML); every problem is reported at once.

    Example:
        >>> parse_config({"problem": "jobs.mlp:make", "jacfwd": {"grad_vars": ["w0"]}}).name
        'mlp'
    """
    if not isinstance(raw, dict):
        raise ConfigError([f"the config must be a mapping with keys {_keys(Config)}, "
                           f"got {_show(raw)}"], source)
    try:
        config = Config.model_validate(raw)
    except pydantic.ValidationError as err:  # with the sweep's key problems: all at once
        sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
        keys = [_sweep_key_problem(k, v) for k, v in sweep.items()]
        problems = _describe(err)
        raise ConfigError(problems + [p for p in keys if p and p not in problems], source) from None
    problems = _sweep_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def apply_overrides(raw: Any, overrides: Sequence[str], source: str = "config") -> Any:
    """Return a copy of ``raw`` with each ``"dotted.key=value"`` applied (value parsed as YAML).

    Example:
        >>> apply_overrides({"params": {"n": 4}}, ["params.n=8", "execution.shards=2"])
        {'params': {'n': 8}, 'execution': {'shards': 2}}
    """
    data = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        problem = (_check_key(key.strip(), tuple(Config.model_fields),
                              "unknown key {!r}; valid keys: {}") if sep
                   else "expected KEY=VALUE")
        if problem is None and not isinstance(data, dict):
            problem = "the config is not a mapping"
        if problem is None:
            try:
                problem = set_path(data, split_key(key.strip()), parse_yaml(text))
            except yaml.YAMLError as err:
                problem = f"the value is not valid YAML ({_yaml_problem(err)})"
        if problem:
            problems.append(f"--set {item}: {problem}")
    if problems:
        raise ConfigError(problems, source)
    return data


def _describe(err: pydantic.ValidationError) -> list[str]:
    problems = {}
    for item in err.errors():
        loc = [str(part) for part in item["loc"]]
        path, model, field = _walk(loc)
        if item["type"] == "extra_forbidden":
            path, message = loc, f"unknown key; valid keys: {_keys(model)}"
        elif item["type"] == "missing":
            message = f"required key is missing: expected {field.description}"
        elif item["type"] == "value_error":
            message = str(item["ctx"]["error"])
        else:
            if path == ["sweep"] and len(loc) > 1:
                path = loc[:2]
            message = f"expected {field.description}, got {_show(item['input'])}"
        problems.setdefault(".".join(path), message)
    return [f"{path}: {message}" for path, message in problems.items()]


def _walk(loc: list[str]) -> tuple[list[str], type[BaseModel] | None, Any]:
    """Follow an error location through the models: (known key path, innermost model, field)."""
    model, field, path = Config, None, []
    for part in loc:
        if model is None or part not in model.model_fields:
            break
        path.append(part)
        field = model.model_fields[part]
        model = _submodel(field)
    return path, model, field


def _submodel(field: Any) -> type[BaseModel] | None:
    sub = field.annotation
    return sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None


def _sweep_problems(config: Config) -> list[str]:
    problems = []
    base = config.model_dump()
    for key, values in (config.sweep or {}).items():
        problem = _sweep_key_problem(key, values)
        if problem:
            problems.append(problem)
            continue
        for index, value in enumerate(values):
            raw = copy.deepcopy({**base, "sweep": None})
            set_path(raw, split_key(key), value)
            try:
                Config.model_validate(raw)
            except pydantic.ValidationError as err:
                problems += [f"sweep.{key}[{index}]: {p.split(': ', 1)[1]}" for p in _describe(err)]
    return problems


def _sweep_key_problem(key: str, values: Any) -> str | None:
    problem = _check_key(str(key), _SWEEPABLE, "cannot sweep {!r}; sweep keys start with one "
                                               "of: {}")
    if problem or not values:
        return f"sweep.{key}: {problem or 'expected a non-empty list of values'}"
    return None


def _check_key(key: str, roots: tuple[str, ...], message: str) -> str | None:
    parts = key.split(".")
    if parts[0] not in roots:
        return message.format(parts[0], ", ".join(roots))
    return None if parts[0] == "sweep" else _check_path(parts)


def _check_path(parts: list[str]) -> str | None:
    model = _submodel(Config.model_fields[parts[0]])
    if model is not None:
        if len(parts) > 2 or (len(parts) == 2 and parts[1] not in model.model_fields):
            return f"unknown key {'.'.join(parts)!r}; valid keys of {parts[0]}: {_keys(model)}"
    elif len(parts) > 1 and parts[0] != "params":
        return f"{parts[0]!r} has no sub-keys"
    return None


def split_key(key: str) -> list[str]:
    """``sweep.params.n`` -> ['sweep', 'params.n']: sweep keys are dotted themselves."""
    head, _, rest = key.partition(".")
    return [head, rest] if head == "sweep" and rest else key.split(".")


def set_path(data: dict, parts: list[str], value: Any) -> str | None:
    """Sets ``data[parts[0]][parts[1]]...`` (creating sections); a problem message, or None."""
    for depth, part in enumerate(parts[:-1]):
        if data.get(part) is None:
            data[part] = {}
        if not isinstance(data[part], dict):
            return f"{'.'.join(parts[:depth + 1])} is {_show(data[part])}, not a mapping"
        data = data[part]
    data[parts[-1]] = value
    return None


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"invalid YAML{where}: {getattr(err, 'problem', None) or err}"


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"
