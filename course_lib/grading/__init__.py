"""Grading a class: run each student's notebook, check every exercise with the course's
own copy of the check, and write a grade table.

``python3 run.py grade SUBMISSIONS/`` (or ``python -m course_lib.grading``) takes a
folder with one notebook or one folder per student and writes ``grades.csv`` (one row
per student, notebook and exercise), ``grades.md`` and ``grades.html`` (totals and a
matrix) into ``--out``.

How a notebook is graded, and why this way:

* **Printed verdicts are never read.** The notebook runs top to bottom in a fresh
  kernel (``smoke`` profile by default), in a temporary folder that holds only a copy of
  it, with ``COURSE_DATA`` pointing at a temporary folder of links to the course's data
  (so what a notebook writes lands in the temporary folder), under one time limit for
  the whole notebook.
* **The grader's probe, not the student's check cell, collects each answer.** Just
  before the cell that calls the check (found by its cell id, else by the call, else
  right after the exercise cell), the grader inserts a cell of its own that serialises
  the answer variable with ``cloudpickle`` and sends it back as a cell output. The check
  then runs in a *separate* process forked from a clean interpreter
  (:func:`check_answers`): a notebook that redefined the check, patched ``REGISTRY`` or
  monkeypatched ``course_lib`` cannot change the verdict. Only when an answer cannot be
  serialised is it checked inside the student's kernel, flagged ``checked-in-kernel``.
* **Tampering is flagged, not silently scored.** The ``flag`` column says when the check
  cell differs from the handed-out notebook, when a cell (re)defines a check, the
  registry or an exercise module, prints a fake verdict, or assigns into ``course_lib``,
  and when an answer *is* the course's code (``q_sample = ddpm.q_sample``; the
  registry's solution) or *calls* the course's code for that answer
  (:data:`course_lib.exercises.LIBRARY_ANSWERS`, found by tracing the calls the answer
  makes while the check runs).
* **A crash or a time-out keeps the credit earned so far**: the exercises before the
  failing cell keep their verdict, later ones are ``not reached``, and the message says
  which cell stopped the notebook and why.

This is isolation against accidents and casual cheating, not a security sandbox: the
notebook runs as the teacher's user and can read or write any file that user can.

Where each step lives (``course_lib/grading/``):

* ``submissions.py``: the notebooks handed in, and the chapter each one is.
* ``slots.py``: where the probe goes before each exercise's check.
* ``flags.py``: tampering seen in the student's own cells.
* ``execute.py``: running a notebook in a fresh kernel with the probes.
* ``checks.py``: checking the answers in a clean process, and tracing calls of the
  course's code.
* ``grader.py``: one notebook, and a whole class.
* ``report.py``: the rows and ``grades.csv``/``.md``/``.html``.
* ``nbgrader.py``: the chapters as nbgrader source assignments.
* ``cli.py`` and ``__main__.py``: the command line.
"""

from course_lib.grading.checks import CheckTimeout, check_answers, library_origin, run_check
from course_lib.grading.cli import main
from course_lib.grading.execute import (
    PROBE_MIME,
    Execution,
    execute_with_probes,
    kernel_env,
    probe_source,
)
from course_lib.grading.flags import scan_tampering
from course_lib.grading.grader import grade, grade_notebook
from course_lib.grading.nbgrader import NBGRADER_SCHEMA, export_nbgrader, solution_region
from course_lib.grading.report import CSV_COLUMNS, MARK, STATUSES, Row, write_tables
from course_lib.grading.slots import Slot, plan_slots
from course_lib.grading.submissions import (
    COURSE_DIR,
    EXERCISE_MODULE,
    Reference,
    Submission,
    exercise_module,
    find_submissions,
    load_references,
    match_reference,
)

__all__ = [
    "COURSE_DIR",
    "CSV_COLUMNS",
    "EXERCISE_MODULE",
    "MARK",
    "NBGRADER_SCHEMA",
    "PROBE_MIME",
    "STATUSES",
    "CheckTimeout",
    "Execution",
    "Reference",
    "Row",
    "Slot",
    "Submission",
    "check_answers",
    "execute_with_probes",
    "exercise_module",
    "export_nbgrader",
    "find_submissions",
    "grade",
    "grade_notebook",
    "kernel_env",
    "library_origin",
    "load_references",
    "main",
    "match_reference",
    "plan_slots",
    "probe_source",
    "run_check",
    "scan_tampering",
    "solution_region",
    "write_tables",
]
