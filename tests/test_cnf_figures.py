"""Chapter 7's studies measure what they claim, against cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import cnf, toy_cnf, toys
from course_lib import cnf_figures as cf
from course_lib import flow_matching as fm


def test_hutchinson_rows_match_the_closed_form() -> None:
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = cf.hutchinson_rows(a, 100_000, torch.Generator().manual_seed(1))
    assert [r.probe for r in rows] == list(cnf.PROBES)
    for r in rows:
        assert r.trace == pytest.approx(float(torch.trace(a)))
        assert abs(r.mean - r.trace) < 4 * math.sqrt(r.closed_form / r.n)
        assert r.variance == pytest.approx(r.closed_form, rel=0.05)


def test_tolerance_study_error_falls_and_cost_rises() -> None:
    gm = toys.twin("gaussians8")
    field = toy_cnf.ExactField(fm.exact_velocity(gm, fm.linear_path()))
    x = gm.sample(32, torch.Generator().manual_seed(2)).double()
    rows = cf.tolerance_study(field, x, gm.log_prob(x), [1e-2, 1e-6])
    assert rows[1].max_error < rows[0].max_error / 10
    assert rows[1].nfe > rows[0].nfe
    assert rows[1].max_error < 1e-3


def test_kl_to_model_is_zero_for_the_truth_and_positive_otherwise() -> None:
    gm = toys.twin("gaussians8")
    x = gm.sample(500, torch.Generator().manual_seed(3)).double()
    lp = gm.log_prob(x)
    same = cf.kl_to_model(lambda y: (gm.log_prob(y), 0), x, lp)
    assert same.kl == 0.0 and same.se == 0.0
    # a standard normal as the model: KL(p‖q) is large and measured precisely
    other = cf.kl_to_model(lambda y: (cnf.standard_normal_log_prob(y), 0), x, lp)
    assert other.kl > 1.0 and other.se < 0.1


def test_plot_nfe_history_draws_one_line_per_run() -> None:
    ax = cf.plot_nfe_history({"a": [10] * 30, "b": list(range(30))}, window=5)
    assert len(ax.get_lines()) == 2
    assert len(ax.get_lines()[0].get_xdata()) == 26  # the moving average's valid part
