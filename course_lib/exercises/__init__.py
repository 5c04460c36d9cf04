"""Exercises: a skeleton for the learner, a check that says what is right or wrong, and
a solution that the book collapses and student notebooks leave out.

In a chapter an exercise is three cells::

    # %% tags=["exercise"]          the skeleton: the learner fills it in
    def tweedie(x, sigma, score): ...
        raise NotImplementedError

    # %%                             the check: prints a verdict, never stops the notebook
    ch01.check_tweedie(tweedie)

    # %% tags=["solution", "hide-input"]   the solution, collapsed in the book
    def tweedie(x, sigma, score): return x + sigma**2 * score(x)
    ch01.check_tweedie(tweedie)

Each check is an :class:`Exercise` built with :func:`exercise`, registered together
with its reference solution and a typical wrong answer, so that the tests can verify
that every check passes the solution and fails the wrong answer with a helpful message.
``python run.py student`` writes notebooks without the ``solution`` cells
(:func:`strip_solutions`), and with every cell that shows the course's own code for an
exercise's answer (:data:`LIBRARY_ANSWERS`) moved after that exercise's check
(:func:`defer_library_answers`). :func:`find_exercises` reads which cell is which
exercise from the check cells; ``course_lib.grading`` grades students' notebooks with it.
"""

from __future__ import annotations

import ast
import importlib
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
REGISTRY: dict[str, Exercise] = {}

#: For each exercise, the course's own code that contains its answer (dotted paths; a
#: class stands for all its methods). Two uses: the student build moves a cell that
#: shows one of these after the exercise's check (:func:`defer_library_answers`), and the
#: grader flags an answer that is, or calls, one of them (``course_lib.grading``).
#: Exercises that only ask for a number (predictions) have no entry. A test checks that
#: every path resolves and every name is registered.
LIBRARY_ANSWERS: dict[str, tuple[str, ...]] = {
    "ch00.noised_parameters": ("course_lib.gaussian_mixture.GaussianMixture.noised",),
    "ch00.mixture_score": (
        "course_lib.gaussian_mixture.GaussianMixture.score",
        "course_lib.gaussian_mixture.GaussianMixture.noised_score",
    ),
    "ch01.dsm_loss": ("course_lib.score_matching.denoising_score_matching",),
    "ch01.tweedie": ("course_lib.score_matching.tweedie_denoiser",),
    "ch01.ism_hutchinson": ("course_lib.score_matching.implicit_score_matching",),
    "ch02.ula_step": ("course_lib.langevin.ula",),
    "ch02.annealed_step_sizes": ("course_lib.langevin.annealed_langevin",),
    "ch02.mala_log_accept": ("course_lib.langevin.mala",),
    "ch03.q_sample": ("course_lib.ddpm.q_sample",),
    "ch03.ancestral_step": ("course_lib.ddpm.ancestral_sample", "course_lib.sde.ancestral_step"),
    "ch04.ddim_sigma": ("course_lib.ddim.ddim_sigma",),
    "ch04.ddim_step": ("course_lib.ddim.ddim_step",),
    "ch04.slerp": ("course_lib.ddim.slerp",),
    "ch05.pf_drift": ("course_lib.sde.reverse_drift", "course_lib.sde.pf_ode_drift"),
    "ch05.bits_per_dim": ("course_lib.likelihood.bits_per_dim",),
    "ch05.edm_coefficients": ("course_lib.edm.Preconditioning",),
    "ch06.velocity_from_eps": ("course_lib.flow_matching.velocity_from_eps",),
    "ch08.cfg_combine": ("course_lib.guidance.guided",),
    "ch08.drop_labels": ("course_lib.guidance.drop_labels",),
    "ch09.denoiser_from_velocity": ("course_lib.flow_matching.denoiser_from_velocity",),
}


class Mistake(AssertionError):
    """Raised inside a check to explain what is wrong with an answer."""


@dataclass(frozen=True)
class Result:
    """The verdict of a check: ``status`` is ``"passed"``, ``"failed"`` or ``"todo"``."""

    name: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __str__(self) -> str:
        mark = {"passed": "✅ correct", "failed": "❌ not yet", "todo": "⏳ to do"}[self.status]
        return f"{mark} [{self.name}] {self.message}"


@dataclass
class Exercise:
    """A check with its reference ``solution`` and a typical ``wrong`` answer."""

    name: str
    body: Callable[[Any], str | None]
    solution: Any
    wrong: Any
    hint: str = ""
    doc: str = field(default="", repr=False)

    def run(self, answer: Any) -> Result:
        """Check ``answer`` and return the verdict without printing."""
        try:
            note = self.body(answer)
        except NotImplementedError:
            return Result(
                self.name,
                "todo",
                "not attempted yet: fill in the cell above, run it, then run this check again.",
            )
        except Mistake as err:
            hint = f" Hint: {self.hint}" if self.hint else ""
            return Result(self.name, "failed", f"{err}{hint}")
        except Exception as err:  # the learner's code crashed: show where
            tb = traceback.format_exception_only(type(err), err)[-1].strip()
            return Result(self.name, "failed", f"your answer raised {tb}")
        return Result(self.name, "passed", note or "well done.")

    def __call__(self, answer: Any) -> None:
        """Check ``answer`` and print the verdict (a notebook never stops on it)."""
        print(self.run(answer))


