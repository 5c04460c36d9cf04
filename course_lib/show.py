"""Show the source of a ``course_lib`` function in a notebook, syntax highlighted, and a
chapter's results card as a table.

A chapter teaches the exact code that the tests check: ``show(ddpm.q_sample)`` prints
the function's source (with a link-like header naming its module and line) instead of
keeping a second copy of it in the notebook. ``results_card(rows)`` ends a chapter with
its measured numbers, one ``(what, result)`` row each.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Iterable
from typing import Any


def source(obj: Any) -> str:
    """The source text of a function, class or method, without leading indentation."""
    try:
        return inspect.cleandoc("\n" + inspect.getsource(obj)) + "\n"
    except (OSError, TypeError) as err:
        raise TypeError(f"cannot show the source of {obj!r}: {err}") from err


def _header(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    try:
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        line = 0
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}  (line {line})"


def show(obj: Any, docstring: bool = True) -> Any:
    """Display ``obj``'s source in a notebook (HTML with Pygments colours), or print it
    outside one. With ``docstring=False`` the docstring is left out, so that a long
    explanation already given in the text is not repeated.

    Returns the IPython display object (or ``None`` when printing).
    """
    text = source(obj)
    if not docstring:
        text = _strip_docstring(text)
    header = _header(obj)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:  # plain Python
        print(f"# {header}\n{text}")
        return None
    if get_ipython() is None:
        print(f"# {header}\n{text}")
        return None
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    body = highlight(text, PythonLexer(), HtmlFormatter(noclasses=True, nobackground=True))
    html = HTML(
        f'<div style="border-left:4px solid #4c72b0;padding-left:8px;margin:4px 0">'
        f'<div style="font-size:85%;color:#555"><code>{header}</code></div>{body}</div>'
    )
    display(html)
    return None


def _strip_docstring(text: str) -> str:
    import ast

    tree = ast.parse(text)
    node = tree.body[0]
    body = getattr(node, "body", [])
    if not body or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, ast.Constant):
        return text
    doc = body[0]
    lines = text.splitlines(keepends=True)
    start, end = doc.lineno - 1, doc.end_lineno or doc.lineno
    return "".join(lines[:start] + lines[end:])


def results_card_text(rows: Iterable[tuple[str, str]]) -> str:
    """The card as aligned plain text: each label padded to the longest, then its result
    (what a terminal, a script's log and ``benchmarks/run_chapters.py`` read)."""
    rows = _card_rows(rows)
    w = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{w}} {value}" for label, value in rows)


def results_card_html(rows: Iterable[tuple[str, str]]) -> str:
    """The card as an HTML table (class ``results-card``, styled by the book's CSS),
    every cell left-aligned (JupyterLab right-aligns table cells by default)."""
    left = ' style="text-align:left"'
    body = "".join(
        f"<tr><td{left}>{html.escape(label)}</td><td{left}>{html.escape(value)}</td></tr>"
        for label, value in _card_rows(rows)
    )
    return (
        f'<table class="results-card"><thead><tr><th{left}>measured</th>'
        f"<th{left}>result</th></tr></thead><tbody>{body}</tbody></table>"
    )


def results_card(rows: Iterable[tuple[str, str]]) -> None:
    """Show a chapter's results card: a table in a notebook (and in the book), aligned
    text outside one. ``rows`` are ``(what was measured, result)`` pairs of strings.

    In a notebook the one output carries both forms (``text/html`` and ``text/plain``),
    so whatever reads the executed notebook as text still finds every line.
    """
    rows = _card_rows(rows)
    text = results_card_text(rows)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    display({"text/html": results_card_html(rows), "text/plain": text}, raw=True)


def _card_rows(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    rows = list(rows)
    if not rows:
        raise ValueError("results_card: no rows; pass (what, result) pairs of strings")
    for row in rows:
        if len(row) != 2 or not all(isinstance(x, str) for x in row):
            raise TypeError(
                f"results_card: the row {row!r} is not a (what, result) pair of strings; "
                'format numbers into the result string, e.g. ("chapter wall time", '
                'f"{elapsed:.1f} s")'
            )
    return rows
