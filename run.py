#!/usr/bin/env python3
"""One entry point for the course: set up, run the chapters, build the book, test.

Needs only Python 3.10+ (standard library) to start; everything else goes into a
virtual environment in ``.venv``.

    python3 run.py book      # set up, execute every chapter, build the HTML book (-j N)
    python3 run.py test      # set up, run the whole test suite (what CI runs)
    python3 run.py lab       # set up, open JupyterLab on the chapters
    python3 run.py student   # write notebooks without solutions into student/
    python3 run.py grade SUBMISSIONS/  # run and check students' notebooks: grades/*.csv|md|html
    python3 run.py sync      # re-pair chapters/*/*.py with their .ipynb (jupytext)
    python3 run.py bench     # time every chapter per profile (benchmarks/)
    python3 run.py throughput  # training / sampling images/s of the image model

PyTorch: if the Python that runs this script already has torch (a CUDA build, say), the
virtual environment sees it (``--system-site-packages``) and it is never replaced;
otherwise the known-good version below is installed before anything else, so that pip
never resolves a different, multi-gigabyte torch on its own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("COURSE_VENV", ROOT / ".venv"))
KNOWN_GOOD_TORCH = "torch==2.13.0"


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def sh(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=check).returncode


def has_torch(python: str | Path) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def setup() -> Path:
    """Create ``.venv`` and install the course into it (skipped when up to date)."""
    t0 = time.perf_counter()
    py = venv_python()
    if not py.exists():
        args = [sys.executable, "-m", "venv", VENV]
        if has_torch(sys.executable):
            args.append("--system-site-packages")  # keep the user's own torch
        sh(*args)
        sh(py, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    stamp = VENV / ".course-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return py
    if not has_torch(py):
        sh(py, "-m", "pip", "install", "--quiet", KNOWN_GOOD_TORCH)
    sh(py, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    stamp.write_text(digest)
    print(f"setup: done in {time.perf_counter() - t0:.0f} s ({VENV})", flush=True)
    return py


def course_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("MPLBACKEND", None)  # notebook kernels must use the inline backend
    env["PATH"] = f"{venv_python().parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def cmd_book() -> None:
    py = setup()
    sh(py, "book/build.py", *sys.argv[2:], env=course_env())


def cmd_test() -> None:
    """Lint, unit and ground-truth tests, every chapter in ``smoke`` (nbval), then the
    book in ``smoke``, reusing the notebooks the first stage executed."""
    py = setup()
    env = course_env(COURSE_PROFILE="smoke")
    t0 = time.perf_counter()
    sh(py, "-m", "ruff", "check", ".", env=env)
    sh(py, "-m", "ruff", "format", "--check", ".", env=env)
    sh(
        py,
        "-m",
        "pytest",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-m",
        "not book",
        "--nbval-lax",
        "--nbval-current-env",
        env=env,
    )
    sh(py, "-m", "pytest", "-m", "book", "tests", env=env)
    print(f"test: everything passed in {time.perf_counter() - t0:.0f} s", flush=True)


def cmd_lab() -> None:
    py = setup()
    sh(py, "-m", "jupyter", "lab", "chapters", env=course_env())


def cmd_student() -> None:
    py = setup()
    code = (
        "from pathlib import Path; from course_lib.exercises import write_student_notebooks as w;"
        "[print(p) for p in w(Path('chapters'), Path('student'))]"
    )
    sh(py, "-c", code, env=course_env())


def cmd_grade() -> None:
    """``grade SUBMISSIONS [--out DIR] [--timeout S] [--profile P] [--jobs N]
    [--export-nbgrader DIR]``: see ``course_lib/grading/``. Paths are taken relative
    to where run.py was started, so this runs there and not in the repository."""
    py = setup()
    cmd = [str(py), "-m", "course_lib.grading", *sys.argv[2:]]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=course_env(), check=True)


def cmd_sync() -> None:
    py = setup()
    sh(py, "-m", "jupytext", "--sync", *sorted(ROOT.glob("chapters/*/*.py")), env=course_env())


def cmd_bench() -> None:
    py = setup()
    sh(py, "benchmarks/run_chapters.py", *sys.argv[2:], env=course_env())


def cmd_throughput() -> None:
    py = setup()
    sh(py, "benchmarks/throughput.py", *sys.argv[2:], env=course_env())


COMMANDS = {
    "book": cmd_book,
    "test": cmd_test,
    "lab": cmd_lab,
    "student": cmd_student,
    "grade": cmd_grade,
    "sync": cmd_sync,
    "bench": cmd_bench,
    "throughput": cmd_throughput,
    "setup": setup,
}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in COMMANDS:
        sys.exit(f"usage: python3 run.py {{{'|'.join(COMMANDS)}}}")
    try:
        COMMANDS[name]()
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
