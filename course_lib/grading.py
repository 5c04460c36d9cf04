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
"""

from __future__ import annotations

import argparse
import ast
import base64
import csv
import functools
import html
import importlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from course_lib import exercises

#: the mimetype of the grader's probe output (never displayed by a front end)
PROBE_MIME = "application/x-course-grader+json"
STATUSES = ("passed", "failed", "todo", "not reached")
CSV_COLUMNS = ("student", "notebook", "exercise", "status", "flag", "message")
COURSE_DIR = Path(__file__).resolve().parent
EXERCISE_MODULE = re.compile(r"^course_lib\.exercises\.(ch\d\d)$")


# ---------------------------------------------------------------------------- data
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


@dataclass
class Slot:
    """Where the grader probes one exercise in a student's notebook: before the cell at
    ``before`` (an index in the student's ``nb.cells``)."""

    name: str
    variable: str
    before: int
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One line of the grade table."""

    student: str
    notebook: str
    exercise: str
    status: str
    flag: str
    message: str


# ---------------------------------------------------------------------------- discovery
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


# ---------------------------------------------------------------------------- static scan
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


# ---------------------------------------------------------------------------- probing
def probe_source(name: str, variable: str) -> str:
    """The cell the grader inserts before an exercise's check: it sends the answer back
    as a cell output, serialised by value, and never raises."""
    return f"""def _course_grader_probe(name={name!r}, variable={variable!r}):
    import base64
    import importlib

    payload = {{"exercise": name, "variable": variable}}
    namespace = globals()
    if variable not in namespace:
        payload["missing"] = True
    else:
        answer = namespace[variable]
        try:
            import cloudpickle

            payload["pickle"] = base64.b64encode(cloudpickle.dumps(answer)).decode("ascii")
        except Exception as err:  # not serialisable: check it here, and say so
            payload["pickle_error"] = f"{{type(err).__name__}}: {{err}}"
            try:
                importlib.import_module("course_lib.exercises." + name.split(".")[0])
                from course_lib.exercises import REGISTRY

                result = REGISTRY[name].run(answer)
                payload["kernel_result"] = [result.status, result.message]
            except Exception as err2:
                payload["kernel_result"] = ["failed", f"the check raised {{err2!r}}"]
    get_ipython().display_pub.publish(data={{{PROBE_MIME!r}: payload}}, metadata={{}})


_course_grader_probe()
del _course_grader_probe
"""


@dataclass
class Execution:
    """What running one notebook gave: the probes' payloads by exercise, and where and
    why it stopped early (``None``: it ran to the end)."""

    payloads: dict[str, dict[str, Any]]
    stopped: str | None
    seconds: float


def _link_data(source: Path, target: Path) -> None:
    """A data folder whose entries link to ``source``'s, one level down, so that the
    course's atomic writes (temporary file, then rename) replace a link in ``target``
    and never touch ``source``."""
    target.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return
    for entry in source.iterdir():
        if entry.is_dir():
            (target / entry.name).mkdir(exist_ok=True)
            for child in entry.iterdir():
                (target / entry.name / child.name).symlink_to(child)
        else:
            (target / entry.name).symlink_to(entry)


def kernel_env(profile: str, data: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a graded notebook's kernel: the course's profile and data
    folder set, ``MPLBACKEND`` removed (kernels use the inline backend)."""
    env = dict(os.environ if base is None else base)
    env.pop("MPLBACKEND", None)
    env.update(COURSE_PROFILE=profile, COURSE_DATA=str(data), PYTHONUNBUFFERED="1")
    return env


def execute_with_probes(
    nb: Any,
    slots: list[Slot],
    workdir: Path,
    env: dict[str, str],
    time_limit: float,
) -> Execution:
    """Run ``nb`` with a probe before each slot in a fresh kernel whose working folder is
    ``workdir``; the whole run, kernel start included, gets ``time_limit`` seconds."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from course_lib.runner import CourseNotebookClient

    cells, origin = [], []
    by_cell: dict[int, list[Slot]] = {}
    for slot in slots:
        by_cell.setdefault(slot.before, []).append(slot)
    for k in range(len(nb.cells) + 1):
        for slot in by_cell.get(k, []):
            cells.append(nbformat.v4.new_code_cell(probe_source(slot.name, slot.variable)))
            origin.append(None)
        if k < len(nb.cells):
            cell = nb.cells[k]
            if cell.cell_type == "code":
                cell = nbformat.from_dict({**cell, "outputs": [], "execution_count": None})
            cells.append(cell)
            origin.append(k)
    run_nb = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    code_number = {
        k: n + 1 for n, k in enumerate(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    }
    t0 = time.monotonic()
    deadline = t0 + time_limit
    state = {"index": -1}

    def on_execute(cell: Any, cell_index: int) -> None:
        state["index"] = cell_index

    client = CourseNotebookClient(
        run_nb,
        timeout_func=lambda cell: max(1, round(deadline - time.monotonic())),
        startup_timeout=max(10, round(time_limit)),
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        on_cell_execute=on_execute,
    )
    stopped = None
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as err:
        k = state["index"]
        where = "before the first cell"
        if 0 <= k < len(origin):
            src = origin[k]
            if src is None:
                where = "in the grader's probe"
            else:
                first = nb.cells[src].source.strip().splitlines()[:1]
                start = first[0][:60] if first else "empty"
                where = f"at code cell {code_number.get(src, '?')} ({start})"
        if isinstance(err, CellTimeoutError) or time.monotonic() >= deadline:
            reason = f"the time limit of {time_limit:.0f} s ran out"
        elif isinstance(err, CellExecutionError):
            reason = f"{err.ename}: {err.evalue}" if err.ename else "the cell raised"
        elif isinstance(err, DeadKernelError):
            reason = "the kernel died"
        else:
            reason = f"{type(err).__name__}: {err}"
        stopped = f"stopped {where}: {reason}"
    payloads = {}
    for cell, src in zip(run_nb.cells, origin, strict=True):
        if src is not None:
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get(PROBE_MIME)
            if data is not None:
                payload = data if isinstance(data, dict) else json.loads(data)
                payloads[payload["exercise"]] = payload
    return Execution(payloads, stopped, time.monotonic() - t0)


# ---------------------------------------------------------------------------- checking
class CheckTimeout(Exception):
    """A check ran past its time limit (raised inside the answer by an alarm)."""


def _resolve(path: str) -> Any:
    """The object at a dotted path (``"course_lib.edm.Preconditioning.c_skip"``)."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {path}")


