"""Tampering seen in a student's own cells without running them (:func:`scan_tampering`).

The other flags come from elsewhere: ``check-cell-missing`` and ``check-cell-edited``
from :mod:`course_lib.grading.slots`, ``library-answer`` and ``wraps-library-answer``
from the check itself (:func:`course_lib.grading.checks.run_check`), and
``checked-in-kernel`` from an answer the probe could not serialise."""

from __future__ import annotations

import ast
import re
from typing import Any

from course_lib import exercises
from course_lib.grading.slots import _normalise
from course_lib.grading.submissions import EXERCISE_MODULE, Reference

_CHECK_NAMES = re.compile(r"^(check_\w+|REGISTRY|Exercise|Result|Mistake|assert_passes)$")


def scan_tampering(nb: Any, ref: Reference) -> dict[str, set[str]]:
    """Flags raised by the student's own cells (those not identical to a cell of the
    handed-out notebook), by exercise name; ``"*"`` applies to every exercise.

    * ``check-redefined``: defines or assigns a ``check_*`` function, ``REGISTRY``,
      ``Exercise``/``Result``, an exercise module's attribute, or rebinds the module.
    * ``forged-verdict``: a string with a check's verdict mark (✅).
    * ``library-patched``: assigns an attribute of a ``course_lib`` module or class.
    """
    handed_out = {_normalise(c.source) for c in ref.nb.cells if c.cell_type == "code"}
    imports = exercises.course_imports(nb) | exercises.course_imports(ref.nb)
    check_owner = {}
    for ex in ref.exercises:
        call = exercises.check_call(ref.nb.cells[ex.check].source)
        if call:
            check_owner[call[1]] = ex.name
    flags: dict[str, set[str]] = {}

    def flag(what: str, name: str = "*") -> None:
        flags.setdefault(name, set()).add(what)

    for cell in nb.cells:
        if cell.cell_type != "code" or _normalise(cell.source) in handed_out:
            continue
        tree = exercises._parse(cell.source)
        for node in ast.walk(tree) if tree else []:
            targets: list[ast.expr] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if _CHECK_NAMES.match(node.name):
                    flag("check-redefined", check_owner.get(node.name, "*"))
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.Call) and _dotted_name(node.func) in {"setattr", "delattr"}:
                target = node.args[0] if node.args else None
                attr = node.args[1] if len(node.args) > 1 else None
                name = attr.value if isinstance(attr, ast.Constant) else ""
                base = _dotted_name(target) if target is not None else None
                if isinstance(name, str) and (
                    _CHECK_NAMES.match(name) or _is_course(base, imports)
                ):
                    flag(
                        "check-redefined"
                        if _is_exercises(base, imports) or _CHECK_NAMES.match(name)
                        else "library-patched",
                        check_owner.get(name, "*"),
                    )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if "✅" in node.value:
                    flag("forged-verdict")
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store):
                        if _CHECK_NAMES.match(t.id) or EXERCISE_MODULE.match(imports.get(t.id, "")):
                            flag("check-redefined", check_owner.get(t.id, "*"))
                    elif isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store):
                        base = _dotted_name(t.value)
                        if _CHECK_NAMES.match(t.attr) or _is_exercises(base, imports):
                            flag("check-redefined", check_owner.get(t.attr, "*"))
                        elif _is_course(base, imports):
                            flag("library-patched")
    return flags


def _dotted_name(node: ast.expr | None) -> str | None:
    return exercises._dotted(node) if node is not None else None


def _is_course(base: str | None, imports: dict[str, str]) -> bool:
    return base is not None and base.split(".")[0] in imports


def _is_exercises(base: str | None, imports: dict[str, str]) -> bool:
    if base is None or base.split(".")[0] not in imports:
        return False
    head, _, rest = base.partition(".")
    full = imports[head] + (f".{rest}" if rest else "")
    return full.startswith("course_lib.exercises")
