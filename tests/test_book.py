"""The book builds (smoke profile) and contains every chapter with its outputs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_with_math_outputs_and_colab(tmp_path):
    out = ROOT / "_build" / "book-test"
    env = {**os.environ, "COURSE_PROFILE": os.environ.get("COURSE_PROFILE", "smoke")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "book" / "build.py"), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = out / "_build" / "html"
    page = (html / "chapters" / "00_introduction" / "00_introduction.html").read_text()
    assert "Results card" in page and "chapter wall time" in page  # executed outputs
    assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', page)  # figures rendered
    assert "colab.research.google.com" in page
    assert "mathjax" in page.lower()
    mathjax = list(html.rglob("*mathjax*/**/tex-chtml*.js")) or list(html.rglob("tex-chtml*.js"))
    assert mathjax, "MathJax must be served with the book (offline)"
    assert "hyvarinen2005" in page or "Hyvärinen" in page  # the bibliography resolved
