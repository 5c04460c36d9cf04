"""Executing chapters headless: the one notebook runner of the book build and benchmarks.

A chapter is executed with nbclient (what nbconvert and Jupyter Book use), in a fresh
kernel, with three things added for a person who waits for it:

* **no lost wake-ups** (:class:`CourseNotebookClient`): see below;
* **progress** (:func:`execute_notebook`): a line when the chapter starts, at every new
  section (``## ...`` heading), and every ``heartbeat`` seconds while a long cell runs,
  each with the cell count, the elapsed time and the chapter's expected time;
* **errors that say where** (:class:`ChapterError`): a cell that raises, or that outlives
  the per-cell timeout, names the chapter, the cell number, its section and its first
  line.

The stall it works around (reproduced in ``tests/test_runner.py``): while a cell's output
goes through an ``ipywidgets.Output`` widget (every ``widgets.interact`` cell), nbclient
forwards each captured output to the kernel on the shell channel
(``nbclient.output_widget.OutputWidget._publish_msg``). jupyter_client's ``Session.send``
writes through a *synchronous* shadow of the channel's ``zmq.asyncio`` socket, and that
write reads the socket's edge-triggered ``ZMQ_EVENTS``, consuming the readiness signal of
an ``execute_reply`` that arrives at the same moment. The asyncio ``poll`` that nbclient
awaits for the reply is then woken only by its timeout, so the cell "finishes" after the
full cell timeout (1800 s in the book build) with no error: about 1 widget cell in 7 on
two cores (nbclient 0.11, jupyter_client 8, pyzmq 27). The fix, on the client's shell
channel only: after every send, ask the asyncio socket to re-check its events
(``_schedule_remaining_events``, the hook pyzmq itself uses after its own sends), and poll
for replies in slices of at most :data:`POLL_SLICE_S`, so that even without that hook a
lost wake-up costs a fraction of a second, not a cell timeout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

#: the longest a reply can go unnoticed if the socket's wake-up is lost anyway
POLL_SLICE_S = 0.25

Progress = Callable[[str], None]


def _guard_shell_channel(kc: Any) -> None:
    """Re-arm the shell socket after each send and poll it in short slices (see the
    module docstring for the upstream behaviour this works around)."""
    channel = kc.shell_channel
    send, get_msg = channel.send, channel.get_msg

    def send_and_rearm(msg: dict[str, Any]) -> None:
        send(msg)
        rearm = getattr(channel.socket, "_schedule_remaining_events", None)
        if rearm is not None:
            rearm()

    async def get_msg_sliced(timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_S if deadline is None else deadline - time.monotonic()
            try:
                return await get_msg(timeout=max(0.0, min(POLL_SLICE_S, left)))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.send = send_and_rearm
    channel.get_msg = get_msg_sliced


class CourseNotebookClient(NotebookClient):
    """nbclient's ``NotebookClient`` with the shell channel guarded against lost
    wake-ups (:func:`_guard_shell_channel`)."""

    async def async_start_new_kernel_client(self) -> Any:
        kc = await super().async_start_new_kernel_client()
        _guard_shell_channel(kc)
        return kc


class ChapterError(RuntimeError):
    """A chapter failed: ``where`` names the chapter and cell, ``reason`` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


@dataclass
class RunResult:
    """What a run measured: wall time, the number of code cells, and each code cell's
    seconds (in order), with the section it belongs to."""

    label: str
    seconds: float
    cell_seconds: list[float] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)

    def slowest(self, n: int = 3) -> list[tuple[int, str, float]]:
        """The ``n`` slowest code cells as ``(number, section, seconds)``."""
        order = sorted(range(len(self.cell_seconds)), key=lambda i: -self.cell_seconds[i])
        return [(i + 1, self.sections[i], self.cell_seconds[i]) for i in order[:n]]


def format_seconds(s: float) -> str:
    """``75.3 -> '1m15s'``, ``9.2 -> '9s'``."""
    s = round(s)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _sections(nb: nbformat.NotebookNode) -> list[str]:
    """For each code cell, the last ``#``/``##`` heading above it."""
    section, out = "start", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith(("# ", "## ")):
                    section = line.lstrip("# ").strip()
        elif cell.cell_type == "code":
            out.append(section)
    return out


