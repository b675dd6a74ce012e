"""MkDocs hook: serve MathJax from an installed Python package, never from a CDN.

The `docs` extra installs `django-static-mathjax`, a wheel that carries the
MathJax 3 distribution as plain files (its importable package is `mathjax`).
At build time this hook adds the parts of that distribution the site uses to
MkDocs' file collection, under `assets/mathjax/`, so that `mkdocs build` copies
them into the site and `mkdocs serve` serves them. `mkdocs.yml` then loads
`assets/mathjax/tex-chtml.js` on every page, after the small configuration
script `javascripts/mathjax-config.js` that tells MathJax to typeset only the
`arithmatex` spans that `pymdownx.arithmatex` (generic mode) writes.
"""

from __future__ import annotations

import importlib.resources
import pathlib

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

PREFIX = "assets/mathjax"
# What the TeX-to-CommonHTML component needs at view time: the component itself,
# the TeX extensions it may autoload, its web fonts, and the right-click menu
# with its accessibility tools (speech rules included), which load on demand.
PARTS = (
    "tex-chtml.js",
    "input/tex/extensions",
    "output/chtml/fonts/woff-v2",
    "ui",
    "a11y",
    "sre",
)


def mathjax_root() -> pathlib.Path:
    """The `es5` folder of the installed MathJax distribution."""
    try:
        package = importlib.resources.files("mathjax")
    except ModuleNotFoundError as err:
        raise PluginError(
            "MathJax is not installed: `pip install 'adaclip[docs]'` (django-static-mathjax)."
        ) from err
    root = pathlib.Path(str(package)) / "static" / "mathjax" / "es5"
    if not (root / "tex-chtml.js").is_file():
        raise PluginError(f"no MathJax distribution found in {root}")
    return root


def on_files(files: Files, config) -> Files:
    root = mathjax_root()
    licence = root.parent / "LICENSE"
    if licence.is_file():
        files.append(File.generated(config, f"{PREFIX}/LICENSE", abs_src_path=str(licence)))
    for part in PARTS:
        path = root / part
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not paths:
            raise PluginError(f"MathJax distribution lacks {part} ({root})")
        for p in paths:
            uri = f"{PREFIX}/{p.relative_to(root).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(p)))
    return files
