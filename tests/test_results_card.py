"""course_lib.show.results_card: a chapter's results card as a table in a notebook and as
aligned text elsewhere, with every number of its rows in both."""

import importlib

import pytest

show_module = importlib.import_module("course_lib.show")  # course_lib.show is the function

ROWS = [
    ("run", "profile smoke, device=cpu, seed 0"),
    ("chapter wall time", "12.3 s"),
    ("quality: 2D KL <EDM> & DDPM", "0.071 ± 0.004 vs 0.069 ± 0.003 nats"),
]


def test_text_aligns_every_result_after_the_longest_label():
    lines = show_module.results_card_text(ROWS).splitlines()
    assert len(lines) == 3
    column = len(ROWS[2][0]) + 1  # the longest label, then one space
    for line, (label, value) in zip(lines, ROWS, strict=True):
        assert line.startswith(label) and line[column:] == value


def test_html_is_a_table_with_one_escaped_row_per_result():
    table = show_module.results_card_html(ROWS)
    assert table.startswith('<table class="results-card">')
    assert table.count("<tr>") == 1 + len(ROWS)  # header and rows
    assert "&lt;EDM&gt; &amp; DDPM" in table and "<EDM>" not in table
    assert "0.071 ± 0.004 vs 0.069 ± 0.003 nats" in table
    assert table.count('style="text-align:left"') == 2 * (1 + len(ROWS))


def test_prints_aligned_text_outside_a_notebook(capsys):
    show_module.results_card(ROWS)
    assert capsys.readouterr().out == show_module.results_card_text(ROWS) + "\n"


def test_a_notebook_gets_one_output_with_both_forms(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.get_ipython", lambda: object())
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))
    show_module.results_card(iter(ROWS))  # any iterable of pairs
    assert len(shown) == 1
    bundle, raw = shown[0]
    assert raw is True
    assert bundle["text/plain"] == show_module.results_card_text(ROWS)
    assert bundle["text/html"] == show_module.results_card_html(ROWS)


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [
        ([], ValueError, "no rows"),
        ([("chapter wall time", 12.3)], TypeError, "format numbers into the result"),
        ([("a", "b", "c")], TypeError, "not a \\(what, result\\) pair"),
    ],
)
def test_bad_rows_name_the_problem(rows, error, match):
    with pytest.raises(error, match=match):
        show_module.results_card(rows)
