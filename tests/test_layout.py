"""The core's imports go one way, down the layers of DESIGN.md's architecture.

numerics and validation (the floor) -> base -> rules -> combinators ->
clippers -> recipes, skipping, metrics -> the package namespace. A module may
import only modules of a lower layer (rules built on other rules sit one
half-step up). A new private module must be given a layer here; the test
fails until it is. ``adaclip.tuning`` uses only the public core
(tests/test_tuning_tools.py).
"""

import ast
import pathlib

import pytest

import adaclip

PACKAGE = pathlib.Path(adaclip.__file__).parent

LAYERS = {
    "adaclip._validation": 0,
    "adaclip._numerics": 0,
    "adaclip._base": 1,
    "adaclip._blocks": 1,
    "adaclip._schedule_rules": 2,
    "adaclip._ema_rules": 2,
    "adaclip._window_rules": 2,
    "adaclip._quantile": 2,
    "adaclip._ema_zscore": 2.5,
    "adaclip._rolling_rules": 2.5,
    "adaclip._combinators": 3,
    "adaclip._log_space": 3,
    "adaclip._clippers": 4,
    "adaclip._find": 4.5,
    "adaclip._second_moment": 4.5,  # an element clipper that reuses ClipState
    "adaclip._recipes": 5,
    "adaclip._replay": 5,
    "adaclip._skip": 5,
    "adaclip._metrics": 5.5,
    "adaclip": 6,
    "adaclip.__main__": 7,
}

CORE = sorted(p for p in PACKAGE.glob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    return "adaclip" if path.stem == "__init__" else f"adaclip.{path.stem}"


def _imports(path: pathlib.Path) -> set[str]:
    """The adaclip modules that ``path`` imports, at any depth of its code
    (a function-level import counts as much as a top-level one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "adaclip"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package's own folder
                module = f"adaclip.{node.module}" if node.module else "adaclip"
            else:
                module = node.module or ""
            if module.split(".")[0] != "adaclip":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                # `from adaclip import _base` imports a module; `from
                # adaclip._base import F32_MAX` a name from one.
                is_module = (PACKAGE / f"{alias.name}.py").exists() or (
                    PACKAGE / alias.name
                ).is_dir()
                found.add(sub if module == "adaclip" and is_module else module)
    return found


def test_every_core_module_has_a_layer():
    names = {_module_name(p) for p in CORE}
    assert names == set(LAYERS), (
        f"modules without a layer: {sorted(names - set(LAYERS))}; "
        f"layers of missing modules: {sorted(set(LAYERS) - names)}"
    )


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.stem)
def test_imports_go_down(path):
    name = _module_name(path)
    for target in _imports(path):
        top = ".".join(target.split(".")[:2])
        if top == "adaclip.tuning":
            assert name in {"adaclip", "adaclip.__main__"}, f"{name} imports {target}"
            continue
        assert top in LAYERS, f"{name} imports unknown module {target}"
        assert LAYERS[top] < LAYERS[name], (
            f"{name} (layer {LAYERS[name]}) imports {top} (layer {LAYERS[top]}): "
            "imports must go down"
        )


def test_the_check_sees_imports():
    # The parser finds both spellings, so the test above can fail.
    assert {"adaclip._base", "adaclip._validation"} <= _imports(PACKAGE / "_clippers.py")
    assert "adaclip._find" in _imports(PACKAGE / "_skip.py")
