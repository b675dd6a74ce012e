"""The built site renders its maths offline: MathJax comes from a package, not a CDN.

One strict build (a few seconds) into a temporary folder; then every page is
read as HTML. A page with maths (an ``arithmatex`` element, as
``pymdownx.arithmatex`` writes in generic mode) must load the MathJax
configuration and then MathJax itself, both as files of the site; no page loads
a script or a style sheet from the network.
"""

import hashlib
import html.parser
import importlib.resources
import pathlib
import posixpath
import re
import subprocess
import sys

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed")

ROOT = pathlib.Path(__file__).resolve().parent.parent
MATHJAX = "assets/mathjax/tex-chtml.js"
CONFIG = "javascripts/mathjax-config.js"


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.styles, self.math = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        if tag == "link" and "stylesheet" in (attrs.get("rel") or ""):
            self.styles.append(attrs["href"])
        if "arithmatex" in (attrs.get("class") or "").split():
            self.math += 1


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def pages(site):
    parsed = {}
    for path in sorted(site.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        parsed[path.relative_to(site).as_posix()] = page
    return parsed


def _resolve(page, url):
    """The site-relative path a relative URL on `page` points to."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(page), url.split("?")[0]))


def test_mathjax_is_the_packaged_copy(site):
    package = pathlib.Path(str(importlib.resources.files("mathjax"))) / "static" / "mathjax"
    shipped = (package / "es5" / "tex-chtml.js").read_bytes()
    built = (site / MATHJAX).read_bytes()
    assert hashlib.sha256(built).digest() == hashlib.sha256(shipped).digest()
    assert (site / "assets" / "mathjax" / "LICENSE").is_file()


def test_mathjax_fonts_are_in_the_site(site):
    # The CommonHTML output asks for its web fonts by name, relative to its own URL.
    fonts = set(re.findall(r"MathJax_[A-Za-z0-9-]+\.woff", (site / MATHJAX).read_text()))
    assert len(fonts) > 10
    folder = site / "assets" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    missing = sorted(f for f in fonts if not (folder / f).is_file())
    assert not missing, missing


def test_config_typesets_arithmatex_elements(site):
    config = (site / CONFIG).read_text()
    assert re.search(r'processHtmlClass:\s*"arithmatex', config)
    assert '["\\\\(", "\\\\)"]' in config and '["\\\\[", "\\\\]"]' in config


def test_maths_pages_exist(pages):
    # Guards the next test against passing on a site without maths.
    with_math = {name: page.math for name, page in pages.items() if page.math}
    assert with_math.get("api/index.html", 0) >= 100
    methods = [n for n in with_math if n.startswith(("methods/", "rules/"))]
    assert len(methods) >= 5, with_math


def test_every_page_with_maths_loads_local_mathjax(site, pages):
    for name, page in pages.items():
        if not page.math:
            continue
        local = [_resolve(name, src) for src in page.scripts]
        assert CONFIG in local and MATHJAX in local, (name, page.scripts)
        assert local.index(CONFIG) < local.index(MATHJAX), name
        for path in local:
            assert (site / path).is_file(), (name, path)


def test_no_page_loads_scripts_or_styles_from_the_network(pages):
    for name, page in pages.items():
        remote = [u for u in page.scripts + page.styles if re.match(r"(https?:)?//", u)]
        assert not remote, (name, remote)


def test_no_sphinx_roles_on_any_page(site):
    # Cross-references are mkdocstrings links; a Sphinx role would show as raw text.
    for path in sorted(site.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        roles = re.findall(r":(?:func|class|meth|attr|mod|data|obj|exc):`", text)
        assert not roles, (path.relative_to(site).as_posix(), roles[:3])
