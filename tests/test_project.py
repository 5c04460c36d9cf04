"""The project's own files agree with each other."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        _name(r) for r in pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]
    }
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        elif not dep.startswith(("python", "pip")):
            listed.add(_name(dep))
    aliases = {"pytorch": "torch"}  # conda's name for torch
    listed = {aliases.get(n, n) for n in listed}
    assert listed == wanted, (
        f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    )


def test_no_torchvision_anywhere():
    for path in [*ROOT.glob("course_lib/**/*.py"), *ROOT.glob("chapters/*/*.py")]:
        assert not re.search(r"^\s*(import|from) torchvision", path.read_text(), re.M), path


def test_data_folder_holds_only_its_readme():
    tracked = [p.name for p in (ROOT / "data").iterdir() if not p.name.startswith(".")]
    assert "README.md" in tracked
    gitignore = (ROOT / ".gitignore").read_text()
    assert "data/*" in gitignore and "!data/README.md" in gitignore


def test_readme_documents_the_commands():
    readme = (ROOT / "README.md").read_text()
    for cmd in (
        "python3 run.py book",
        "python3 run.py test",
        "python3 run.py lab",
        "python3 run.py student",
    ):
        assert cmd in readme


def test_every_subpackage_is_installed():
    """A non-editable install (Colab's ``pip install --no-deps git+...``) ships only the
    packages pyproject.toml lists: every folder of course_lib with an ``__init__.py``
    must be there, or ``import course_lib.exercises`` fails on Colab and nowhere else."""

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "course_lib").rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
