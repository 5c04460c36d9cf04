"""Running a submission: a fresh kernel in a temporary folder, with the grader's own
probe cell before each exercise's check (:func:`execute_with_probes`), and the answers
the probes sent back."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from course_lib.grading.slots import Slot

#: the mimetype of the grader's probe output (never displayed by a front end)
PROBE_MIME = "application/x-course-grader+json"


def probe_source(name: str, variable: str) -> str:
    """The cell the grader inserts before an exercise's check: it sends the answer back
    as a cell output, serialised by value, and never raises."""
    return f"""def _course_grader_probe(name={name!r}, variable={variable!r}):
    import base64
    import importlib

    payload = {{"exercise": name, "variable": variable}}
    namespace = globals()
    if variable not in namespace:
        payload["missing"] = True
    else:
        answer = namespace[variable]
        try:
            import cloudpickle

            payload["pickle"] = base64.b64encode(cloudpickle.dumps(answer)).decode("ascii")
        except Exception as err:  # not serialisable: check it here, and say so
            payload["pickle_error"] = f"{{type(err).__name__}}: {{err}}"
            try:
                importlib.import_module("course_lib.exercises." + name.split(".")[0])
                from course_lib.exercises import REGISTRY

                result = REGISTRY[name].run(answer)
                payload["kernel_result"] = [result.status, result.message]
            except Exception as err2:
                payload["kernel_result"] = ["failed", f"the check raised {{err2!r}}"]
    get_ipython().display_pub.publish(data={{{PROBE_MIME!r}: payload}}, metadata={{}})


_course_grader_probe()
del _course_grader_probe
"""


@dataclass
class Execution:
    """What running one notebook gave: the probes' payloads by exercise, and where and
    why it stopped early (``None``: it ran to the end)."""

    payloads: dict[str, dict[str, Any]]
    stopped: str | None
    seconds: float


def _link_data(source: Path, target: Path) -> None:
    """A data folder whose entries link to ``source``'s, one level down, so that the
    course's atomic writes (temporary file, then rename) replace a link in ``target``
    and never touch ``source``."""
    target.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return
    for entry in source.iterdir():
        if entry.is_dir():
            (target / entry.name).mkdir(exist_ok=True)
            for child in entry.iterdir():
                (target / entry.name / child.name).symlink_to(child)
        else:
            (target / entry.name).symlink_to(entry)


def kernel_env(profile: str, data: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a graded notebook's kernel: the course's profile and data
    folder set, ``MPLBACKEND`` removed (kernels use the inline backend)."""
    env = dict(os.environ if base is None else base)
    env.pop("MPLBACKEND", None)
    env.update(COURSE_PROFILE=profile, COURSE_DATA=str(data), PYTHONUNBUFFERED="1")
    return env


def execute_with_probes(
    nb: Any,
    slots: list[Slot],
    workdir: Path,
    env: dict[str, str],
    time_limit: float,
) -> Execution:
    """Run ``nb`` with a probe before each slot in a fresh kernel whose working folder is
    ``workdir``; the whole run, kernel start included, gets ``time_limit`` seconds."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from course_lib.runner import CourseNotebookClient

    cells, origin = [], []
    by_cell: dict[int, list[Slot]] = {}
    for slot in slots:
        by_cell.setdefault(slot.before, []).append(slot)
    for k in range(len(nb.cells) + 1):
        for slot in by_cell.get(k, []):
            cells.append(nbformat.v4.new_code_cell(probe_source(slot.name, slot.variable)))
            origin.append(None)
        if k < len(nb.cells):
            cell = nb.cells[k]
            if cell.cell_type == "code":
                cell = nbformat.from_dict({**cell, "outputs": [], "execution_count": None})
            cells.append(cell)
            origin.append(k)
    run_nb = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    code_number = {
        k: n + 1 for n, k in enumerate(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    }
    t0 = time.monotonic()
    deadline = t0 + time_limit
    state = {"index": -1}

    def on_execute(cell: Any, cell_index: int) -> None:
        state["index"] = cell_index

    client = CourseNotebookClient(
        run_nb,
        timeout_func=lambda cell: max(1, round(deadline - time.monotonic())),
        startup_timeout=max(10, round(time_limit)),
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        on_cell_execute=on_execute,
    )
    stopped = None
    try:
        client.execute(env=env)
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as err:
        k = state["index"]
        where = "before the first cell"
        if 0 <= k < len(origin):
            src = origin[k]
            if src is None:
                where = "in the grader's probe"
            else:
                first = nb.cells[src].source.strip().splitlines()[:1]
                start = first[0][:60] if first else "empty"
                where = f"at code cell {code_number.get(src, '?')} ({start})"
        if isinstance(err, CellTimeoutError) or time.monotonic() >= deadline:
            reason = f"the time limit of {time_limit:.0f} s ran out"
        elif isinstance(err, CellExecutionError):
            reason = f"{err.ename}: {err.evalue}" if err.ename else "the cell raised"
        elif isinstance(err, DeadKernelError):
            reason = "the kernel died"
        else:
            reason = f"{type(err).__name__}: {err}"
        stopped = f"stopped {where}: {reason}"
    payloads = {}
    for cell, src in zip(run_nb.cells, origin, strict=True):
        if src is not None:
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get(PROBE_MIME)
            if data is not None:
                payload = data if isinstance(data, dict) else json.loads(data)
                payloads[payload["exercise"]] = payload
    return Execution(payloads, stopped, time.monotonic() - t0)
