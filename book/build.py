"""Build the Jupyter Book from ``book.yml``: execute the chapters, then render them.

Jupyter Book 1 (Sphinx) builds offline; Jupyter Book 2 would download its theme at build
time, so the course stays on 1.x. This script turns the one configuration, ``book.yml``,
into the ``_config.yml`` and ``_toc.yml`` that Jupyter Book reads, in a staging folder
under ``_build/`` (so nobody edits generated copies). It executes the chapters itself,
with the course's runner (:mod:`course_lib.runner`), before Jupyter Book renders them
with its own execution switched off:

* a chapter already executed in the same profile from the same sources (its copy in
  ``_build/executed/<profile>/`` carries a digest of the chapter and of ``course_lib``;
  the test run writes those copies too) is reused, not executed again;
* the others run in a fresh kernel each, in the order ``needs`` of ``book.yml`` asks
  (a chapter that loads another's trained models runs after it), ``-j N`` at a time
  when independent, each printing its progress (section, cell count, elapsed and
  expected time from ``benchmarks/results.md``);
* a cell that raises or outlives the per-cell timeout stops its chapter with a message
  naming the chapter and the cell; the build ends with a table of every chapter's
  status and time (also written to ``<out>/timings.md``) and fails if any chapter did.

Usage: ``python book/build.py [--profile smoke|cpu|gpu] [--out _build/book] [-j N]
[--timeout SECONDS]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
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
            "execute_notebooks": "off",  # executed by run_chapters() first
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
            # book/_ext/course_book.py: MathJax on every page, each script once,
            # course.css (wide math and code scroll in their box)
            "local_extensions": {"course_book": "_ext"},
            "config": {
                "nb_execution_raise_on_error": True,
                "bibtex_reference_style": "author_year",
                "html_show_copyright": True,
                "suppress_warnings": ["mystnb.unknown_mime_type"],
                # the theme's mode on a first visit (figures are drawn on white); left
                # empty, the theme logs "Got invalid theme mode" to the browser console
                "html_context": {"course_profile": profile, "default_mode": "light"},
            },
        },
    }


#: what marks a chapter's Colab set-up cell (``tests/test_chapters.py`` checks it is there)
COLAB_SETUP = '"google.colab" in sys.modules'
#: matplotlib's animations link Font Awesome 4 from a CDN for their buttons; the book's
#: theme ships the icons itself (``_static/scripts/fontawesome.js``)
CDN_ICONS = re.compile(
    r'<link rel="stylesheet"\s+href="https://maxcdn\.bootstrapcdn\.com/font-awesome/[^"]*"\s*/?>\n?'
)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def for_the_book(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Adapt an executed chapter to the book; the notebook itself keeps everything.

    * The Colab set-up cell, and the note before it that explains it, are tagged
      ``remove-cell``: Colab plumbing, not course content, they filled the first screen
      of every chapter. The notebook (what Colab opens) keeps them.
    * The code that assembles the results card is collapsed (``hide-input``): the reader
      sees the card's table, and can open the code behind it.
    * Animations no longer fetch their button icons from a CDN, and progress bars
      (ipywidgets) are kept as their text (``100%|####| 30/30``) without the widget state
      that made the page load require.js and the widget manager from two CDNs: the book
      needs no network (offline those requests failed in the browser console).
    """
    nb.metadata.pop("widgets", None)
    cells = nb.cells
    setup = next(
        (i for i, c in enumerate(cells) if c.cell_type == "code" and COLAB_SETUP in c.source),
        None,
    )
    if setup is not None:
        hide = [setup]
        before = cells[setup - 1] if setup > 1 else None  # cell 0 is the header
        if before is not None and before.cell_type == "markdown" and "Colab" in before.source:
            hide.append(setup - 1)
        for i in hide:
            _tag(cells[i], "remove-cell")
    card = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown" and "## Results card" in c.source
        ),
        None,
    )
    if card is not None and card + 1 < len(cells) and cells[card + 1].cell_type == "code":
        _tag(cells[card + 1], "hide-input")
    for cell in cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            out.get("data", {}).pop(WIDGET_VIEW, None)
            html = out.get("data", {}).get("text/html")
            if html is not None:
                text = "".join(html) if isinstance(html, list) else html
                out["data"]["text/html"] = CDN_ICONS.sub("", text)
    return nb


