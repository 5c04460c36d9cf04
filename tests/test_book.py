"""The book builds (smoke profile) and contains every chapter with its outputs."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    (ROOT / c).with_suffix(".py")
    for c in yaml.safe_load((ROOT / "book.yml").read_text())["chapters"]
    if (ROOT / c).with_suffix(".py").exists()
]


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_with_math_outputs_and_colab(book_html: Path):
    html = book_html
    page = (html / "chapters" / "00_introduction" / "00_introduction.html").read_text()
    assert "Results card" in page and "chapter wall time" in page  # executed outputs
    assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', page)  # figures rendered
    assert "colab.research.google.com" in page
    assert "mathjax" in page.lower()
    mathjax = list(html.rglob("*mathjax*/**/tex-chtml*.js")) or list(html.rglob("tex-chtml*.js"))
    assert mathjax, "MathJax must be served with the book (offline)"
    assert "hyvarinen2005" in page or "Hyvärinen" in page  # the bibliography resolved


def _build_module():
    import importlib.util
    import sys

    module = sys.modules.get("course_book_build")  # the root conftest may have loaded it
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "course_book_build", ROOT / "book" / "build.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["course_book_build"] = module
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.stem)
def test_the_book_drops_colab_plumbing_and_cdn_assets_only(chapter):
    """for_the_book: the Colab set-up cell and its note are removed from the page, the
    results card's code is collapsed, widget state and CDN icon links are dropped;
    every other cell is untouched."""
    import copy

    import jupytext

    nb = jupytext.read(chapter)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[1].outputs = [
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {
                "text/html": '<link rel="stylesheet"\n'
                'href="https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/'
                'font-awesome.min.css">\n<div class="animation"></div>',
                "application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                "text/plain": "100% 30/30",
            },
        }
    ]
    before = copy.deepcopy(nb)
    book = _build_module().for_the_book(nb)
    tags = [c.metadata.get("tags", []) for c in book.cells]
    removed = [i for i, t in enumerate(tags) if "remove-cell" in t]
    setup = next(i for i, c in enumerate(book.cells) if '"google.colab" in sys.modules' in c.source)
    assert removed == [setup - 1, setup] and "Colab" in book.cells[setup - 1].source
    card = next(i for i, c in enumerate(book.cells) if "## Results card" in c.source)
    assert "hide-input" in tags[card + 1]
    assert "widgets" not in book.metadata
    assert code[1].outputs[0]["data"] == {
        "text/html": '<div class="animation"></div>',
        "text/plain": "100% 30/30",
    }
    changed = {setup - 1, setup, card + 1}
    for i, (a, b) in enumerate(zip(before.cells, book.cells, strict=True)):
        if i not in changed and b is not code[1]:
            assert a == b, f"cell {i} changed"