def _code_objects(obj: Any) -> set[Any]:
    """The code objects of a function, a method, a property or every function of a
    class."""
    if isinstance(obj, property):
        return {f.__code__ for f in (obj.fget, obj.fset) if f is not None}
    if isinstance(obj, type):
        found = set()
        for value in vars(obj).values():
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            found |= (
                _code_objects(value) if callable(value) or isinstance(value, property) else set()
            )
        return found
    func = getattr(obj, "__func__", obj)
    func = getattr(func, "__wrapped__", func)
    return {func.__code__} if hasattr(func, "__code__") else set()


def library_origin(answer: Any) -> str | None:
    """The ``course_lib`` name of an answer that is the course's own code: a function,
    method or class of ``course_lib``, a ``functools.partial`` of one, or a callable
    instance of a ``course_lib`` class (``None`` otherwise)."""
    obj = answer
    while isinstance(obj, functools.partial):
        obj = obj.func
    func = getattr(obj, "__func__", obj)
    candidates = [func]
    if callable(obj) and not isinstance(obj, type) and not hasattr(func, "__code__"):
        candidates.append(type(obj))
    for c in candidates:
        module = getattr(c, "__module__", None)
        if isinstance(module, str) and module.split(".")[0] == "course_lib" and callable(c):
            return f"{module}.{getattr(c, '__qualname__', type(c).__qualname__)}"
    return None


def _in_course(code: Any) -> bool:
    return Path(code.co_filename).resolve().is_relative_to(COURSE_DIR)