def _tag(cell: nbformat.NotebookNode, tag: str) -> None:
    tags = cell.metadata.setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def stage(cfg: dict, profile: str, src: Path, root: Path = ROOT) -> None:
    """Write the book's sources into ``src``: the pages, and every chapter's executed copy
    (all of them must be up to date: :func:`run_chapters` first)."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for page in [cfg["intro"], *cfg.get("appendix", [])]:
        shutil.copy(root / page, src / Path(page).name)
    shutil.copy(root / cfg["bibliography"], src / "references.bib")
    shutil.copytree(
        root / "book" / "_ext", src / "_ext", ignore=shutil.ignore_patterns("__pycache__")
    )
    for rel in cfg["chapters"]:
        nb = nbformat.read(executed_copy(root / rel, profile, root), as_version=4)
        nb.metadata["mystnb"] = {"execution_mode": "off"}
        for_the_book(nb)
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
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


# ------------------------------------------------------------------ executing chapters
@dataclass
class Outcome:
    """How one chapter fared: ``status`` is ``"ran"``, ``"kept"`` (its executed copy
    was up to date) or ``"failed"`` (``reason`` says where and why)."""

    chapter: str
    status: str
    seconds: float = 0.0
    reason: str = ""


def is_up_to_date(notebook: Path, profile: str, root: Path = ROOT) -> bool:
    """Whether ``notebook``'s executed copy in ``profile`` was made from the current
    chapter source and ``course_lib``."""
    done = executed_copy(notebook, profile, root)
    if not done.exists():
        return False
    meta = nbformat.read(done, as_version=4).metadata.get("course", {})
    return meta.get("digest") == source_digest(notebook, root)


def expected_seconds(profile: str, root: Path = ROOT) -> dict[str, float]:
    """Each chapter's measured wall time in ``profile`` from ``benchmarks/results.md``
    (rows ``| 03_ddpm | cpu | device | 287 s | ...``; the first row of a chapter wins)."""
    path = root / "benchmarks" / "results.md"
    found: dict[str, float] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[1] == profile and cells[3].endswith(" s"):
            try:
                found.setdefault(cells[0], float(cells[3][:-2]))
            except ValueError:
                continue
    return found


def schedule(
    chapters: list[str],
    needs: dict[str, list[str]],
    jobs: int,
    run_one: Callable[[str], Outcome],
) -> dict[str, Outcome]:
    """Run ``run_one(chapter)`` for every chapter, at most ``jobs`` at a time, starting a
    chapter only once the chapters it ``needs`` (those among ``chapters``) have finished.
    A chapter whose need failed still runs: it trains what it would have loaded."""
    unknown = {n for deps in needs.values() for n in deps} - set(chapters)
    pending = list(chapters)
    done: dict[str, Outcome] = {}
    running: dict[Future[Outcome], str] = {}
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        while pending or running:
            ready = [c for c in pending if all(d in done or d in unknown for d in needs.get(c, []))]
            if not ready and not running:
                raise ValueError(f"book.yml: the needs of {pending} form a cycle")
            for c in ready[: max(1, jobs) - len(running)]:
                pending.remove(c)
                running[pool.submit(run_one, c)] = c
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                done[running.pop(f)] = f.result()
    return done


def run_in_subprocess(
    notebook: Path,
    profile: str,
    cell_timeout: int,
    expected: float | None,
    threads: int | None,
    root: Path = ROOT,
) -> Outcome:
    """Execute ``notebook`` with ``python -m course_lib.runner`` in ``profile`` (its
    progress lines are echoed), then store it as the executed copy with its digest."""
    name = notebook.stem
    digest = source_digest(notebook, root)  # of the sources this run starts from
    tmp = executed_copy(notebook, profile, root).with_name(f".{notebook.name}.run")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COURSE_PROFILE": profile, "PYTHONUNBUFFERED": "1"}
    env.pop("MPLBACKEND", None)  # kernels must use the inline backend, or figures vanish
    if threads is not None:  # chapters side by side: split the cores between them
        env.setdefault("COURSE_THREADS", str(threads))
        env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = [sys.executable, "-m", "course_lib.runner", str(notebook), "--out", str(tmp)]
    cmd += ["--label", name, "--timeout", str(cell_timeout)]
    if expected:
        cmd += ["--expected", str(expected)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, text=True, stdout=subprocess.PIPE)
    reason = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("FAILED "):
            reason = line.removeprefix("FAILED ").strip()
        if not line.startswith("SECONDS "):
            print(line, end="", flush=True)
    seconds = time.perf_counter() - t0
    if proc.wait() != 0:
        return Outcome(name, "failed", seconds, reason or f"the runner exited {proc.returncode}")
    nb = nbformat.read(tmp, as_version=4)
    nb.metadata["course"] = {"profile": profile, "digest": digest}
    nbformat.write(nb, tmp)
    tmp.replace(executed_copy(notebook, profile, root))
    return Outcome(name, "ran", seconds)


def run_chapters(
    cfg: dict, profile: str, jobs: int = 1, cell_timeout: int | None = None, root: Path = ROOT
) -> list[Outcome]:
    """Execute every chapter whose executed copy is missing or stale; return one
    :class:`Outcome` per chapter, in the book's order."""
    notebooks = {Path(rel).stem: root / rel for rel in cfg["chapters"]}
    needs = {k: list(v) for k, v in (cfg.get("needs") or {}).items()}
    for k, deps in needs.items():
        if k not in notebooks or any(d not in notebooks for d in deps):
            raise ValueError(f"book.yml: needs of {k!r} name an unknown chapter: {deps}")
    to_run = [n for n, nb in notebooks.items() if not is_up_to_date(nb, profile, root)]
    kept = [n for n in notebooks if n not in to_run]
    expected = expected_seconds(profile, root)
    timeout = cell_timeout or int(cfg.get("execution", {}).get("timeout", 1800))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 and len(to_run) > 1 else None
    print(
        f"book: profile {profile}; {len(kept)} chapter(s) up to date, executing "
        f"{len(to_run)} ({', '.join(to_run) or 'none'}) with -j {jobs}; "
        f"cell timeout {timeout} s",
        flush=True,
    )
    lock = threading.Lock()

    def run_one(name: str) -> Outcome:
        outcome = run_in_subprocess(
            notebooks[name], profile, timeout, expected.get(name), threads, root
        )
        with lock:
            print(f"book: {name} {outcome.status} in {outcome.seconds:.0f} s", flush=True)
        return outcome

    done = schedule(to_run, needs, jobs, run_one)
    return [done.get(n) or Outcome(n, "kept") for n in notebooks]


