"""The chapters as files: pairing, no outputs, the header every chapter must have, the
Colab set-up pointing at the repository of book.yml, exercises with checks."""

import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = yaml.safe_load((ROOT / "book.yml").read_text())
CHAPTERS = sorted(ROOT.glob("chapters/*/*.py"))


def test_every_chapter_is_in_the_book_and_paired():
    listed = {ROOT / c for c in BOOK["chapters"]}
    assert listed == {p.with_suffix(".ipynb") for p in CHAPTERS}
    for p in CHAPTERS:
        assert p.parent.name == p.stem, f"{p}: the folder and the file must share the chapter name"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(py):
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    src = jupytext.read(py)
    assert [c.source for c in nb.cells] == [c.source for c in src.cells], (
        f"{py.name} and its .ipynb differ: run `python run.py sync`"
    )
    assert [c.metadata.get("tags", []) for c in nb.cells] == [
        c.metadata.get("tags", []) for c in src.cells
    ]
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, (
                f"{py.name}: commit without outputs"
            )


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_header_badge_and_colab_setup(py):
    nb = jupytext.read(py)
    first = nb.cells[0].source
    repo = BOOK["repository"]["url"].removeprefix("https://github.com/")
    rel = py.with_suffix(".ipynb").relative_to(ROOT).as_posix()
    badge = (
        f"https://colab.research.google.com/github/{repo}/blob/{BOOK['repository']['branch']}/{rel}"
    )
    assert badge in first, "the Colab badge must open this notebook in the repository of book.yml"
    for heading in ("Learning goals", "Prerequisites", "Run time"):
        assert heading in first
    assert all(p in first for p in ("`smoke`", "`cpu`", "`gpu`"))
    setup = next(c.source for c in nb.cells if c.cell_type == "code")
    assert '"google.colab" in sys.modules' in setup
    assert f"git+{BOOK['repository']['url']}" in setup
    assert "torch" not in setup.split("git+")[0].replace("Colab's torch", "")


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_exercises_have_checks_and_solutions(py):
    nb = jupytext.read(py)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    n_ex = sum("exercise" in t for t in tags)
    assert n_ex >= 1 if py.stem.startswith("00") else n_ex >= 2
    for i, t in enumerate(tags):
        if "exercise" in t:
            assert re.search(r"check_\w+\(", nb.cells[i + 1].source), (
                "an exercise is followed by its check"
            )
            assert "solution" in tags[i + 2] and "hide-input" in tags[i + 2]


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ends_with_results_summary_and_reading(py):
    text = py.read_text()
    for heading in ("## Results card", "## Summary", "## Further reading"):
        assert heading in text
    assert "{cite}" in text


#: course_lib's runtime dependencies that a Colab runtime already has (its own builds are
#: kept: the set-up cell installs course_lib with --no-deps), and those only the local
#: JupyterLab needs. Everything else in pyproject.toml must be installed by the set-up cell.
COLAB_HAS = {"torch", "numpy", "scipy", "matplotlib", "scikit-learn", "ipywidgets", "tqdm"}
NOT_IN_A_KERNEL = {"ipykernel", "jupyterlab", "jupytext"}


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_colab_setup_installs_what_colab_lacks(py):
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower(): d for d in deps}
    unknown = set(names) - COLAB_HAS - NOT_IN_A_KERNEL
    setup = next(c.source for c in jupytext.read(py).cells if c.cell_type == "code")
    installed = set(re.findall(r'"install", "-q", "([^"]+)"', setup))
    assert installed == {names[n] for n in unknown}, (
        f"{py.name}: the Colab cell must pip-install exactly {sorted(names[n] for n in unknown)} "
        f"(as pyproject.toml declares them), found {sorted(installed)}"
    )
