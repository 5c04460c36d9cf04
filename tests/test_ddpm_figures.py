"""Chapter 3's measurements and figures: SNR crossing, the posterior by regression, the
widget's panel, the reverse-process strip, the bound in bits, nearest neighbours."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from course_lib import ddpm, schedules, toys
from course_lib import ddpm_figures as dfig
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import SampleResult


def teardown_function():
    plt.close("all")


def test_snr_crossing_is_the_first_step_below_the_level():
    lin = schedules.linear_schedule(1000)
    t = dfig.snr_crossing(lin)
    assert lin.alpha_bar[t] < 0.5 <= lin.alpha_bar[t - 1]
    assert t == 260  # the value the chapter's exercise accepts
    # the hand estimate of the exercise: sum of betas = ln 2
    cum = torch.cumsum(lin.beta, 0)
    assert abs(int((cum > math.log(2)).nonzero()[0]) - t) <= 3
    assert abs(dfig.snr_crossing(schedules.cosine_schedule(1000)) - 500) <= 5
    assert dfig.snr_crossing(lin, level=1e3) < t
    with pytest.raises(ValueError, match="never falls"):
        dfig.snr_crossing(lin, level=1e-9)


@pytest.mark.parametrize("t", [1, 7, 300, 1000])
def test_posterior_by_regression_recovers_the_closed_form(t):
    sched = schedules.linear_schedule(1000)
    fit = dfig.posterior_by_regression(
        -0.4, t, sched, n=400_000, generator=torch.Generator().manual_seed(t)
    )
    x0 = torch.zeros(1)
    c0, ct = ddpm.posterior_coefficients(torch.tensor(t), sched, x0)
    var = float(sched.beta_tilde[t])
    assert fit.slope == pytest.approx(float(ct), abs=0.01)
    assert fit.intercept == pytest.approx(float(c0) * -0.4, abs=0.01)
    assert fit.residual_var == pytest.approx(var, rel=0.02, abs=1e-12)
    with pytest.raises(ValueError):
        dfig.posterior_by_regression(0.0, 0, sched, n=10)


def test_schedule_curves_and_forward_panel_draw():
    lin, cos = schedules.linear_schedule(1000), schedules.cosine_schedule(1000)
    fig = dfig.schedule_curves({"linear": lin, "cosine": cos}, t_mark=260)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 2
    digits = torch.rand(4, 1, 28, 28) * 2 - 1
    fig = dfig.forward_panel(0, "linear", digits=digits, n=200)
    assert len(fig.axes) == 3
    fig = dfig.forward_panel(1000, "cosine", digits=None, toy="gaussians8", n=200)
    assert len(fig.axes) == 2 and "cosine" in fig.axes[0].get_title()
    with pytest.raises(ValueError):
        dfig.forward_panel(1001, "linear", n=10)


def test_forward_panel_uses_the_closed_form_marginal():
    # at t = 0 the toy's noised points are the data themselves
    fig = dfig.forward_panel(0, "linear", toy="moons", n=300, seed=3)
    offsets = [c.get_offsets() for c in fig.axes[0].collections]
    data_pts, noised = torch.tensor(offsets[0]), torch.tensor(offsets[1])
    assert torch.allclose(data_pts, noised, atol=1e-6)


def _toy_run(keep: int):
    sched = schedules.linear_schedule(50)
    model = ddpm.exact_model(toys.twin("gaussians8"), sched)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    run = ddpm.ancestral_sample(
        model, x_T, sched, generator=torch.Generator().manual_seed(1), keep=keep
    )
    return model, sched, run


def test_predicted_x0_along_matches_predict_and_ends_at_the_sample():
    model, sched, run = _toy_run(keep=10)
    x0_hat = dfig.predicted_x0_along(model, run, sched, clip_x0=None)
    assert x0_hat.shape == run.trajectory.shape
    t0 = round(float(run.times[0]))
    want = ddpm.predict(model, run.trajectory[0], t0, sched).x0
    assert torch.allclose(x0_hat[0], want)
    assert float(run.times[-1]) == 0 and torch.equal(x0_hat[-1], run.x)
    with pytest.raises(ValueError, match="keep"):
        dfig.predicted_x0_along(model, SampleResult(x=run.x), sched)


def test_reverse_strip_draws_two_rows_per_sample():
    traj = torch.rand(5, 3, 1, 8, 8) * 2 - 1
    fig = dfig.reverse_strip(traj, traj.clone(), torch.tensor([4, 3, 2, 1, 0]), n=2)
    ax = fig.axes[0]
    assert len(ax.get_xticks()) == 5 and len(ax.get_yticks()) == 4
    with pytest.raises(ValueError):
        dfig.reverse_strip(traj, traj[:, :2], torch.arange(5))


def test_bound_breakdown_adds_up_to_the_total():
    d = 4
    terms = ddpm.ELBOTerms(
        prior=torch.full((3,), 0.1, dtype=torch.float64),
        diffusion=torch.ones(3, 9, dtype=torch.float64),
        decoder=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
        dim=d,
    )
    b = dfig.bound_breakdown(terms, offset_bits=7.0)
    scale = 1 / (d * math.log(2))
    assert b["L_T"][0] == pytest.approx(0.1 * scale)
    assert b["sum L_t-1"][0] == pytest.approx(9 * scale)
    assert b["L_0"][0] == pytest.approx(2.0 * scale)
    assert b["L_0"][1] == pytest.approx(1.0 / math.sqrt(3) * scale)
    parts = b["L_T"][0] + b["sum L_t-1"][0] + b["L_0"][0]
    assert b["total"][0] == pytest.approx(parts + 7.0)
    assert torch.allclose(dfig.bits_per_step(terms), torch.full((9,), scale, dtype=torch.float64))


def test_bound_breakdown_of_the_exact_model_is_close_to_the_truth():
    # gaussians8 is its own twin: the exact model's bound (sigma^2 = beta) must sit just
    # above the true entropy in bits/dim, and sigma^2 = beta_tilde well above it
    gm = toys.twin("gaussians8")
    sched = schedules.linear_schedule(200)
    x0 = gm.sample(600, torch.Generator().manual_seed(0))
    truth = float(-gm.log_prob(x0).mean() / (2 * math.log(2)))
    model = ddpm.exact_model(gm, sched)
    g = torch.Generator().manual_seed(1)
    beta = dfig.bound_breakdown(ddpm.elbo_terms(model, x0, sched, generator=g))["total"]
    tilde = dfig.bound_breakdown(
        ddpm.elbo_terms(model, x0, sched, variance="beta_tilde", generator=g)
    )["total"]
    assert abs(beta[0] - truth) < 4 * beta[1] + 0.05
    assert tilde[0] > beta[0] + 0.15


def test_nearest_figure_finds_copies():
    train = torch.rand(50, 1, 8, 8) * 2 - 1
    samples = train[[3, 17, 41]] + 0.01
    fig, dist = dfig.nearest_figure(samples, train, n=3)
    assert dist.shape == (3,) and float(dist.max()) < 0.1
    assert len(fig.axes[0].get_xticks()) == 3


def test_loss_weight_figure_draws_both_variances_and_the_hint():
    fig = dfig.loss_weight_figure(schedules.linear_schedule(1000))
    lines = fig.axes[0].lines
    assert len(lines) == 3
    # the beta curve is eq. 12's weight: 0.5 at t = 1, about 0.01 at t = T
    y = lines[0].get_ydata()
    assert y[0] == pytest.approx(0.5, rel=1e-3) and y[-1] == pytest.approx(0.0102, rel=0.02)


def test_reverse_kernel_figure_one_bump_then_many():
    gm = toys.twin("gaussians8")
    lin = schedules.linear_schedule(1000)
    fig, panels = dfig.reverse_kernel_figure(gm, lin, torch.tensor([0.3, 0.2]), 300, n_grid=80)
    assert len(fig.axes) == 2 and [p.s for p in panels] == [299, 100]
    short, long = panels
    # one step: the kernel is nearly DDPM's Gaussian, its mean is its mode, its variance
    # close to beta_t; 200 steps: the mean lies between the modes, where it has little mass
    assert short.mean_density_ratio == pytest.approx(1.0, abs=0.02)
    var = torch.linalg.eigvalsh(short.kernel.covariance())
    assert torch.allclose(var, torch.full_like(var, short.beta_stride), rtol=0.05)
    assert long.mean_density_ratio < 0.2
    with pytest.raises(ValueError, match="2D"):
        dfig.reverse_kernel_figure(
            GaussianMixture.isotropic([1.0], [[0.0]], 1.0), lin, torch.zeros(1), 10
        )
