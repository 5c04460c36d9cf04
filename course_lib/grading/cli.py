"""The command line: ``python -m course_lib.grading`` (``python3 run.py grade`` calls
it)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from course_lib.grading.grader import grade
from course_lib.grading.nbgrader import export_nbgrader
from course_lib.grading.submissions import COURSE_DIR


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m course_lib.grading SUBMISSIONS [--out DIR] ...``"""
    # named: under ``-m`` argv[0] is ``__main__.py``, which tells the reader nothing
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grading", description="Grade students' notebooks."
    )
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
