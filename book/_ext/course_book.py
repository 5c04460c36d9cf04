"""Sphinx extension for the course's book: what a reader sees, fixed where Jupyter Book 1
and its theme leave it wrong. ``book/build.py`` copies this folder next to the staged
sources and names it in ``_config.yml`` (``sphinx.local_extensions``).

* MathJax on every page: chapter titles hold math (chapter 1's ``$\\nabla_x \\log p$``),
  and the navigation shows them on pages without math of their own, where Sphinx would
  leave MathJax out and the reader would see raw TeX.
* Each inline script once: ``sphinx_thebe`` registers its configuration script twice
  under Sphinx 7, and the second copy's ``const`` declarations throw a SyntaxError in
  the browser console of every page.
* ``course.css``: wide display equations and code scroll inside their own box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config

STATIC = Path(__file__).resolve().parent / "static"  # course.css


def add_static(app: Sphinx, config: Config) -> None:
    config.html_static_path.append(str(STATIC))


def scripts_once(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    """Drop repeated scripts from the page: same file (an inline script's file is ``None``
    or ``""``, depending on who added it) and same attributes, its body included."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    kept = []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        key = (
            str(getattr(script, "filename", script) or ""),
            tuple(sorted((k, str(v)) for k, v in attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app: Sphinx) -> dict[str, Any]:
    app.set_html_assets_policy("always")  # MathJax on every page (see the module docstring)
    app.connect("config-inited", add_static)
    app.connect("html-page-context", scripts_once, priority=900)
    app.add_css_file("course.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
