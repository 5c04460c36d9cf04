"""Time every chapter per profile and write ``benchmarks/results.md``.

Each chapter is executed top to bottom in a fresh kernel (as a learner would run it),
once per profile. The table records the wall time, the peak resident memory of the
kernel, the device, and the chapter's own quality figure: the lines of its results card
that start with ``quality``.

Usage: ``python3 run.py bench [--profiles smoke,cpu] [--chapters 00,01]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results.md"


def run_one(notebook: Path, profile: str) -> dict:
    """Execute ``notebook`` in a child process; return its timings and results card."""
    code = (
        # the course's runner: nbclient without the Output-widget stall (course_lib.runner)
        "import sys; from pathlib import Path; from course_lib.runner import execute_notebook;"
        "execute_notebook(Path(sys.argv[1]), Path(sys.argv[3]), cell_timeout=3600,"
        " progress=None);"
        "import resource;"  # the kernel has exited: its peak is this process's children's
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    executed = ROOT / "_build" / "bench" / profile / notebook.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COURSE_PROFILE": profile}
    env.pop("MPLBACKEND", None)  # the kernel uses the inline backend, as for a learner
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(notebook), str(notebook.parent), str(executed)],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    peaks = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB")]
    peak_mib = int(peaks[0]) / 1024 if peaks else float("nan")
    if proc.returncode != 0:
        return {"seconds": seconds, "peak_mib": peak_mib, "error": proc.stderr[-500:]}
    return {"seconds": seconds, "peak_mib": peak_mib, **results_card(executed)}


def results_card(executed: Path) -> dict:
    nb = json.loads(executed.read_text())
    lines: list[str] = []
    in_card = False
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            in_card = "## Results card" in text or (in_card and not text.lstrip().startswith("#"))
        elif in_card:
            for out in cell.get("outputs", []):
                # printed lines, or the text form of course_lib.show.results_card's table
                text = out.get("text") or out.get("data", {}).get("text/plain", "")
                lines += "".join(text).splitlines()
    quality = [ln.strip() for ln in lines if ln.strip().startswith(("quality", "throughput"))]
    device = next((ln.split("device=")[1].split(",")[0] for ln in lines if "device=" in ln), "?")
    return {"quality": "; ".join(quality) or "—", "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="smoke,cpu")
    parser.add_argument("--chapters", default="", help="comma-separated prefixes, e.g. 00,01")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    args = parser.parse_args()
    prefixes = [p for p in args.chapters.split(",") if p]
    notebooks = [
        nb
        for nb in sorted(ROOT.glob("chapters/*/*.ipynb"))
        if not prefixes or any(nb.stem.startswith(p) for p in prefixes)
    ]
    rows = []
    for nb in notebooks:
        for profile in args.profiles.split(","):
            print(f"bench: {nb.stem} [{profile}] ...", flush=True)
            r = run_one(nb, profile)
            rows.append((nb.stem, profile, r))
            print(
                f"bench: {nb.stem} [{profile}] {r['seconds']:.0f} s {r.get('error', '')}",
                flush=True,
            )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    table = [
        f"Measured on {machine}, {time.strftime('%Y-%m-%d')}.",
        "",
        "| chapter | profile | device | wall time | peak memory | quality |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, profile, r in rows:
        quality = r.get("quality", "FAILED: " + r.get("error", "").replace("\n", " ")[:80])
        table.append(
            f"| {name} | {profile} | {r.get('device', '?')} | {r['seconds']:.0f} s "
            f"| {r['peak_mib']:.0f} MiB | {quality} |"
        )
    args.out.write_text("\n".join(table) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
