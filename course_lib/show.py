"""Show the source of a ``course_lib`` function in a notebook, syntax highlighted.

A chapter teaches the exact code that the tests check: ``show(ddpm.q_sample)`` prints
the function's source (with a link-like header naming its module and line) instead of
keeping a second copy of it in the notebook.
"""

from __future__ import annotations

import inspect
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
