"""The grade table: its rows (:class:`Row`) and the files written from them,
``grades.csv``, ``grades.md`` and ``grades.html`` (:func:`write_tables`)."""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("passed", "failed", "todo", "not reached")
CSV_COLUMNS = ("student", "notebook", "exercise", "status", "flag", "message")


@dataclass(frozen=True)
class Row:
    """One line of the grade table."""

    student: str
    notebook: str
    exercise: str
    status: str
    flag: str
    message: str


MARK = {"passed": "✅", "failed": "❌", "todo": "⏳", "not reached": "⛔"}


def write_tables(rows: list[Row], out: Path) -> None:
    """``grades.csv`` (one row per student, notebook and exercise), and ``grades.md`` and
    ``grades.html`` (per-student totals, the matrix, then every message that is not a
    pass)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grades.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.student, r.notebook, r.exercise, r.status, r.flag, r.message])
    (out / "grades.md").write_text(_markdown(rows), encoding="utf-8")
    (out / "grades.html").write_text(_html(rows), encoding="utf-8")


def _matrix(rows: list[Row]) -> tuple[list[str], list[str], dict[tuple[str, str], Row]]:
    students = list(dict.fromkeys(r.student for r in rows))
    names = list(dict.fromkeys(r.exercise for r in rows if r.exercise))
    cells = {(r.student, r.exercise): r for r in rows if r.exercise}
    return students, names, cells


def _totals(rows: list[Row], student: str) -> dict[str, int]:
    return {s: sum(r.student == student and r.status == s for r in rows) for s in STATUSES}


def _markdown(rows: list[Row]) -> str:
    students, names, cells = _matrix(rows)
    lines = [
        "# Grades",
        "",
        "✅ passed · ❌ failed · ⏳ to do · ⛔ not reached (the notebook stopped earlier) · "
        "⚠ flagged (see below)",
        "",
        "| student | " + " | ".join(["passed", "failed", "to do", "not reached", *names]) + " |",
        "| --- " * (5 + len(names)) + "|",
    ]
    for s in students:
        t = _totals(rows, s)
        marks = []
        for n in names:
            r = cells.get((s, n))
            marks.append("" if r is None else MARK[r.status] + (" ⚠" if r.flag else ""))
        lines.append(
            f"| {s} | {t['passed']} | {t['failed']} | {t['todo']} | {t['not reached']} | "
            + " | ".join(marks)
            + " |"
        )
    notes = [r for r in rows if r.status != "passed" or r.flag]
    if notes:
        lines += [
            "",
            "## Messages and flags",
            "",
            "| student | exercise | status | flag | message |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in notes:
            msg = r.message.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {r.student} | {r.exercise or r.notebook} | {r.status} | {r.flag} | {msg} |"
            )
    return "\n".join(lines) + "\n"


def _html(rows: list[Row]) -> str:
    e = html.escape
    students, names, cells = _matrix(rows)
    head = "".join(
        f"<th>{e(h)}</th>" for h in ["student", "passed", "failed", "to do", "not reached", *names]
    )
    body = []
    for s in students:
        t = _totals(rows, s)
        tds = [f"<td>{e(s)}</td>", *(f"<td>{t[k]}</td>" for k in STATUSES)]
        for n in names:
            r = cells.get((s, n))
            if r is None:
                tds.append("<td></td>")
            else:
                title = e(f"{r.status}: {r.message}" + (f" [flag: {r.flag}]" if r.flag else ""))
                cls = r.status.replace(" ", "-") + (" flagged" if r.flag else "")
                mark = MARK[r.status] + (" ⚠" if r.flag else "")
                tds.append(f'<td class="{cls}" title="{title}">{mark}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(
        f"<tr><td>{e(r.student)}</td><td>{e(r.exercise or r.notebook)}</td><td>{e(r.status)}</td>"
        f"<td>{e(r.flag)}</td><td>{e(r.message)}</td></tr>"
        for r in rows
        if r.status != "passed" or r.flag
    )
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .5em}.failed{background:#fdd}"
        ".passed{background:#dfd}.todo{background:#ffd}.not-reached{background:#eee}"
        ".flagged{outline:2px solid #e80}"
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>Grades</title><style>{style}</style>"
        "<h1>Grades</h1><p>✅ passed · ❌ failed · ⏳ to do · ⛔ not reached · ⚠ flagged; "
        "hover a cell for the check's message.</p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
        "<h2>Messages and flags</h2><table><tr><th>student</th><th>exercise</th>"
        f"<th>status</th><th>flag</th><th>message</th></tr>{notes}</table>\n"
    )
