"""Chapter 2's measurements: closed-form ULA bias, mode fractions, the widget's panel."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from course_lib import langevin
from course_lib import langevin_figures as lf


def teardown_function():
    plt.close("all")


def test_ula_gaussian_variance_is_the_fixed_point_of_one_step():
    sigma = 1.7
    for h in [0.01, 0.5, 2.0, 11.0]:
        v = lf.ula_gaussian_variance(h, sigma)
        a = 1 - h / (2 * sigma**2)
        assert v == pytest.approx(a**2 * v + h, rel=1e-12)
    assert lf.ula_gaussian_variance(1e-8, sigma) == pytest.approx(sigma**2)
    with pytest.raises(ValueError, match="stable only"):
        lf.ula_gaussian_variance(4 * sigma**2, sigma)


def test_bias_table_matches_the_formula_and_mala_removes_the_bias():
    g = torch.Generator().manual_seed(0)
    rows = lf.gaussian_bias_table([0.1, 1.0, 2.0], sigma=1.0, n=20_000, n_steps=60, generator=g)
    for r in rows:
        # 20,000 chains: the variance is known to about 1% (2 / sqrt(n) relative)
        assert r.ula == pytest.approx(r.formula, rel=0.04)
        assert r.mala == pytest.approx(1.0, rel=0.04)
        assert 0 < r.acceptance <= 1
    assert rows[-1].formula == pytest.approx(2.0)  # h = 2: 1 / (1 - 1/2)
    assert rows[0].acceptance > rows[-1].acceptance  # larger steps are rejected more


def test_mode_fractions_of_exact_samples_are_the_weights():
    gm = lf.two_mode_mixture()
    g = torch.Generator().manual_seed(0)
    x = gm.sample(20_000, g)
    f = lf.mode_fractions(x, gm)
    assert f.sum() == pytest.approx(1.0)
    assert f.tolist() == pytest.approx([0.8, 0.2], abs=0.01)
    assert lf.mode_weight_error(x, gm) < 0.01
    # all samples in the light mode: an error of 0.8
    assert lf.mode_weight_error(x[x.sum(1) > 0], gm) == pytest.approx(0.8)


def test_ula_from_a_broad_start_keeps_the_wrong_weights_and_annealing_fixes_them():
    """The chapter's motivating claim, with the exact scores."""
    gm = lf.two_mode_mixture()
    g = torch.Generator().manual_seed(0)
    x0 = lf.broad_init(1000, g)
    assert lf.mode_fractions(x0, gm)[0] == pytest.approx(0.5, abs=0.05)
    ula = langevin.ula(gm.score, x0, 0.01, 300, generator=g).x
    assert lf.mode_weight_error(ula, gm) > 0.2  # about 0.3: half the chains in each mode
    sigmas = langevin.geometric_sigmas(6.0, 0.05, 20)
    ann = langevin.annealed_langevin(
        lf.exact_noise_score(gm),
        6.0 * torch.randn(1000, 2, generator=g),
        sigmas,
        step_size=1.25e-3,  # a step of 0.5 sigma_i^2 at every level
        n_steps_each=30,
        generator=g,
    ).x
    assert lf.mode_weight_error(ann, gm) < 0.05


def test_fractions_along_a_trajectory():
    gm = lf.two_mode_mixture()
    g = torch.Generator().manual_seed(0)
    res = langevin.ula(gm.score, lf.broad_init(200, g), 0.01, 20, generator=g, keep=5)
    f = lf.fractions_along(res.trajectory, gm)
    assert f.shape == (res.trajectory.shape[0], 2)
    assert torch.allclose(f.sum(1), torch.ones(f.shape[0], dtype=f.dtype))


def test_langevin_panel_draws_samples_and_paths():
    fig = lf.langevin_panel(step_size=0.05, n_steps=30, n=100, n_paths=10)
    left, right = fig.axes[:2]  # then the density's colour bar
    assert "heavy mode" in left.get_title() and "h = 0.05" in left.get_title()
    assert "paths" in right.get_title() and right.get_xlabel() == "$x_1$"


def test_langevin_panel_survives_a_diverging_step():
    fig = lf.langevin_panel(step_size=2.0, n_steps=30, n=50, n_paths=5)
    assert any("diverged" in t.get_text() for t in fig.axes[1].texts)


def test_exact_noise_score_is_the_noised_mixture_score():
    gm = lf.two_mode_mixture()
    x = torch.randn(7, 2)
    score = lf.exact_noise_score(gm)
    same = torch.full((7,), 0.4)
    assert torch.allclose(score(x, same), gm.noised(1.0, 0.4).score(x), atol=1e-6)
    mixed = torch.linspace(0.1, 2.0, 7)
    want = torch.stack([gm.noised_score(x[i : i + 1], 1.0, float(mixed[i]))[0] for i in range(7)])
    assert torch.allclose(score(x, mixed), want, atol=1e-6)
