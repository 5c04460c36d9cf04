"""The chapters as nbgrader source assignments (:func:`export_nbgrader`), for a teacher
who grades with nbgrader rather than with :func:`course_lib.grading.grade`."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

from course_lib import exercises

NBGRADER_SCHEMA = 3


def _nbgrader(grade_id: str, *, solution: bool, grade: bool, points: float = 0.0) -> dict:
    meta = {
        "grade": grade,
        "solution": solution,
        "locked": not solution,
        "task": False,
        "grade_id": grade_id,
        "schema_version": NBGRADER_SCHEMA,
    }
    if grade:
        meta["points"] = points
    return meta


def solution_region(source: str) -> str:
    """A solution cell's code with its own check calls removed and its answer between
    nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers: inside the body
    when the cell is one function (so that the released skeleton keeps the signature),
    around the whole code otherwise."""
    lines = [
        line
        for line in source.rstrip().splitlines()
        if exercises.check_call(line.strip()) is None or line[:1].isspace()
    ]
    code = "\n".join(lines).strip("\n").rstrip()
    lines = code.splitlines()
    tree = exercises._parse(code)
    if tree is not None and len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef):
        fn = tree.body[0]
        start = fn.body[0].lineno - 1
        if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant):
            start = fn.body[0].end_lineno if len(fn.body) > 1 else start  # keep the docstring
        first = lines[start] if start < len(lines) else "    pass"
        indent = first[: len(first) - len(first.lstrip())] or "    "
        head, body = lines[:start], lines[start:]
        return "\n".join([*head, f"{indent}### BEGIN SOLUTION", *body, f"{indent}### END SOLUTION"])
    return "\n".join(["### BEGIN SOLUTION", code, "### END SOLUTION"])


def export_nbgrader(chapters: Path, out: Path, points: float = 1.0) -> list[Path]:
    """Write every chapter with exercises as an nbgrader *source* assignment,
    ``out/source/<chapter>/<chapter>.ipynb``: each exercise becomes an answer cell
    (the chapter's solution between ``### BEGIN SOLUTION`` / ``### END SOLUTION``,
    which ``nbgrader generate_assignment`` turns into the student's stub) and, in place
    of the check cell, a locked autograded test cell worth ``points`` that calls
    :func:`course_lib.exercises.assert_passes` (it raises unless the registry's check
    passes). Cells showing the course's answer come after the exercise, as in the
    student build. Returns the written notebooks."""
    written = []
    for src in sorted(chapters.glob("*/*.ipynb")):
        nb = exercises.defer_library_answers(nbformat.read(src, as_version=4))
        found = exercises.find_exercises(nb)
        if not found:
            continue
        role = {}
        for ex in found:
            role[ex.exercise] = ("answer", ex)
            role[ex.check] = ("test", ex)
            for k in range(ex.check + 1, ex.end + 1):
                role[k] = ("drop", ex)
        cells = []
        for k, cell in enumerate(nb.cells):
            kind, ex = role.get(k, ("keep", None))
            if kind == "drop":
                continue
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            gid = ex.name.replace(".", "_") if ex else ""
            if kind == "answer":
                solution = nb.cells[ex.end].source if ex.end > ex.check else cell.source
                cell.source = solution_region(solution)
                cell.metadata["nbgrader"] = _nbgrader(f"{gid}_answer", solution=True, grade=False)
            elif kind == "test":
                cell.source = (
                    "from course_lib.exercises import assert_passes\n\n"
                    f"assert_passes({ex.name!r}, {ex.variable})"
                )
                cell.metadata["nbgrader"] = _nbgrader(
                    f"{gid}_test", solution=False, grade=True, points=points
                )
            cells.append(cell)
        nb.cells = cells
        dst = out / "source" / src.stem / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dst)
        written.append(dst)
    return written
