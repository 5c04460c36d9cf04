"""Fixtures shared by the book tests: the book is built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK_OUT = ROOT / "_build" / "book-test"


@pytest.fixture(scope="session")
def book_html() -> Path:
    """The HTML folder of the book built by ``book/build.py`` in the ``smoke`` profile
    (unless ``COURSE_PROFILE`` says otherwise), reusing the chapters the notebook tests
    executed. Every ``book`` test reads this one build.

    ``COURSE_BOOK_HTML`` names an HTML folder built before, to check it without building
    again (while working on the book's look or on these tests)."""
    prebuilt = os.environ.get("COURSE_BOOK_HTML")
    if prebuilt:
        html = Path(prebuilt)
        assert (html / "index.html").is_file(), f"COURSE_BOOK_HTML={prebuilt}: no built book"
        return html
    env = {**os.environ, "COURSE_PROFILE": os.environ.get("COURSE_PROFILE", "smoke")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "book" / "build.py"), "--out", str(BOOK_OUT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return BOOK_OUT / "_build" / "html"
