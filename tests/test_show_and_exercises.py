import importlib
import pkgutil

import nbformat
import pytest

import course_lib.exercises as exercises
from course_lib.gaussian_mixture import GaussianMixture

show_module = importlib.import_module("course_lib.show")  # course_lib.show is the function


def test_source_is_the_real_code():
    text = show_module.source(GaussianMixture.noised)
    assert text.startswith("def noised(self, a: float, s: float)")
    assert "a**2 * self.covariances" in text


def test_show_prints_outside_a_notebook(capsys):
    show_module.show(GaussianMixture.noised, docstring=False)
    out = capsys.readouterr().out
    assert "course_lib.gaussian_mixture.GaussianMixture.noised" in out
    assert "The law of" not in out and "a**2" in out


def test_show_rejects_builtins():
    with pytest.raises(TypeError, match="cannot show"):
        show_module.source(len)


def _all_exercises():
    for mod in pkgutil.iter_modules(exercises.__path__):
        importlib.import_module(f"course_lib.exercises.{mod.name}")
    return list(exercises.REGISTRY.values())


@pytest.mark.parametrize("ex", _all_exercises(), ids=lambda e: e.name)
def test_every_check_passes_its_solution_and_fails_the_wrong_answer(ex):
    assert ex.run(ex.solution).passed
    result = ex.run(ex.wrong)
    assert result.status == "failed" and len(result.message) > 20


def test_unattempted_and_crashing_answers():
    ex = _all_exercises()[0]

    def todo(*args):
        raise NotImplementedError

    def crash(*args):
        return 1 / 0

    assert ex.run(todo).status == "todo"
    crashed = ex.run(crash)
    assert crashed.status == "failed" and "ZeroDivisionError" in crashed.message


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        exercises.exercise(next(iter(exercises.REGISTRY)), solution=1, wrong=2)(lambda a: None)


def test_student_notebook_has_no_solutions(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = ...", metadata={"tags": ["exercise"]}),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["solution", "hide-input"]}),
        nbformat.v4.new_code_cell("print(x)", outputs=[nbformat.v4.new_output("stream", text="1")]),
    ]
    out = exercises.strip_solutions(nb)
    assert [c.source for c in out.cells] == ["x = ...", "print(x)"]
    assert out.cells[1].outputs == []
    (tmp_path / "chapters" / "00_a").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "chapters" / "00_a" / "00_a.ipynb")
    written = exercises.write_student_notebooks(tmp_path / "chapters", tmp_path / "student")
    assert [p.name for p in written] == ["00_a.ipynb"]
    assert len(nbformat.read(written[0], as_version=4).cells) == 2
