"""The public surface: names, docstrings and their examples, the README's first example."""

import doctest
import re
from pathlib import Path

import pytest

import rayjac

PUBLIC = [n for n in dir(rayjac) if not n.startswith("_")]


def test_public_names_are_the_documented_ones():
    assert {"jacfwd", "Variable", "Problem", "load", "JacFwd"} <= set(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring_and_its_example_runs(name):
    obj = getattr(rayjac, name)
    if isinstance(obj, str):  # __version__-like constants
        return
    assert obj.__doc__ and obj.__doc__.strip(), f"rayjac.{name} has no docstring"
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(obj, name):
        runner.run(test)
    assert runner.failures == 0


def test_readme_first_example_runs(ray_local):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    dw, dx = namespace["dw"], namespace["dx"]
    assert dw.shape == (2, 2, 2) and dx.shape == (2, 2)
