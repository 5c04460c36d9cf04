"""Build the Jupyter Book from ``book.yml``.

Jupyter Book 1 (Sphinx) builds offline, executing the notebooks; Jupyter Book 2 would
download its theme at build time, so the course stays on 1.x. This script turns the one
configuration, ``book.yml``, into the ``_config.yml`` and ``_toc.yml`` that Jupyter Book
reads, in a staging folder under ``_build/`` (so nobody edits generated copies), and
stages the chapters there:

* a chapter that the test run has already executed in the same profile, from the same
  sources (``_build/executed/<profile>/``, written by ``tests/conftest.py``), is used
  with its outputs and not executed again;
* every other chapter is executed by the build, in the profile of ``COURSE_PROFILE``
  (default: ``execution.profile`` of ``book.yml``).

Any cell error fails the build.

Usage: ``python book/build.py [--profile smoke|cpu|gpu] [--out _build/book]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]


def read_book_config(root: Path = ROOT) -> dict:
    with open(root / "book.yml") as f:
        return yaml.safe_load(f)


def source_digest(notebook: Path, root: Path = ROOT) -> str:
    """A hash of a chapter's source and of ``course_lib``: an executed copy is reused
    only while both are unchanged."""
    h = hashlib.sha256()
    for path in [notebook.with_suffix(".py"), *sorted((root / "course_lib").rglob("*.py"))]:
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def executed_copy(notebook: Path, profile: str, root: Path = ROOT) -> Path:
    return root / "_build" / "executed" / profile / notebook.name


def sphinx_config(cfg: dict, profile: str) -> dict:
    repo = cfg["repository"]
    execution = cfg.get("execution", {})
    return {
        "title": cfg["title"],
        "author": cfg["author"],
        "copyright": str(cfg.get("copyright", "")),
        "only_build_toc_files": True,
        "execute": {
            "execute_notebooks": "force",
            "timeout": int(execution.get("timeout", 1800)),
            "allow_errors": False,
            "stderr_output": "show",
        },
        "bibtex_bibfiles": ["references.bib"],
        "repository": {
            "url": repo["url"],
            "branch": repo.get("branch", "main"),
            "path_to_book": "",
        },
        "launch_buttons": {
            "colab_url": "https://colab.research.google.com"
            if cfg.get("launch_buttons", {}).get("colab")
            else "",
            "notebook_interface": "jupyterlab",
        },
        "html": {
            "use_repository_button": True,
            "use_issues_button": False,
            "home_page_in_navbar": True,
        },
        "parse": {"myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence", "deflist"]},
        "sphinx": {
            "extra_extensions": ["sphinx-mathjax-offline"],
            "config": {
                "nb_execution_raise_on_error": True,
                "bibtex_reference_style": "author_year",
                "html_show_copyright": True,
                "suppress_warnings": ["mystnb.unknown_mime_type"],
                "html_context": {"course_profile": profile},
            },
        },
    }


def stage(cfg: dict, profile: str, src: Path, root: Path = ROOT) -> list[str]:
    """Write the book's sources into ``src``; return the chapters that will be executed."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    to_run = []
    for page in [cfg["intro"], *cfg.get("appendix", [])]:
        shutil.copy(root / page, src / Path(page).name)
    shutil.copy(root / cfg["bibliography"], src / "references.bib")
    for rel in cfg["chapters"]:
        nb_path = root / rel
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        done = executed_copy(nb_path, profile, root)
        nb = None
        if done.exists():
            cand = nbformat.read(done, as_version=4)
            if cand.metadata.get("course", {}).get("digest") == source_digest(nb_path, root):
                nb = cand
                nb.metadata["mystnb"] = {"execution_mode": "off"}
        if nb is None:
            nb = nbformat.read(nb_path, as_version=4)
            to_run.append(rel)
        nbformat.write(nb, dst)
    toc = {
        "format": "jb-book",
        "root": Path(cfg["intro"]).stem,
        "parts": [
            {
                "caption": "Chapters",
                "chapters": [{"file": str(Path(c).with_suffix(""))} for c in cfg["chapters"]],
            },
            {
                "caption": "For teachers and readers",
                "chapters": [{"file": Path(p).stem} for p in cfg.get("appendix", [])],
            },
        ],
    }
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (src / "_config.yml").write_text(yaml.safe_dump(sphinx_config(cfg, profile), sort_keys=False))
    return to_run


def build(profile: str | None = None, out: Path | None = None, root: Path = ROOT) -> Path:
    """Stage and build the book; return the path of its ``index.html``."""
    cfg = read_book_config(root)
    profile = (
        profile
        or os.environ.get("COURSE_PROFILE")
        or cfg.get("execution", {}).get("profile", "cpu")
    )
    out = out or root / "_build" / "book"
    src = out / "src"
    to_run = stage(cfg, profile, src, root)
    names = ", ".join(to_run) or "none"
    print(f"book: profile {profile}; executing {len(to_run)} chapter(s): {names}")
    env = {**os.environ, "COURSE_PROFILE": profile}
    env.pop("MPLBACKEND", None)  # kernels must use the inline backend, or figures vanish
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(jb),
        "build",
        str(src),
        "--path-output",
        str(out),
        "--builder",
        "html",
        "--keep-going",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=root, text=True, capture_output=True)
    log = proc.stdout + proc.stderr
    (out / "build.log").write_text(log)
    failed = (
        proc.returncode != 0
        or "Executing notebook failed" in log
        or ("Traceback" in log and "reports" in log)
    )
    if failed:
        print(log[-6000:])
        raise SystemExit(f"book build failed (full log: {out / 'build.log'})")
    index = out / "_build" / "html" / "index.html"
    print(f"book: built in {time.perf_counter() - t0:.0f} s -> {index}")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["smoke", "cpu", "gpu"], default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    build(args.profile, args.out)


if __name__ == "__main__":
    main()