def execute_notebook(
    path: Path,
    out: Path | None = None,
    label: str | None = None,
    cell_timeout: int = 1800,
    env: dict[str, str] | None = None,
    expected_s: float | None = None,
    progress: Progress | None = print,
    heartbeat: float = 30.0,
) -> RunResult:
    """Execute the notebook at ``path`` in a fresh kernel and write it, with its
    outputs, to ``out`` (atomically; nothing is written when a cell fails).

    Args:
        path: the ``.ipynb``; the kernel's working folder is its folder.
        out: where to write the executed notebook (``None``: not written).
        label: the chapter's name in messages (default: the file's stem).
        cell_timeout: seconds a single cell may run.
        env: the kernel's environment (default: this process's).
        expected_s: the chapter's usual wall time, shown beside the elapsed time.
        progress: receives one line per event (``None``: silent).
        heartbeat: seconds between "still running" lines during a long cell.

    Raises:
        ChapterError: a cell raised or timed out; the message names the chapter, the
            cell, its section and its first line.
    """
    label = label or path.stem
    say = progress or (lambda _line: None)
    nb = nbformat.read(path, as_version=4)
    sections = _sections(nb)
    n_code = len(sections)
    expect = f" (expected ~{format_seconds(expected_s)})" if expected_s else ""
    state: dict[str, Any] = {"cell": 0, "start": 0.0, "section": None, "done": False}
    result = RunResult(label, 0.0)
    t0 = time.perf_counter()

    def where() -> str:
        k = state["cell"]
        return f"{label}, cell {k}/{n_code} ({sections[k - 1] if k else 'start'})"

    def on_execute(cell: nbformat.NotebookNode, cell_index: int) -> None:
        state["cell"] += 1
        state["start"] = time.perf_counter()
        section = sections[state["cell"] - 1]
        if section != state["section"]:
            state["section"] = section
            say(
                f"[{label}] cell {state['cell']}/{n_code} · {section} · "
                f"{format_seconds(time.perf_counter() - t0)}{expect}"
            )

    def on_executed(cell: nbformat.NotebookNode, cell_index: int, execute_reply: Any) -> None:
        result.cell_seconds.append(time.perf_counter() - state["start"])
        result.sections.append(state["section"])

    def beat() -> None:
        while not state["done"]:
            time.sleep(heartbeat)
            running = time.perf_counter() - state["start"]
            if not state["done"] and state["cell"] and running >= heartbeat:
                say(
                    f"[{label}] still in cell {state['cell']}/{n_code} ({state['section']}) "
                    f"for {format_seconds(running)} · {format_seconds(time.perf_counter() - t0)}"
                    f"{expect}"
                )

    client = CourseNotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_execute=on_execute,
        on_cell_executed=on_executed,
    )
    say(f"[{label}] started: {n_code} code cells{expect}")
    threading.Thread(target=beat, daemon=True).start()
    try:
        client.execute(env=env if env is not None else dict(os.environ))
    except CellTimeoutError as err:
        first = nb.cells[_code_index(nb, state["cell"])].source.strip().splitlines()[:1]
        raise ChapterError(
            where(), f"no result after the cell timeout of {cell_timeout} s; it starts {first}"
        ) from err
    except CellExecutionError as err:
        reason = f"{err.ename}: {err.evalue}" if err.ename else "the cell raised"
        raise ChapterError(where(), reason) from err
    except DeadKernelError as err:
        raise ChapterError(
            where(), "the kernel died (out of memory? try a smaller profile or batch)"
        ) from err
    finally:
        state["done"] = True
    result.seconds = time.perf_counter() - t0
    say(f"[{label}] done in {format_seconds(result.seconds)}{expect}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        nbformat.write(nb, tmp)
        tmp.replace(out)
    return result


def _code_index(nb: nbformat.NotebookNode, k: int) -> int:
    """The index in ``nb.cells`` of the ``k``-th code cell (1-based)."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    return code[max(k, 1) - 1]


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.runner NOTEBOOK [--out OUT] ...``: run one notebook,
    print progress; exit status 1 with the chapter, cell and reason on failure."""
    parser = argparse.ArgumentParser(description="Execute a chapter headless.")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--label", default=None)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--expected", type=float, default=None, help="usual seconds")
    args = parser.parse_args(argv)
    # a terminated run (the book build stopped, a CI time-out) must not orphan its kernel:
    # SystemExit unwinds through nbclient, which shuts the kernel down on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        r = execute_notebook(
            args.notebook,
            args.out,
            args.label,
            args.timeout,
            expected_s=args.expected,
            progress=lambda line: print(line, flush=True),
        )
    except ChapterError as err:
        print(f"FAILED {err.where}: {err.reason}", flush=True)
        return 1
    print(f"SECONDS {r.seconds:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