def run_check(name: str, answer: Any, check_timeout: float = 60.0) -> tuple[str, str, list[str]]:
    """``(status, message, flags)`` of the registered check ``name`` on ``answer``.

    Flags ``library-answer`` when the answer is the course's code
    (:func:`library_origin`), and ``wraps-library-answer`` when, while the check runs,
    code that is not the course's (the student's) calls the course's answer for this
    exercise (:data:`course_lib.exercises.LIBRARY_ANSWERS`) or the registry's solution.
    """
    importlib.import_module(f"course_lib.exercises.{name.split('.')[0]}")
    ex = exercises.REGISTRY[name]
    flags = []
    origin = library_origin(answer)
    if origin:
        flags.append(f"library-answer ({origin.removeprefix('course_lib.')})")
    forbidden: dict[Any, str] = {}
    for path in exercises.LIBRARY_ANSWERS.get(name, ()):
        for code in _code_objects(_resolve(path)):
            forbidden[code] = path
    for solution in (ex.solution, ex.wrong):
        for code in _code_objects(solution) if callable(solution) else ():
            forbidden[code] = f"{name} (the registry's own answer)"
    run_code = exercises.Exercise.run.__code__
    called: set[str] = set()

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or frame.f_code not in forbidden:
            return
        caller = frame.f_back
        while caller is not None and caller.f_code is not run_code:
            if caller.f_code in forbidden:
                return  # inside another of the answers: the outermost one is reported
            if not _in_course(caller.f_code):
                called.add(forbidden[frame.f_code])
                return
            caller = caller.f_back

    alarm = hasattr(signal, "setitimer")
    if alarm:

        def on_alarm(signum: int, frame: Any) -> None:
            raise CheckTimeout(f"the check ran past {check_timeout:g} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, check_timeout)
    sys.setprofile(profiler)
    try:
        result = ex.run(answer)
    finally:
        sys.setprofile(None)
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    if called and not origin:
        flags.append(
            "wraps-library-answer ("
            + ", ".join(sorted(c.removeprefix("course_lib.") for c in called))
            + ")"
        )
    return result.status, result.message, flags


def _check_payloads(payloads: list[dict[str, Any]], check_timeout: float) -> list[dict[str, Any]]:
    """Check every probed answer; runs in a fresh process (:func:`check_answers`)."""
    import pickle

    out = []
    for p in payloads:
        name, variable = p["exercise"], p["variable"]
        flags: list[str] = []
        if p.get("missing"):
            status, message = "todo", f"`{variable}` is not defined when its check runs."
        elif "kernel_result" in p:
            status, message = p["kernel_result"]
            flags.append("checked-in-kernel")
            message += (
                f" (the answer could not be taken out of the notebook: {p.get('pickle_error')})"
            )
        else:
            try:
                answer = pickle.loads(base64.b64decode(p["pickle"]))
            except Exception as err:
                status, message = "failed", f"the grader could not load the answer: {err!r}"
            else:
                status, message, flags = run_check(name, answer, check_timeout)
        out.append({"exercise": name, "status": status, "message": message, "flags": flags})
    return out


def _check_child(conn: Any, payloads: list[dict[str, Any]], check_timeout: float) -> None:
    try:
        conn.send(("ok", _check_payloads(payloads, check_timeout)))
    except BaseException as err:  # report anything, then exit
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


@functools.cache
def _context() -> Any:
    """A forkserver (a clean interpreter that has imported torch and the checks once,
    and forks one process per notebook from there) where the platform has one, else
    spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "course_lib.exercises", "course_lib.grading"])
        return ctx
    return multiprocessing.get_context("spawn")


def check_answers(
    payloads: list[dict[str, Any]], check_timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Check probed answers in a fresh process, so that nothing a notebook or an earlier
    notebook's answer did can touch the checks; one dict per payload with ``status``,
    ``message`` and ``flags``."""
    if not payloads:
        return []
    ctx = _context()
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_check_child, args=(there, payloads, check_timeout), daemon=True)
    proc.start()
    there.close()
    limit = check_timeout * len(payloads) + 60
    if here.poll(limit):
        try:
            kind, value = here.recv()
        except EOFError:
            kind, value = "error", "the checking process died"
    else:
        kind, value = "error", f"no verdict after {limit:.0f} s"
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if kind == "ok":
        return value
    return [
        {
            "exercise": p["exercise"],
            "status": "failed",
            "message": f"checking failed: {value}",
            "flags": [],
        }
        for p in payloads
    ]