def timings_table(outcomes: list[Outcome], expected: dict[str, float]) -> str:
    """The build's closing table: chapter, status, measured and expected time."""
    rows = ["| chapter | status | time | expected |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        status = "up to date (reused)" if o.status == "kept" else o.status
        if o.status == "failed":
            status = f"FAILED: {o.reason}"
        took = f"{o.seconds:.0f} s" if o.status != "kept" else "—"
        exp = f"{expected[o.chapter]:.0f} s" if o.chapter in expected else "—"
        rows.append(f"| {o.chapter} | {status} | {took} | {exp} |")
    return "\n".join(rows)


def build(
    profile: str | None = None,
    out: Path | None = None,
    root: Path = ROOT,
    jobs: int = 1,
    cell_timeout: int | None = None,
) -> Path:
    """Execute the chapters that need it, stage and render the book; return the path of
    its ``index.html``. Raises ``SystemExit`` naming the failed chapters."""
    cfg = read_book_config(root)
    profile = (
        profile
        or os.environ.get("COURSE_PROFILE")
        or cfg.get("execution", {}).get("profile", "cpu")
    )
    out = out or root / "_build" / "book"
    src = out / "src"
    t_all = time.perf_counter()
    outcomes = run_chapters(cfg, profile, jobs, cell_timeout, root)
    table = timings_table(outcomes, expected_seconds(profile, root))
    out.mkdir(parents=True, exist_ok=True)
    (out / "timings.md").write_text(f"Profile {profile}, -j {jobs}.\n\n{table}\n")
    print(table, flush=True)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise SystemExit(
            "book build failed: "
            + "; ".join(f"{o.chapter} ({o.reason})" for o in failed)
            + ". Fix the chapter, then run the build again: chapters that passed are kept."
        )
    stage(cfg, profile, src, root)
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
    print(
        f"book: rendered in {time.perf_counter() - t0:.0f} s, "
        f"{time.perf_counter() - t_all:.0f} s in all -> {index}"
    )
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["smoke", "cpu", "gpu"], default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("-j", "--jobs", type=int, default=1, help="chapters run side by side")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    build(args.profile, args.out, jobs=args.jobs, cell_timeout=args.timeout)


if __name__ == "__main__":
    main()
