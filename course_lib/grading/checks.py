"""Checking the probed answers with the course's own checks, in a process forked from a
clean interpreter (:func:`check_answers`), and tracing whether an answer is, or calls,
the course's code (:func:`run_check`).

The checking process runs ``_check_child``, which the forkserver finds by its module
path (``course_lib.grading.checks``); the forkserver preloads ``course_lib.grading``,
which imports this module."""

from __future__ import annotations

import base64
import functools
import importlib
import multiprocessing
import signal
import sys
from pathlib import Path
from typing import Any

from course_lib import exercises
from course_lib.grading.submissions import COURSE_DIR


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