def exercise(
    name: str, *, solution: Any, wrong: Any, hint: str = ""
) -> Callable[[Callable[[Any], str | None]], Exercise]:
    """Register a check. The decorated function receives the learner's answer and
    raises :class:`Mistake` with an explanation when it is wrong."""

    def wrap(body: Callable[[Any], str | None]) -> Exercise:
        if name in REGISTRY:
            raise ValueError(f"an exercise named {name!r} is already registered")
        ex = Exercise(name, body, solution, wrong, hint, body.__doc__ or "")
        REGISTRY[name] = ex
        return ex

    return wrap


def expect_close(got: Any, want: Any, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise a :class:`Mistake` naming ``what`` when ``got`` is not close to ``want``."""
    import torch

    got_t = torch.as_tensor(got, dtype=torch.float64)
    want_t = torch.as_tensor(want, dtype=torch.float64)
    if got_t.shape != want_t.shape:
        raise Mistake(f"{what} has shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}.")
    if not torch.allclose(got_t, want_t, atol=atol, rtol=rtol):
        err = (got_t - want_t).abs().max().item()
        raise Mistake(
            f"{what} is off by up to {err:.3g} (expected e.g. {want_t.flatten()[:3].tolist()}, "
            f"got {got_t.flatten()[:3].tolist()})."
        )


def assert_passes(name: str, answer: Any) -> None:
    """Run the registered check ``name`` on ``answer``, print its verdict, and raise
    ``AssertionError`` with the check's message unless it passed: the body of an
    autograded test cell (nbgrader gives the points when the cell does not raise)."""
    importlib.import_module(f"course_lib.exercises.{name.split('.')[0]}")
    if name not in REGISTRY:
        raise KeyError(f"no exercise named {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    result = REGISTRY[name].run(answer)
    print(result)
    if not result.passed:
        raise AssertionError(f"{result.status}: {result.message}")


# ------------------------------------------------------------------ reading notebooks
def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _parse(source: str) -> ast.Module | None:
    """The cell's syntax tree, with IPython's ``%magic`` and ``!shell`` lines blanked
    (``None`` when the cell is not Python)."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def check_call(source: str) -> tuple[str, str, str] | None:
    """``(module, check, variable)`` of a check cell ``chNN.check_x(variable)``: its first
    statement calls a ``check_*`` attribute of an exercise module on one name."""
    tree = _parse(source)
    for stmt in tree.body if tree else []:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.attr.startswith("check_")
            and len(call.args) == 1
            and isinstance(call.args[0], ast.Name)
        ):
            return call.func.value.id, call.func.attr, call.args[0].id
    return None


def course_imports(nb: Any) -> dict[str, str]:
    """Which local name stands for which ``course_lib`` object in a notebook:
    ``{"ddim": "course_lib.ddim", "ch04": "course_lib.exercises.ch04", ...}``."""
    names: dict[str, str] = {}
    for cell in nb.cells:
        tree = _parse(cell.source) if cell.cell_type == "code" else None
        for node in ast.walk(tree) if tree else []:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "course_lib":
                        key = a.asname or a.name.split(".")[0]
                        names[key] = a.name if a.asname else "course_lib"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == (
                "course_lib"
            ):
                for a in node.names:
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


@dataclass(frozen=True)
class ExerciseCells:
    """Where an exercise sits in a notebook: ``exercise`` (the skeleton cell), ``check``
    (the cell calling the check on ``variable``) and ``end`` (the last cell of the group:
    the solution when the notebook has one, else the check), all indices in ``nb.cells``."""

    name: str
    variable: str
    exercise: int
    check: int
    end: int


