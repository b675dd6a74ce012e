"""The API reference lists every public name; the generated docs table is current."""

import importlib.util
import pathlib
import re

import pytest

import adaclip

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.parametrize("name", adaclip.__all__)
def test_public_name_in_api_reference(name):
    api = (DOCS / "api.md").read_text()
    assert re.search(rf"^::: adaclip\.{name}$", api, re.M), f"docs/api.md lacks ::: adaclip.{name}"


def test_nonfinite_table_is_current():
    spec = importlib.util.spec_from_file_location(
        "nonfinite_table", DOCS / "scripts" / "nonfinite_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (DOCS / "nonfinite.md").read_text()
    assert module.table() in page, "run: python docs/scripts/nonfinite_table.py --write"
