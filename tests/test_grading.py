"""The grader on a fake class built from chapter 0 (the cheapest chapter with exercises),
the student build's deferral of the course's answers, and the nbgrader export."""

import csv
import functools
import inspect
import re
from pathlib import Path

import nbformat
import pytest

from course_lib import ddpm, exercises, grading
from course_lib.exercises import ch00  # noqa: F401  (registers chapter 0's checks)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "00_introduction" / "00_introduction.ipynb"
NOISED, PREDICT = "ch00.noised_parameters", "ch00.predict_std"


# ---------------------------------------------------------------------- the fake class
def _handed_out() -> nbformat.NotebookNode:
    """Chapter 0 as students get it, cut after the last exercise's check, and without
    the figure cells that no exercise needs (they only cost time here; the grader finds
    the exercises by cell id whatever a student deleted)."""
    nb = exercises.strip_solutions(nbformat.read(CHAPTER, as_version=4))
    found = exercises.find_exercises(nb)
    keep = {k for ex in found for k in (ex.exercise, ex.check)}
    code = [k for k, c in enumerate(nb.cells) if c.cell_type == "code"]
    keep |= set(code[:2])  # the Colab cell and the imports
    nb.cells = [
        c
        for k, c in enumerate(nb.cells[: found[-1].check + 1])
        if c.cell_type != "code" or k in keep
    ]
    return nb


def _solutions() -> dict[str, str]:
    """Each exercise's solution cell from the chapter, without its own check call."""
    nb = nbformat.read(CHAPTER, as_version=4)
    return {
        ex.name: "\n".join(
            line for line in nb.cells[ex.end].source.splitlines() if "ch00.check_" not in line
        )
        for ex in exercises.find_exercises(nb)
    }


def _wrong(name: str, variable: str) -> str:
    wrong = exercises.REGISTRY[name].wrong
    if callable(wrong):
        return inspect.getsource(wrong).replace(wrong.__name__, variable, 1)
    return f"{variable} = {wrong!r}"


def _student(answers: dict[str, str], after=None, before=None, replace=None):
    """The handed-out notebook with ``answers`` in the exercise cells; a new cell
    ``after[name]`` after that exercise's check, ``before[name]`` before it, and the
    check cell replaced by ``replace[name]``."""
    nb = _handed_out()
    cells = list(nb.cells)
    for ex in reversed(exercises.find_exercises(nb)):
        if ex.name in (after or {}):
            cells.insert(ex.check + 1, nbformat.v4.new_code_cell(after[ex.name]))
        if ex.name in (replace or {}):
            cells[ex.check] = nbformat.v4.new_code_cell(replace[ex.name])
        if ex.name in (before or {}):
            cells.insert(ex.check, nbformat.v4.new_code_cell(before[ex.name]))
        if ex.name in answers:
            cells[ex.exercise].source = answers[ex.name]
    nb.cells = cells
    return nb


MIXTURE = "ch00.mixture_score"
SCORE_WRAPPER = """def mixture_score(x, weights, means, stds):
    gm = GaussianMixture.isotropic(weights.tolist(), means.tolist(), stds.tolist())
    return gm.score(x)"""
COPIED = "from course_lib.exercises.ch00 import _noised_parameters as noised_parameters"
TIME_LIMIT = 45  # s per notebook: ~4x what one of these takes on 2 busy cores


@pytest.fixture(scope="module")
def names() -> list[str]:
    return [ex.name for ex in exercises.find_exercises(_handed_out())]


@pytest.fixture(scope="module")
def graded(tmp_path_factory, names) -> tuple[Path, dict[tuple[str, str], grading.Row]]:
    """The fake class, graded once: right, wrong, blank, crashing, too slow, tampered
    (an edited and a redefined check) and copied (the registry's solution and a thin
    wrapper of the library)."""
    assert names[:3] == [MIXTURE, NOISED, PREDICT]  # the chapter's order
    sol = _solutions()
    variables = {ex.name: ex.variable for ex in exercises.find_exercises(_handed_out())}
    first = names[0]
    students = {
        "right": _student(sol),
        "wrong": _student({n: _wrong(n, variables[n]) for n in names}),
        "blank": _student({}),
        "crashing": _student(sol, after={first: "x = undefined_name + 1"}),
        "slow": _student(sol, after={first: "import time\n\ntime.sleep(3600)"}),
        "tampered": _student(
            {NOISED: _wrong(NOISED, "noised_parameters"), PREDICT: sol[PREDICT]},
            before={MIXTURE: "ch00.check_mixture_score = lambda fn: print('✅ correct')"},
            replace={NOISED: "print('✅ correct [ch00.noised_parameters] well done.')"},
        ),
        "copied": _student({MIXTURE: SCORE_WRAPPER, NOISED: COPIED, PREDICT: sol[PREDICT]}),
    }
    root = tmp_path_factory.mktemp("class")
    (root / "submissions" / "right" / "week1").mkdir(parents=True)  # a JupyterHub-style folder
    for name, nb in students.items():
        path = root / "submissions" / f"{name}.ipynb"
        if name == "right":
            path = root / "submissions" / "right" / "week1" / "00_introduction.ipynb"
        nbformat.write(nb, path)
    rows = grading.grade(
        root / "submissions",
        root / "grades",
        time_limit=TIME_LIMIT,
        jobs=2,
        data=root / "no-data",
        progress=None,
    )
    return root / "grades", {(r.student, r.exercise): r for r in rows}