# ---------------------------------------------------------------------------- one notebook
def grade_notebook(
    sub: Submission,
    refs: dict[str, Reference],
    *,
    profile: str = "smoke",
    time_limit: float = 600.0,
    data: Path | None = None,
    check_timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> list[Row]:
    """Grade one submitted notebook: the rows of its exercises."""
    notebook = sub.path.name
    try:
        nb = nbformat.read(sub.path, as_version=4)
    except Exception as err:
        return [Row(sub.student, notebook, "", "not reached", "", f"unreadable notebook: {err}")]
    ref = match_reference(nb, sub.path, refs)
    if ref is None:
        return [
            Row(
                sub.student,
                notebook,
                "",
                "not reached",
                "",
                "not a chapter of the course: it imports no course_lib.exercises module and "
                "its name contains no chapter name",
            )
        ]
    slots = plan_slots(nb, ref)
    tamper = scan_tampering(nb, ref)
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        shutil.copy2(sub.path, workdir / notebook)
        _link_data(data if data is not None else _default_data(), Path(tmp) / "data")
        run = execute_with_probes(
            nb, slots, workdir, kernel_env(profile, Path(tmp) / "data", env), time_limit
        )
    payloads = [run.payloads[s.name] for s in slots if s.name in run.payloads]
    verdicts = {v["exercise"]: v for v in check_answers(payloads, check_timeout)}
    rows = []
    for slot in slots:
        flags = [*slot.flags, *sorted(tamper.get(slot.name, set()) | tamper.get("*", set()))]
        v = verdicts.get(slot.name)
        if v is None:
            status = "not reached"
            message = f"the notebook {run.stopped}" if run.stopped else "the probe sent nothing"
        else:
            status, message = v["status"], v["message"]
            flags += v["flags"]
        rows.append(Row(sub.student, notebook, slot.name, status, "; ".join(flags), message))
    return rows


def _default_data() -> Path:
    from course_lib import data as data_module

    return data_module.data_root()


def grade(
    submissions: Path,
    out: Path,
    chapters: Path | None = None,
    *,
    profile: str = "smoke",
    time_limit: float = 600.0,
    jobs: int = 1,
    data: Path | None = None,
    check_timeout: float = 60.0,
    progress: Callable[[str], None] | None = print,
) -> list[Row]:
    """Grade every notebook under ``submissions`` against the chapters under
    ``chapters`` (default: the course's own) and write ``grades.csv``, ``grades.md`` and
    ``grades.html`` into ``out``; returns the rows."""
    say = progress or (lambda _line: None)
    chapters = chapters or COURSE_DIR.parent / "chapters"
    refs = load_references(chapters)
    subs = find_submissions(submissions)
    say(f"grading {len(subs)} notebook(s) of {len({s.student for s in subs})} student(s)")

    def one(sub: Submission) -> list[Row]:
        t0 = time.monotonic()
        rows = grade_notebook(
            sub,
            refs,
            profile=profile,
            time_limit=time_limit,
            data=data,
            check_timeout=check_timeout,
        )
        passed = sum(r.status == "passed" for r in rows)
        seconds = time.monotonic() - t0
        say(f"  {sub.student} / {sub.path.name}: {passed}/{len(rows)} passed ({seconds:.0f} s)")
        return rows

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = [r for batch in pool.map(one, subs) for r in batch]
    write_tables(rows, out)
    say(f"wrote {out / 'grades.csv'}, grades.md and grades.html")
    return rows


# ---------------------------------------------------------------------------- tables
MARK = {"passed": "✅", "failed": "❌", "todo": "⏳", "not reached": "⛔"}


def write_tables(rows: list[Row], out: Path) -> None:
    """``grades.csv`` (one row per student, notebook and exercise), and ``grades.md`` and
    ``grades.html`` (per-student totals, the matrix, then every message that is not a
    pass)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grades.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.student, r.notebook, r.exercise, r.status, r.flag, r.message])
    (out / "grades.md").write_text(_markdown(rows), encoding="utf-8")
    (out / "grades.html").write_text(_html(rows), encoding="utf-8")


def _matrix(rows: list[Row]) -> tuple[list[str], list[str], dict[tuple[str, str], Row]]:
    students = list(dict.fromkeys(r.student for r in rows))
    names = list(dict.fromkeys(r.exercise for r in rows if r.exercise))
    cells = {(r.student, r.exercise): r for r in rows if r.exercise}
    return students, names, cells


def _totals(rows: list[Row], student: str) -> dict[str, int]:
    return {s: sum(r.student == student and r.status == s for r in rows) for s in STATUSES}


def _markdown(rows: list[Row]) -> str:
    students, names, cells = _matrix(rows)
    lines = [
        "# Grades",
        "",
        "✅ passed · ❌ failed · ⏳ to do · ⛔ not reached (the notebook stopped earlier) · "
        "⚠ flagged (see below)",
        "",
        "| student | " + " | ".join(["passed", "failed", "to do", "not reached", *names]) + " |",
        "| --- " * (5 + len(names)) + "|",
    ]
    for s in students:
        t = _totals(rows, s)
        marks = []
        for n in names:
            r = cells.get((s, n))
            marks.append("" if r is None else MARK[r.status] + (" ⚠" if r.flag else ""))
        lines.append(
            f"| {s} | {t['passed']} | {t['failed']} | {t['todo']} | {t['not reached']} | "
            + " | ".join(marks)
            + " |"
        )
    notes = [r for r in rows if r.status != "passed" or r.flag]
    if notes:
        lines += [
            "",
            "## Messages and flags",
            "",
            "| student | exercise | status | flag | message |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in notes:
            msg = r.message.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {r.student} | {r.exercise or r.notebook} | {r.status} | {r.flag} | {msg} |"
            )
    return "\n".join(lines) + "\n"


def _html(rows: list[Row]) -> str:
    e = html.escape
    students, names, cells = _matrix(rows)
    head = "".join(
        f"<th>{e(h)}</th>" for h in ["student", "passed", "failed", "to do", "not reached", *names]
    )
    body = []
    for s in students:
        t = _totals(rows, s)
        tds = [f"<td>{e(s)}</td>", *(f"<td>{t[k]}</td>" for k in STATUSES)]
        for n in names:
            r = cells.get((s, n))
            if r is None:
                tds.append("<td></td>")
            else:
                title = e(f"{r.status}: {r.message}" + (f" [flag: {r.flag}]" if r.flag else ""))
                cls = r.status.replace(" ", "-") + (" flagged" if r.flag else "")
                mark = MARK[r.status] + (" ⚠" if r.flag else "")
                tds.append(f'<td class="{cls}" title="{title}">{mark}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(
        f"<tr><td>{e(r.student)}</td><td>{e(r.exercise or r.notebook)}</td><td>{e(r.status)}</td>"
        f"<td>{e(r.flag)}</td><td>{e(r.message)}</td></tr>"
        for r in rows
        if r.status != "passed" or r.flag
    )
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .5em}.failed{background:#fdd}"
        ".passed{background:#dfd}.todo{background:#ffd}.not-reached{background:#eee}"
        ".flagged{outline:2px solid #e80}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>Grades</title><style>{style}</style>"
        "<h1>Grades</h1><p>✅ passed · ❌ failed · ⏳ to do · ⛔ not reached · ⚠ flagged; "
        "hover a cell for the check's message.</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
        "<h2>Messages and flags</h2><table><tr><th>student</th><th>exercise</th>"
        f"<th>status</th><th>flag</th><th>message</th></tr>{notes}</table>\n"
    )


# ---------------------------------------------------------------------------- nbgrader
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


# ---------------------------------------------------------------------------- command line
def main(argv: Iterable[str] | None = None) -> int:
    """``python -m course_lib.grading SUBMISSIONS [--out DIR] ...``"""
    parser = argparse.ArgumentParser(description="Grade students' notebooks.")
    parser.add_argument(
        "submissions", type=Path, nargs="?", help="one notebook or folder per student"
    )
    parser.add_argument("--out", type=Path, default=Path("grades"), help="where the tables go")
    parser.add_argument("--chapters", type=Path, default=None, help="the course's chapters")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per notebook")
    parser.add_argument("--check-timeout", type=float, default=60.0, help="seconds per check")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run side by side")
    parser.add_argument("--data", type=Path, default=None, help="the course's data folder")
    parser.add_argument(
        "--export-nbgrader",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of grading, write the chapters as nbgrader source assignments in DIR",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.export_nbgrader is not None:
        chapters = args.chapters or COURSE_DIR.parent / "chapters"
        for path in export_nbgrader(chapters, args.export_nbgrader):
            print(path, flush=True)
        return 0
    if args.submissions is None:
        parser.error("give the folder of submissions (or --export-nbgrader DIR)")
    grade(
        args.submissions,
        args.out,
        args.chapters,
        profile=args.profile,
        time_limit=args.timeout,
        jobs=args.jobs,
        data=args.data,
        check_timeout=args.check_timeout,
        progress=lambda line: print(line, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
