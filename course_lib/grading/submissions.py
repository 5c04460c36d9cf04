"""Which notebooks were handed in, and which chapter each one is: the submissions
under a folder (:func:`find_submissions`) and the chapters as students received them
(:func:`load_references`, :func:`match_reference`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from course_lib import exercises

#: the ``course_lib`` folder (this file is in ``course_lib/grading/``)
COURSE_DIR = Path(__file__).resolve().parent.parent
EXERCISE_MODULE = re.compile(r"^course_lib\.exercises\.(ch\d\d)$")


@dataclass(frozen=True)
class Submission:
    """One notebook handed in by ``student``."""

    student: str
    path: Path


@dataclass
class Reference:
    """A chapter as students received it (:func:`course_lib.exercises.strip_solutions`)
    and its exercises."""

    module: str  # "ch03"
    stem: str  # "03_ddpm"
    nb: Any
    exercises: list[exercises.ExerciseCells]


def _notebooks(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*.ipynb")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def find_submissions(root: Path) -> list[Submission]:
    """The notebooks in ``root``: a notebook at the top is one student (named by the
    file), a folder at the top is one student (named by the folder) with every notebook
    below it, at any depth (JupyterHub and nbgrader exports nest them); hidden files and
    ``.ipynb_checkpoints`` are skipped.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no notebook.
    """
    if root.is_file() and root.suffix == ".ipynb":
        return [Submission(root.stem, root)]
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is neither a folder of submissions nor a notebook")
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append(Submission(entry.stem, entry))
        elif entry.is_dir():
            found += [Submission(entry.name, p) for p in _notebooks(entry)]
    if not found:
        raise FileNotFoundError(
            f"no notebook in {root}: put one notebook per student there, or one folder "
            "per student with the notebooks inside"
        )
    return found


def exercise_module(nb: Any) -> str | None:
    """The chapter's exercise module a notebook imports (``"ch03"``), if any."""
    for path in exercises.course_imports(nb).values():
        match = EXERCISE_MODULE.match(path)
        if match:
            return match.group(1)
    return None


def load_references(chapters: Path) -> dict[str, Reference]:
    """Each chapter of ``chapters/*/*.ipynb`` with exercises, as handed to students, by
    its exercise module (``"ch03"``)."""
    refs: dict[str, Reference] = {}
    for src in sorted(chapters.glob("*/*.ipynb")):
        nb = exercises.strip_solutions(nbformat.read(src, as_version=4))
        module = exercise_module(nb)
        found = exercises.find_exercises(nb)
        if module and found:
            refs[module] = Reference(module, src.stem, nb, found)
    if not refs:
        raise FileNotFoundError(f"no chapter notebook with exercises under {chapters}")
    return refs


def match_reference(nb: Any, path: Path, refs: dict[str, Reference]) -> Reference | None:
    """The chapter a student's notebook is: by the exercise module it imports, else by
    the chapter's file name in the notebook's name (``03_ddpm`` in ``alice_03_ddpm``)."""
    module = exercise_module(nb)
    if module in refs:
        return refs[module]
    for ref in refs.values():
        if ref.stem in path.stem:
            return ref
    return None