@pytest.mark.slow
def test_the_grade_table_of_the_fake_class(graded, names):
    _, table = graded
    assert {s for s, _ in table} == {
        "right",
        "wrong",
        "blank",
        "crashing",
        "slow",
        "tampered",
        "copied",
    }
    status = {key: row.status for key, row in table.items()}
    flag = {key: row.flag for key, row in table.items() if row.flag}
    rest = names[1:]
    want = {
        **{("right", n): "passed" for n in names},
        **{("wrong", n): "failed" for n in names},
        **{("blank", n): "todo" for n in names},
        ("crashing", names[0]): "passed",
        **{("crashing", n): "not reached" for n in rest},
        ("slow", names[0]): "passed",
        **{("slow", n): "not reached" for n in rest},
        ("tampered", MIXTURE): "todo",  # the grader's check, not the redefined one
        ("tampered", NOISED): "failed",  # the printed verdict is not read
        ("tampered", PREDICT): "passed",
        ("copied", MIXTURE): "passed",
        ("copied", NOISED): "passed",
        ("copied", PREDICT): "passed",
    }
    assert status == want
    assert flag == {
        ("tampered", MIXTURE): "check-redefined; forged-verdict",
        ("tampered", NOISED): "check-cell-edited; forged-verdict",
        ("tampered", PREDICT): "forged-verdict",
        ("copied", MIXTURE): "wraps-library-answer (gaussian_mixture.GaussianMixture.score)",
        ("copied", NOISED): "library-answer (exercises.ch00._noised_parameters)",
    }
    for n in rest:
        assert "NameError: name 'undefined_name' is not defined" in table["crashing", n].message
        assert "code cell" in table["crashing", n].message
        assert f"time limit of {TIME_LIMIT} s" in table["slow", n].message
    # the messages are the checks' own
    wrong_msg = exercises.REGISTRY[NOISED].run(exercises.REGISTRY[NOISED].wrong).message
    assert table["wrong", NOISED].message == wrong_msg
    assert table["blank", NOISED].message.startswith("not attempted yet")


