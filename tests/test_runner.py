"""The headless runner: no widget stall, progress, errors that name the cell, and the
book build's scheduler (needs, -j, reuse of up-to-date chapters)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from course_lib import runner

ROOT = Path(__file__).resolve().parents[1]


def _build_module():
    if "course_book_build" in sys.modules:
        return sys.modules["course_book_build"]
    spec = importlib.util.spec_from_file_location("course_book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["course_book_build"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build = _build_module()


def _notebook(path: Path, cells: list[nbformat.NotebookNode]) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, path)
    return path


def _output_widget_notebook(path: Path, n: int) -> Path:
    """The reproduction of ../shared/repro/output-widget-stall: ``n`` cells, each
    printing into an ``ipywidgets.Output`` widget (what ``widgets.interact`` does)."""
    first = nbformat.v4.new_code_cell(
        "import ipywidgets as w\nfrom IPython.display import display\nout = w.Output()\n"
        "display(out)"
    )
    body = [nbformat.v4.new_code_cell(f"with out:\n    print({i})") for i in range(n)]
    return _notebook(path, [first, *body])


def _cell_seconds(nb_path: Path, timeout: int, client_type: type[NotebookClient]) -> list[float]:
    nb = nbformat.read(nb_path, as_version=4)
    starts: dict[int, float] = {}
    took: list[float] = []
    client = client_type(
        nb,
        timeout=timeout,
        kernel_name="python3",
        on_cell_execute=lambda cell, cell_index: starts.__setitem__(
            cell_index, time.perf_counter()
        ),
        on_cell_executed=lambda cell, cell_index, execute_reply: took.append(
            time.perf_counter() - starts[cell_index]
        ),
    )
    client.execute()
    return took


@pytest.mark.slow
def test_output_widget_cells_do_not_stall_under_the_course_runner(tmp_path):
    # each cell takes ~0.02 s; a lost wake-up would hold it for the full 3 s timeout
    # (in about 1 cell in 7 with plain nbclient, see the next test)
    nb = _output_widget_notebook(tmp_path / "outw.ipynb", 80)
    took = _cell_seconds(nb, 3, runner.CourseNotebookClient)
    assert len(took) == 81
    assert max(took) < 1.5, f"a widget cell stalled: {max(took):.2f} s"


@pytest.mark.slow
def test_plain_nbclient_stalls_on_the_same_notebook(tmp_path):
    """The control: without the guard the reproduction does stall, so the test above
    tests something. The rate depends on the machine's load (3-15% of cells measured
    here), so up to three notebooks of 150 cells are run until one cell stalls:
    P(no stall in 450 cells at 3%) < 1e-5."""
    nb = _output_widget_notebook(tmp_path / "outw.ipynb", 150)
    stalls = 0
    for _ in range(3):
        stalls = sum(t > 0.9 for t in _cell_seconds(nb, 1, NotebookClient))
        if stalls:
            break
    if not stalls:
        # The race needs the reply to arrive inside a short window; on some days (an idle
        # machine, a quiet kernel) 450 cells never hit it. Then the guard's test above
        # shows nothing new, and this control says so instead of failing CI on timing.
        pytest.skip("plain nbclient did not stall in 450 widget cells on this machine today")
    assert stalls >= 1


def test_progress_lines_and_executed_copy(tmp_path):
    nb = _notebook(
        tmp_path / "ch.ipynb",
        [
            nbformat.v4.new_markdown_cell("# 9. A chapter\n\n## First section"),
            nbformat.v4.new_code_cell("x = 1"),
            nbformat.v4.new_markdown_cell("## Second section"),
            nbformat.v4.new_code_cell("import time; time.sleep(1.2)"),
            nbformat.v4.new_code_cell("print(x + 1)"),
        ],
    )
    lines: list[str] = []
    out = tmp_path / "done" / "ch.ipynb"
    r = runner.execute_notebook(
        nb, out, "09_demo", expected_s=75, progress=lines.append, heartbeat=0.5
    )
    text = "\n".join(lines)
    assert "[09_demo] started: 3 code cells (expected ~1m15s)" in text
    assert "cell 1/3 · First section" in text and "cell 2/3 · Second section" in text
    assert "still in cell 2/3 (Second section)" in text  # the heartbeat during the sleep
    assert lines[-1].startswith("[09_demo] done in")
    assert len(r.cell_seconds) == 3 and r.slowest(1)[0][:2] == (2, "Second section")
    executed = nbformat.read(out, as_version=4)
    assert executed.cells[4].outputs[0]["text"] == "2\n"


def test_a_failing_cell_names_chapter_cell_and_error(tmp_path):
    nb = _notebook(
        tmp_path / "ch.ipynb",
        [
            nbformat.v4.new_markdown_cell("## Setup"),
            nbformat.v4.new_code_cell("a = 1"),
            nbformat.v4.new_code_cell("raise ValueError('the sampler diverged')"),
        ],
    )
    out = tmp_path / "out.ipynb"
    with pytest.raises(runner.ChapterError) as err:
        runner.execute_notebook(nb, out, "05_x", progress=None)
    assert err.value.where == "05_x, cell 2/2 (Setup)"
    assert "ValueError: the sampler diverged" in err.value.reason
    assert not out.exists()  # nothing half-executed is kept


def test_the_cell_timeout_names_the_cell(tmp_path):
    nb = _notebook(
        tmp_path / "ch.ipynb",
        [
            nbformat.v4.new_code_cell("pass"),
            nbformat.v4.new_code_cell("import time\ntime.sleep(30)"),
        ],
    )
    t0 = time.perf_counter()
    with pytest.raises(runner.ChapterError) as err:
        runner.execute_notebook(nb, None, "07_y", cell_timeout=2, progress=None)
    assert time.perf_counter() - t0 < 25
    assert err.value.where == "07_y, cell 2/2 (start)"
    assert "cell timeout of 2 s" in err.value.reason and "import time" in err.value.reason


def test_cli_reports_failure_with_exit_status(tmp_path, capsys):
    nb = _notebook(tmp_path / "ch.ipynb", [nbformat.v4.new_code_cell("1 / 0")])
    assert runner.main([str(nb), "--label", "00_z"]) == 1
    assert "FAILED 00_z, cell 1/1 (start): ZeroDivisionError" in capsys.readouterr().out


# ------------------------------------------------------------------ the book's scheduler
def _recording_runner(seconds: float, fail: set[str] = frozenset()):
    log: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def run_one(name: str) -> build.Outcome:
        with lock:
            log.append(("start", name, time.perf_counter()))
        time.sleep(seconds)
        with lock:
            log.append(("end", name, time.perf_counter()))
        return build.Outcome(name, "failed" if name in fail else "ran", seconds, "boom")

    return run_one, log


def test_schedule_respects_needs_and_runs_independent_chapters_side_by_side():
    run_one, log = _recording_runner(0.3)
    chapters = ["00", "01", "03", "04", "05"]
    done = build.schedule(chapters, {"04": ["03"], "05": ["03", "04"]}, 2, run_one)
    assert set(done) == set(chapters)
    when = {(kind, name): t for kind, name, t in log}
    assert when[("start", "04")] >= when[("end", "03")]
    assert when[("start", "05")] >= when[("end", "04")]
    # -j 2: at some moment two chapters ran at once, never three
    events = sorted((t, +1 if kind == "start" else -1) for kind, _, t in log)
    running, peak = 0, 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    assert peak == 2


def test_schedule_one_job_is_sequential_and_needs_outside_the_run_are_met():
    run_one, log = _recording_runner(0.05)
    build.schedule(["04", "05"], {"04": ["03"]}, 1, run_one)  # 03 is up to date: not run
    kinds = [kind for kind, _, _ in log]
    assert kinds == ["start", "end", "start", "end"]


def test_a_failed_need_does_not_block_its_dependents():
    run_one, _ = _recording_runner(0.01, fail={"03"})
    done = build.schedule(["03", "04"], {"04": ["03"]}, 2, run_one)
    assert done["03"].status == "failed" and done["04"].status == "ran"


def test_schedule_rejects_a_cycle():
    run_one, _ = _recording_runner(0.0)
    with pytest.raises(ValueError, match="cycle"):
        build.schedule(["a", "b"], {"a": ["b"], "b": ["a"]}, 2, run_one)


def test_book_yml_needs_name_real_chapters_and_precede_them():
    cfg = build.read_book_config()
    order = [Path(c).stem for c in cfg["chapters"]]
    for chapter, deps in cfg.get("needs", {}).items():
        assert chapter in order and all(d in order for d in deps)
        assert all(order.index(d) < order.index(chapter) for d in deps)


def test_up_to_date_follows_chapter_and_course_lib_sources(tmp_path):
    root = tmp_path
    (root / "course_lib").mkdir()
    (root / "course_lib" / "m.py").write_text("X = 1\n")
    chapter = root / "chapters" / "01_a" / "01_a.ipynb"
    chapter.parent.mkdir(parents=True)
    chapter.with_suffix(".py").write_text("# %%\nx = 1\n")
    _notebook(chapter, [nbformat.v4.new_code_cell("x = 1")])
    assert not build.is_up_to_date(chapter, "smoke", root)
    done = build.executed_copy(chapter, "smoke", root)
    done.parent.mkdir(parents=True)
    nb = nbformat.read(chapter, as_version=4)
    nb.metadata["course"] = {"digest": build.source_digest(chapter, root)}
    nbformat.write(nb, done)
    assert build.is_up_to_date(chapter, "smoke", root)
    (root / "course_lib" / "m.py").write_text("X = 2\n")  # the library changed
    assert not build.is_up_to_date(chapter, "smoke", root)


def test_expected_seconds_read_from_the_benchmark_table(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.md").write_text(
        "| chapter | profile | device | wall time |\n| --- | --- | --- | --- |\n"
        "| 03_ddpm | cpu | cpu | 287 s |\n| 03_ddpm | smoke | cpu | 18 s |\n"
        "| 04_ddim | cpu | cpu | 106 s |\n| 04_ddim | cpu | cpu | 229 s |\n"
    )
    assert build.expected_seconds("cpu", tmp_path) == {"03_ddpm": 287.0, "04_ddim": 106.0}
    table = build.timings_table(
        [build.Outcome("03_ddpm", "ran", 290.4), build.Outcome("04_ddim", "failed", 3, "cell 2")],
        {"03_ddpm": 287.0},
    )
    assert "| 03_ddpm | ran | 290 s | 287 s |" in table
    assert "| 04_ddim | FAILED: cell 2 | 3 s | — |" in table


def test_a_dying_kernel_is_reported_not_hung(tmp_path):
    nb = _notebook(tmp_path / "ch.ipynb", [nbformat.v4.new_code_cell("import os\nos._exit(1)")])
    with pytest.raises(runner.ChapterError, match="kernel died") as err:
        runner.execute_notebook(nb, None, "06_k", cell_timeout=60, progress=None)
    assert err.value.where == "06_k, cell 1/1 (start)"
