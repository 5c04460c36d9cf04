"""Grading one notebook (:func:`grade_notebook`: find its chapter, plan the probes, scan
for tampering, run it, check the answers) and a whole class (:func:`grade`: every
submission, then the tables)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from course_lib.grading.checks import check_answers
from course_lib.grading.execute import _link_data, execute_with_probes, kernel_env
from course_lib.grading.flags import scan_tampering
from course_lib.grading.report import Row, write_tables
from course_lib.grading.slots import plan_slots
from course_lib.grading.submissions import (
    COURSE_DIR,
    Reference,
    Submission,
    find_submissions,
    load_references,
    match_reference,
)


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