@pytest.mark.slow
def test_the_grade_files(graded, names):
    out, table = graded
    with open(out / "grades.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == grading.CSV_COLUMNS
    assert len(rows) == len(table) == 7 * len(names)
    right = [r for r in rows if r["student"] == "right"]
    assert {r["notebook"] for r in right} == {"00_introduction.ipynb"}
    md = (out / "grades.md").read_text(encoding="utf-8")
    n = len(names)
    assert f"| right | {n} | 0 | 0 | 0 | " in md and f"| blank | 0 | 0 | {n} | 0 | " in md
    assert f"| slow | 1 | 0 | 0 | {n - 1} | " in md
    html = (out / "grades.html").read_text(encoding="utf-8")
    assert html.count("<tr>") == 1 + 7 + 1 + sum(
        r.status != "passed" or bool(r.flag) for r in table.values()
    )
    assert "wraps-library-answer" in html and "&lt;" not in md


# ---------------------------------------------------------------------- unit tests
def test_the_checks_flag_the_library_answer_and_thin_wrappers():
    status, _, flags = grading.run_check("ch03.q_sample", ddpm.q_sample)
    assert status == "passed" and flags == ["library-answer (ddpm.q_sample)"]
    _, _, flags = grading.run_check("ch03.q_sample", functools.partial(ddpm.q_sample))
    assert flags == ["library-answer (ddpm.q_sample)"]

    def q_sample(x0, t, schedule, eps):  # a thin wrapper
        return ddpm.q_sample(x0, t, schedule, eps)

    status, _, flags = grading.run_check("ch03.q_sample", q_sample)
    assert status == "passed" and flags == ["wraps-library-answer (ddpm.q_sample)"]
    solution = exercises.REGISTRY["ch03.q_sample"].solution
    _, _, flags = grading.run_check("ch03.q_sample", lambda *a: solution(*a))
    assert flags == ["wraps-library-answer (ch03.q_sample (the registry's own answer))"]

    def own(x0, t, schedule, eps):  # written by the student: the check's own calls are fine
        ab = schedule.alpha_bar.to(x0.dtype)[t].reshape(-1, *[1] * (x0.ndim - 1))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    assert grading.run_check("ch03.q_sample", own) == (
        "passed",
        exercises.REGISTRY["ch03.q_sample"].run(own).message,
        [],
    )


def test_a_check_that_hangs_is_stopped():
    def slow(*args):
        while True:
            pass

    status, message, _ = grading.run_check("ch00.noised_parameters", slow, check_timeout=0.5)
    assert status == "failed" and "CheckTimeout: the check ran past 0.5 s" in message


def test_scan_flags_patching_the_library_and_the_registry():
    ref = grading.Reference("ch00", "00_introduction", _handed_out(), [])
    ref.exercises = exercises.find_exercises(ref.nb)
    nb = _handed_out()
    nb.cells.append(nbformat.v4.new_code_cell("GaussianMixture.noised = lambda self, a, s: self"))
    nb.cells.append(nbformat.v4.new_code_cell("setattr(ch00, 'check_predict_std', print)"))
    flags = grading.scan_tampering(nb, ref)
    assert flags == {"*": {"library-patched"}, PREDICT: {"check-redefined"}}
    assert grading.scan_tampering(_handed_out(), ref) == {}


def test_submissions_are_one_notebook_or_one_folder_per_student(tmp_path):
    (tmp_path / "bob" / ".ipynb_checkpoints").mkdir(parents=True)
    for path in ["alice.ipynb", "bob/a/00.ipynb", "bob/.ipynb_checkpoints/00.ipynb", ".x.ipynb"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    found = grading.find_submissions(tmp_path)
    assert [(s.student, s.path.name) for s in found] == [
        ("alice", "alice.ipynb"),
        ("bob", "00.ipynb"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no notebook"):
        grading.find_submissions(tmp_path / "empty")


def test_library_answers_resolve_and_are_registered():
    for mod in ["ch00", "ch01", "ch02", "ch03", "ch04", "ch05", "ch06", "ch07", "ch08"]:
        __import__(f"course_lib.exercises.{mod}")
    for name, paths in exercises.LIBRARY_ANSWERS.items():
        assert name in exercises.REGISTRY, name
        for path in paths:
            assert grading.checks._code_objects(grading.checks._resolve(path)), path


@pytest.mark.parametrize("src", sorted(ROOT.glob("chapters/*/*.ipynb")), ids=lambda p: p.stem)
def test_the_student_build_shows_no_answer_before_its_exercise(src):
    nb = exercises.strip_solutions(nbformat.read(src, as_version=4))
    imports = exercises.course_imports(nb)
    found = exercises.find_exercises(nb)
    for k, cell in enumerate(nb.cells):
        shown = exercises.shown_objects(cell.source, imports) if cell.cell_type == "code" else []
        for ex in found:
            answers = exercises.LIBRARY_ANSWERS.get(ex.name, ())
            revealed = [s for s in shown for a in answers if exercises._reveals(s, a)]
            assert not (revealed and k < ex.exercise), (src.stem, k, ex.name, revealed)


def test_the_student_build_moves_the_answer_after_the_check():
    src = ROOT / "chapters" / "04_ddim" / "04_ddim.ipynb"
    full = nbformat.read(src, as_version=4)
    shown = [c.source for c in full.cells if c.source.strip() == "course_lib.show(ddim.ddim_sigma)"]
    assert shown, "chapter 4 no longer shows ddim.ddim_sigma: pick another example"
    nb = exercises.strip_solutions(full)
    ex = next(e for e in exercises.find_exercises(nb) if e.name == "ch04.ddim_sigma")
    assert nb.cells[ex.check + 1].source == shown[0]
    assert "after the check of `ddim_sigma`" in "".join(c.source for c in nb.cells[: ex.exercise])
    assert (
        len(nb.cells)
        == len(full.cells) - sum("solution" in c.metadata.get("tags", []) for c in full.cells) + 2
    )  # two notes, one for ddim_sigma and one for ddim_step


# ---------------------------------------------------------------------- nbgrader
def test_the_nbgrader_export(tmp_path):
    written = grading.export_nbgrader(ROOT / "chapters", tmp_path)
    assert [p.parent.name for p in written][:1] == ["00_introduction"]
    nb = nbformat.read(written[0], as_version=4)
    meta = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata]
    ids = [m["grade_id"] for m in meta]
    assert len(ids) == len(set(ids)) == 2 * len(exercises.find_exercises(_handed_out()))
    for m in meta:
        assert m["schema_version"] == 3 and m["task"] is False
        assert m["solution"] != m["grade"] and m["locked"] == m["grade"]
        assert m.get("points", 1.0) == 1.0
    assert not any("solution" in c.metadata.get("tags", []) for c in nb.cells)
    # the solution passes its test cell, nbgrader's stub of it does not
    import math

    import torch

    from course_lib.gaussian_mixture import GaussianMixture

    stub = re.compile(r"( *)### BEGIN SOLUTION.*?### END SOLUTION", re.S)
    for cell in nb.cells:
        m = cell.metadata.get("nbgrader", {})
        if m.get("solution"):
            answer = cell.source
        elif m.get("grade"):
            ns = {"torch": torch, "math": math, "GaussianMixture": GaussianMixture}
            exec(answer, ns)
            exec(cell.source, ns)  # raises unless the check passes
            ns = {"torch": torch, "math": math}
            released = stub.sub(r"\1# YOUR CODE HERE\n\1raise NotImplementedError()", answer)
            with pytest.raises((AssertionError, NotImplementedError)):
                exec(released, ns)
                exec(cell.source, ns)
