"""Where the grader probes each exercise of a student's notebook (:func:`plan_slots`),
read from the notebook without running it, and the flags the check cell raises
(``check-cell-missing``, ``check-cell-edited``)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from course_lib import exercises
from course_lib.grading.submissions import Reference


@dataclass
class Slot:
    """Where the grader probes one exercise in a student's notebook: before the cell at
    ``before`` (an index in the student's ``nb.cells``)."""

    name: str
    variable: str
    before: int
    flags: list[str] = field(default_factory=list)


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines() if line.strip())


def _defines(source: str, name: str) -> bool:
    tree = exercises._parse(source)
    for node in ast.walk(tree) if tree else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return True
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            return True
    return False


def plan_slots(nb: Any, ref: Reference) -> list[Slot]:
    """For each exercise of ``ref``, where to probe the student's notebook ``nb`` and
    what the check cell tells about tampering.

    The exercise cell is found by its cell id, else as the n-th cell tagged
    ``exercise``, else as the first code cell after the previous exercise that defines
    the answer's name. The check cell is the reference's check cell id, else the next
    cell calling the same check, else the next code cell; the probe goes before it, so
    cells a student added between the exercise and its check count.
    """
    ids = {c.get("id"): i for i, c in enumerate(nb.cells) if c.get("id")}
    tagged = [i for i, c in enumerate(nb.cells) if exercises.EXERCISE_TAG in exercises._tags(c)]
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    slots, floor = [], -1
    for n, ex in enumerate(ref.exercises):
        ref_ex, ref_check = ref.nb.cells[ex.exercise], ref.nb.cells[ex.check]
        i = ids.get(ref_ex.get("id"))
        if i is None and n < len(tagged) and len(tagged) == len(ref.exercises):
            i = tagged[n]
        if i is None:
            i = next(
                (k for k in code if k > floor and _defines(nb.cells[k].source, ex.variable)), None
            )
        flags: list[str] = []
        j = ids.get(ref_check.get("id"))
        if i is not None and (j is None or j <= i):
            want = exercises.check_call(ref_check.source)
            j = next(
                (k for k in code if k > i and exercises.check_call(nb.cells[k].source) == want),
                None,
            )
            if j is None:
                j = next((k for k in code if k > i), None)
        if j is None or (i is not None and j <= i):
            flags.append("check-cell-missing")
            j = (i + 1) if i is not None else len(nb.cells)
        elif _normalise(nb.cells[j].source) != _normalise(ref_check.source):
            flags.append("check-cell-edited")
        slots.append(Slot(ex.name, ex.variable, j, flags))
        floor = max(floor, j)
    return slots
