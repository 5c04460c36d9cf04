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
(:func:`strip_solutions`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOLUTION_TAG = "solution"
REGISTRY: dict[str, Exercise] = {}


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


def strip_solutions(nb: Any) -> Any:
    """A copy of a notebook (``nbformat`` node) without its ``solution`` cells and
    outputs: what a teacher hands to students."""
    import copy

    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if SOLUTION_TAG not in c.get("metadata", {}).get("tags", [])]
    for c in out.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return out


def write_student_notebooks(chapters: Path, out_dir: Path) -> list[Path]:
    """Write every chapter notebook without solutions into ``out_dir``."""
    import nbformat

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(chapters.glob("*/*.ipynb")):
        nb = nbformat.read(src, as_version=4)
        dst = out_dir / src.name
        nbformat.write(strip_solutions(nb), dst)
        written.append(dst)
    return written