def find_exercises(nb: Any, strict: bool = True) -> list[ExerciseCells]:
    """Every exercise of a course notebook, in order: a cell tagged ``exercise`` and the
    first check cell after it. The registered name comes from the check itself
    (``ch03.check_q_sample`` is the :class:`Exercise` named ``"ch03.q_sample"``).

    Raises:
        ValueError: (with ``strict``; otherwise such a cell is skipped) an exercise cell
            has no check cell after it, or the check names no registered exercise; the
            message names the cell.
    """
    imports = course_imports(nb)
    found: list[ExerciseCells] = []
    cells = nb.cells
    for i, cell in enumerate(cells):
        if EXERCISE_TAG not in _tags(cell):
            continue
        for j in range(i + 1, len(cells)):
            if EXERCISE_TAG in _tags(cells[j]):
                break
            call = check_call(cells[j].source) if cells[j].cell_type == "code" else None
            if call is None:
                continue
            module, check, variable = call
            path = imports.get(module, f"course_lib.exercises.{module}")
            try:
                ex = getattr(importlib.import_module(path), check, None)
            except ImportError:
                ex = None
            if not isinstance(ex, Exercise):
                if strict:
                    raise ValueError(f"cell {j}: {module}.{check} is not a registered check")
                break
            end = j
            while end + 1 < len(cells) and SOLUTION_TAG in _tags(cells[end + 1]):
                end += 1
            found.append(ExerciseCells(ex.name, variable, i, j, end))
            break
        else:
            if not strict:
                continue
            first = cell.source.strip().splitlines()[:1]
            raise ValueError(
                f"cell {i} is tagged {EXERCISE_TAG!r} but no check cell follows it: {first}; "
                "add a cell calling chNN.check_x(answer) after it."
            )
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def shown_objects(source: str, imports: dict[str, str]) -> list[str]:
    """The dotted paths of what a cell passes to ``course_lib.show`` (``show(ddim.ddim_step)``
    with ``from course_lib import ddim`` gives ``"course_lib.ddim.ddim_step"``); an
    argument that is not an imported name (a local variable) is left out."""
    tree = _parse(source)
    shown = []
    for node in ast.walk(tree) if tree else []:
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = _dotted(node.func)
        if func is None or func.rsplit(".", 1)[-1] != "show":
            continue
        head, _, rest = func.partition(".")
        if f"{imports.get(head, head)}{'.' + rest if rest else ''}" not in {
            "course_lib.show",
            "course_lib.show.show",
        }:
            continue
        arg = _dotted(node.args[0])
        if arg is None:
            continue
        head, _, rest = arg.partition(".")
        if head in imports:
            shown.append(imports[head] + (f".{rest}" if rest else ""))
    return shown


def _reveals(shown: str, answer: str) -> bool:
    """Showing ``shown`` shows ``answer``: the same object, a part of it (a method of the
    class), or the whole it belongs to (the class of the method). ``.fget`` of a
    property counts as the property."""
    shown = re.sub(r"\.(fget|fset|__wrapped__)$", "", shown)
    return shown == answer or shown.startswith(answer + ".") or answer.startswith(shown + ".")


def defer_library_answers(nb: Any) -> Any:
    """A copy of ``nb`` in which every cell that shows the course's code for a *later*
    exercise's answer (:data:`LIBRARY_ANSWERS`) comes right after that exercise's check
    (and solution, if present); a short note stays in its place. A cell that reveals
    several later answers moves after the last of them."""
    import copy

    import nbformat

    out = copy.deepcopy(nb)
    exercises = find_exercises(out, strict=False)
    imports = course_imports(out)
    target: dict[int, ExerciseCells] = {}
    for k, cell in enumerate(out.cells):
        if cell.cell_type != "code" or {EXERCISE_TAG, SOLUTION_TAG} & set(_tags(cell)):
            continue
        shown = shown_objects(cell.source, imports)
        for ex in exercises:
            answers = LIBRARY_ANSWERS.get(ex.name, ())
            if ex.exercise > k and any(_reveals(s, a) for s in shown for a in answers):
                target[k] = ex  # exercises are in order: the last one wins
    cells = []
    for k, cell in enumerate(out.cells):
        if k in target:
            ex = target[k]
            what = ", ".join(
                f"`{s.removeprefix('course_lib.')}`" for s in shown_objects(cell.source, imports)
            )
            cells.append(
                nbformat.v4.new_markdown_cell(
                    f"*The course's own code ({what}) is shown after the check of "
                    f"`{ex.variable}` below, once you have written yours.*"
                )
            )
        else:
            cells.append(cell)
        for m in sorted(m for m, ex in target.items() if ex.end == k):
            cells.append(out.cells[m])
    out.cells = cells
    return out


def strip_solutions(nb: Any, defer_answers: bool = True) -> Any:
    """A copy of a notebook (``nbformat`` node) without its ``solution`` cells and
    outputs: what a teacher hands to students. With ``defer_answers``, cells that show
    the course's own answer to a later exercise come after its check
    (:func:`defer_library_answers`)."""
    import copy

    out = defer_library_answers(nb) if defer_answers else copy.deepcopy(nb)
    out.cells = [c for c in out.cells if SOLUTION_TAG not in _tags(c)]
    for c in out.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return out


def write_student_notebooks(chapters: Path, out_dir: Path) -> list[Path]:
    """Write every chapter notebook without solutions, and with the course's answers
    deferred after their exercises, into ``out_dir``."""
    import nbformat

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(chapters.glob("*/*.ipynb")):
        nb = nbformat.read(src, as_version=4)
        dst = out_dir / src.name
        nbformat.write(strip_solutions(nb), dst)
        written.append(dst)
    return written
