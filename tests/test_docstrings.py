"""Every public name has a real docstring with a runnable Examples section.

The public names are ``adaclip.__all__`` and the ``__all__`` of every public
subpackage or module of adaclip, at any depth (found with pkgutil, so a new one is checked as
soon as it exists). The doctests of every module, private ones included, run
here too, against whichever ``adaclip`` is imported: the source tree in a
development install, the installed wheel in CI (which runs the suite from a
copy of the repository without ``adaclip/``). They show user code with optax
as it is, so they run with standard dtype promotion.
"""

import doctest
import importlib
import inspect
import pkgutil
import re

import jax
import pytest

import adaclip

ALL_MODULES = [adaclip] + [
    importlib.import_module(info.name)
    for info in pkgutil.walk_packages(adaclip.__path__, "adaclip.")
    if info.name != "adaclip.__main__"
]
MODULES = [m for m in ALL_MODULES if not any(p.startswith("_") for p in m.__name__.split("."))]
NAMES = [(module, name) for module in MODULES for name in getattr(module, "__all__", ()) if name]


def _doc(obj):
    # The object's own docstring, not one inherited from a base class.
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_public_module_has_all_and_docstring(module):
    assert len(_doc(module).split("\n")[0]) >= 20, f"{module.__name__} lacks a docstring"
    assert getattr(module, "__all__", None), f"{module.__name__} lacks __all__"


@pytest.mark.parametrize("module, name", NAMES, ids=[f"{m.__name__}.{n}" for m, n in NAMES])
def test_public_name_has_docstring_with_examples(module, name):
    obj = getattr(module, name)
    qualname = f"{module.__name__}.{name}"
    if inspect.ismodule(obj):
        assert len(_doc(obj).split("\n")[0]) >= 20, f"{qualname} lacks a docstring"
        return
    doc = _doc(obj)
    summary = doc.split("\n")[0]
    assert doc, f"{qualname} has no docstring"
    # A NamedTuple without a docstring gets "Name(field, ...)" from Python.
    assert not re.fullmatch(rf"{re.escape(obj.__name__)}\(.*\)", summary), (
        f"{qualname}: only Python's generated docstring"
    )
    assert len(summary) >= 20, f"{qualname}: summary line too short: {summary!r}"
    examples = re.search(r"^Examples?:\n(.*?)(?=^\S|\Z)", doc, re.M | re.S)
    assert examples, f"{qualname} has no Examples: section"
    assert ">>> " in examples.group(1), f"{qualname}: Examples has no doctest"
    assert not re.search(r":(func|class|meth|attr|mod|data|obj):`", doc), (
        f"{qualname}: Sphinx role instead of a mkdocstrings cross-reference"
    )


@pytest.mark.parametrize("module", ALL_MODULES, ids=[m.__name__ for m in ALL_MODULES])
def test_doctests(module):
    finder = doctest.DocTestFinder(exclude_empty=True)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    tests = [t for t in finder.find(module, module.__name__) if t.examples]
    report = []
    with jax.numpy_dtype_promotion("standard"):
        for test in tests:
            runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
