"""Test-suite set-up shared by the unit tests and the notebook runs.

* Chapters run in the ``smoke`` profile unless ``COURSE_PROFILE`` says otherwise.
* Real data: when ``COURSE_DATA`` is unset and the workplace's ``../shared/data`` copies
  exist, a data root under ``_build/data`` links to them (the MNIST test split, so the
  chapters train on ``COURSE_TRAIN_SPLIT=test``; CIFAR-10's zipped JPEG trees).
* nbval: a cell whose metadata holds ``expected_output`` has its printed output compared
  with it (the committed notebooks carry no outputs, so this is where the few
  deterministic values live).
* Every notebook that runs through without an error is written, with its outputs, to
  ``_build/executed/<profile>/`` so that the book build can reuse it instead of
  executing it a second time.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("COURSE_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("COURSE_PROFILE", "smoke")
# no MPLBACKEND here: notebook kernels inherit this environment and need the inline
# backend, or their figures vanish; this headless process picks Agg by itself
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per notebook kernel it starts): with two workers on two
    # cores, torch's default of one thread per core makes them fight over the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("COURSE_THREADS", "1")  # what course_lib.get_config applies
    import torch

    torch.set_num_threads(1)


def _link_shared_data() -> None:
    mnist = SHARED_DATA / "mnist-test"
    if "COURSE_DATA" in os.environ or not mnist.is_dir():
        return
    root = ROOT / "_build" / "data"
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    for f in mnist.glob("*.gz"):
        link = root / "mnist" / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    cifar = SHARED_DATA / "cifar10-jpeg"  # train.zip and test.zip: chapter 9 reads them
    if cifar.is_dir():
        (root / "cifar10").mkdir(parents=True, exist_ok=True)
        for f in cifar.glob("*.zip"):
            link = root / "cifar10" / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    os.environ["COURSE_DATA"] = str(root)
    os.environ.setdefault("COURSE_TRAIN_SPLIT", "test")


_link_shared_data()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Unit tests run on one torch thread: the exact mixture models solve many tiny
    systems, where extra threads only fight over the shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_outputs: dict[Path, dict[int, list[Any]]] = defaultdict(dict)
_failed: set[Path] = set()


def _nbval_cell_type() -> type | None:
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return None
    return IPyNbCell


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cell_type = _nbval_cell_type()
    if cell_type is None:
        return
    from nbformat import NotebookNode

    for item in items:
        if isinstance(item, cell_type) and "expected_output" in item.cell.metadata:
            text = item.cell.metadata["expected_output"]
            item.cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=text)]
            item.cell.execution_count = 1
            item.options["check"] = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    cell_type = _nbval_cell_type()
    if cell_type is not None and isinstance(item, cell_type) and report.when == "call":
        path = Path(str(item.parent.fspath))
        if report.failed:
            _failed.add(path)
        else:
            _outputs[path][item.cell_num] = item.test_outputs or []
    return report


def _digest(notebook: Path) -> str:
    import sys

    module = sys.modules.get("course_book_build")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "course_book_build", ROOT / "book" / "build.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["course_book_build"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module.source_digest(notebook, ROOT)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write each fully passed notebook with its outputs for the book build."""
    if not _outputs:
        return
    import nbformat

    profile = os.environ["COURSE_PROFILE"]
    out_dir = ROOT / "_build" / "executed" / profile
    for path, cells in _outputs.items():
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if path in _failed or len(cells) != len(code):
            continue
        for i, cell in enumerate(code):
            cell.outputs = cells[i]
            cell.execution_count = i + 1
            for out in cell.outputs:
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = i + 1
                    out.setdefault("metadata", {})
        nb.metadata["course"] = {"profile": profile, "digest": _digest(path)}
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{path.name}.tmp"
        nbformat.write(nb, tmp)
        tmp.replace(out_dir / path.name)
