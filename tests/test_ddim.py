"""Tests for :mod:`course_lib.ddim`: exact identities (DDIM = probability-flow Euler,
eta = 1 = DDPM with beta_tilde), sampling against Gaussian-mixture targets, inversion."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from course_lib import ddim, ddpm, metrics, toys
from course_lib.schedules import cosine_schedule, linear_schedule, respace

LINEAR = linear_schedule(1000)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_model(seed: int = 0):
    """A smooth, time-dependent stand-in for a trained network, in float64: the identities
    below hold for any model."""
    g = _gen(seed)
    w, b = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(2, generator=g)

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w + tau[:, None] * b.to(x))

    return model


# ----------------------------------------------------------------------- grids
@pytest.mark.parametrize("kind", ["uniform", "quadratic"])
@pytest.mark.parametrize(
    ("big_t", "n"), [(1000, 1), (1000, 10), (1000, 50), (1000, 100), (1000, 1000), (37, 7)]
)
def test_timesteps_are_valid_grids(kind: str, big_t: int, n: int) -> None:
    tau = ddim.timesteps(big_t, n, kind)
    assert tau.dtype == torch.long and tau.shape == (n,)
    assert (tau[1:] > tau[:-1]).all() and tau[0] >= 1 and tau[-1] == big_t
    respace(LINEAR if big_t == 1000 else linear_schedule(big_t), tau)  # a valid sub-grid


def test_timesteps_values() -> None:
    assert ddim.timesteps(1000, 10).tolist() == list(range(100, 1001, 100))
    assert ddim.timesteps(1000, 10, "quadratic").tolist() == [10 * i * i for i in range(1, 11)]
    quad = ddim.timesteps(1000, 100, "quadratic")
    assert quad[:10].tolist() == list(range(1, 11))  # floor(0.1 i^2) <= i: deduplicated
    assert quad[20].item() == 44  # floor(0.1 * 21^2)
    steps = ddim.timesteps(1000, 100, "quadratic").diff()
    assert (steps[1:] >= steps[:-1]).all()  # denser near the data
    with pytest.raises(ValueError, match="kind"):
        ddim.timesteps(1000, 10, "cubic")
    with pytest.raises(ValueError, match="n_steps"):
        ddim.timesteps(10, 11)
    with pytest.raises(ValueError, match="n_steps"):
        ddim.timesteps(10, 0)


# ------------------------------------------------------------- exact identities
def test_sigma_eta_one_is_beta_tilde() -> None:
    for schedule in (LINEAR, cosine_schedule(1000), respace(LINEAR, ddim.timesteps(1000, 20))):
        for t in (1, 2, 3, schedule.T // 2, schedule.T):
            sigma = ddim.ddim_sigma(schedule, t, t - 1, 1.0)
            assert sigma**2 == pytest.approx(float(schedule.beta_tilde[t]), rel=1e-10, abs=1e-300)
            assert ddim.ddim_sigma(schedule, t, t - 1, 0.0) == 0.0


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_eta0_step_is_probability_flow_euler(parameterization: str) -> None:
    model = _random_model()
    x = torch.randn(64, 2, generator=_gen(0), dtype=torch.float64)
    sub = respace(LINEAR, ddim.timesteps(1000, 25, "quadratic"))
    for schedule, t, t_prev in [(LINEAR, 1000, 980), (LINEAR, 500, 0), (LINEAR, 2, 1), (sub, 7, 6)]:
        step = ddim.ddim_step(model, x, t, t_prev, schedule, 0.0, None, parameterization)
        euler = ddim.probability_flow_euler_step(model, x, t, t_prev, schedule, parameterization)
        torch.testing.assert_close(step, euler, rtol=1e-12, atol=1e-12)
        # and by hand, in x_bar = x / sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar)
        eps = ddpm.predict(model, x, t, schedule, parameterization).eps
        ab, ab_prev = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t_prev])
        sig, sig_prev = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_prev) / ab_prev)
        by_hand = math.sqrt(ab_prev) * (x / math.sqrt(ab) + (sig_prev - sig) * eps)
        torch.testing.assert_close(euler, by_hand, rtol=1e-12, atol=1e-12)


def test_eta1_is_ancestral_sampling_with_beta_tilde() -> None:
    # the same noise draws, the same samples: on the full grid (any model) and a sub-grid
    x_T = torch.randn(50, 2, generator=_gen(1), dtype=torch.float64)
    sub = respace(LINEAR, ddim.timesteps(1000, 20))
    gm = toys.twin("gaussians8")
    for model, schedule in ((_random_model(), LINEAR), (ddpm.exact_model(gm, sub), sub)):
        a = ddim.ddim_sample(model, x_T, schedule, None, eta=1.0, generator=_gen(2)).x
        b = ddpm.ancestral_sample(model, x_T, schedule, "beta_tilde", generator=_gen(2)).x
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_eta1_step_variance_by_monte_carlo() -> None:
    n, t = 40_000, 300
    x = torch.randn(1, 2, generator=_gen(3), dtype=torch.float64).expand(n, 2)
    model = ddpm.exact_model(toys.twin("gaussians8"), LINEAR)
    mean = ddim.ddim_step(model, x[:1], t, t - 50, LINEAR, eta=0.7)
    draws = ddim.ddim_step(model, x, t, t - 50, LINEAR, eta=0.7, generator=_gen(4))
    var = ddim.ddim_sigma(LINEAR, t, t - 50, 0.7) ** 2
    # eta only moves weight between the eps direction and fresh noise: the mean is
    # sqrt(alpha_bar_prev) x0 + sqrt(1 - alpha_bar_prev - sigma^2) eps, the variance sigma^2
    ab_prev = float(LINEAR.alpha_bar[t - 50])
    pred = ddpm.predict(model, x[:1], t, LINEAR)
    expected_mean = math.sqrt(ab_prev) * pred.x0 + math.sqrt(1 - ab_prev - var) * pred.eps
    resid = draws - expected_mean
    se = math.sqrt(var / n)
    assert (resid.mean(0).abs() < 5 * se).all()
    assert ((resid.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)).all()
    assert not torch.allclose(mean, expected_mean)  # eta = 0 has another mean


# -------------------------------------------------------------------- sampling
FINE_BANDWIDTH = 0.15
LIMITS = {"sliced_w2": 2.5, "fine_mmd": 3.0}  # from the null distribution: tests/test_ddpm.py


@functools.cache
def _floors(name: str, n: int) -> dict[str, float]:
    gm, g = toys.twin(name), _gen(n)
    floor = metrics.floor(lambda k: gm.sample(k, g), n, repeats=4)
    fine = [metrics.mmd(gm.sample(n, g), gm.sample(n, g), FINE_BANDWIDTH) for _ in range(4)]
    return {"mmd": floor["mmd"], "sliced_w2": floor["sliced_w2"], "fine_mmd": sum(fine) / 4}


def distance_ratios(name: str, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Distances to exact samples of the twin over their floors (see tests/test_ddpm.py)."""
    g, n = _gen(seed), x.shape[0]
    refs = [toys.twin(name).sample(n, g) for _ in range(2)]
    dist = {
        "mmd": lambda ref: metrics.mmd(x, ref),
        "sliced_w2": lambda ref: metrics.sliced_wasserstein(x, ref),
        "fine_mmd": lambda ref: metrics.mmd(x, ref, FINE_BANDWIDTH),
    }
    floors = _floors(name, n)
    return {k: sum(f(ref) for ref in refs) / 2 / floors[k] for k, f in dist.items()}


@pytest.mark.parametrize(
    ("name", "steps", "kind", "n"),
    [("gaussians8", 100, "uniform", 2000), ("moons", 100, "quadratic", 1000)],
)
def test_ddim_matches_target(name: str, steps: int, kind: str, n: int) -> None:
    x_T = torch.randn(n, 2, generator=_gen(5))
    model = ddpm.exact_model(toys.twin(name), LINEAR)
    grid = ddim.timesteps(1000, steps, kind)
    result = ddim.ddim_sample(model, x_T, LINEAR, grid, keep=10)
    assert result.nfe == steps and result.times[0] == 1000 and result.times[-1] == 0
    torch.testing.assert_close(result.trajectory[-1], result.x)
    ratios = distance_ratios(name, result.x, 7)
    print(f"DDIM {name} {steps} {kind} steps: distance / floor {ratios}")
    assert all(ratios[k] < limit for k, limit in LIMITS.items())


def test_clip_x0() -> None:
    model = ddpm.exact_model(toys.twin("gaussians8"), LINEAR)
    x_T = torch.randn(100, 2, generator=_gen(8))
    x = ddim.ddim_sample(model, x_T, LINEAR, 10, clip_x0=0.5).x
    assert x.abs().max() <= 0.5 + 1e-6


# ------------------------------------------------------------------- inversion
def test_inversion_reconstructs_its_input() -> None:
    gm = toys.twin("gaussians8")
    model = ddpm.exact_model(gm, LINEAR)
    x0 = gm.sample(300, _gen(9)).double()
    errors = []
    for steps in (10, 50, 250):
        # the exact (smooth) model round-trips better at the destination step (see
        # test_inversion_both_choices_of_the_evaluation_step)
        inv = ddim.ddim_invert(model, x0, LINEAR, steps, keep=1, eps_at="destination")
        assert inv.nfe == steps and inv.times[0] == 0 and inv.times[-1] == 1000
        x_T = inv.x
        assert abs(float(x_T.std()) - 1) < 0.15  # latents look like N(0, I)
        back = ddim.ddim_sample(model, x_T, LINEAR, steps).x
        errors.append(float((back - x0).norm(dim=1).mean()))
    print(f"inversion errors (10, 50, 250 steps): {errors}")
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02  # the modes have std 0.1


def test_inversion_both_choices_of_the_evaluation_step() -> None:
    # decoding evaluates eps(x_{i+1}, t_{i+1}) on the step t_{i+1} -> t_i; for the exact
    # (smooth) model, inverting with eps(x_i, t_{i+1}) (same time) is closer to its inverse
    # than Euler's eps(x_i, t_i); for the MNIST U-Net it is the other way round (chapter 4),
    # which is why "source" is the default
    gm = toys.twin("moons")
    model = ddpm.exact_model(gm, LINEAR)
    x0 = gm.sample(200, _gen(30)).double()
    err = {}
    for eps_at in ddim.INVERSION_STEPS:
        for steps in (10, 50):
            x_T = ddim.ddim_invert(model, x0, LINEAR, steps, eps_at=eps_at).x
            back = ddim.ddim_sample(model, x_T, LINEAR, steps).x
            err[eps_at, steps] = float((back - x0).pow(2).mean().sqrt())
    print(f"round-trip rmse: {err}")
    for steps in (10, 50):
        assert err["destination", steps] < 0.75 * err["source", steps]
    assert err["source", 50] < err["source", 10] and err["destination", 50] < err["destination", 10]
    # with one step both choices are the same (the first step has no model at t = 0)
    one = [ddim.ddim_invert(model, x0, LINEAR, 1, eps_at=e).x for e in ddim.INVERSION_STEPS]
    torch.testing.assert_close(one[0], one[1])
    with pytest.raises(ValueError, match="eps_at"):
        ddim.ddim_invert(model, x0, LINEAR, 5, eps_at="middle")


def test_slerp() -> None:
    g = _gen(10)
    z0, z1 = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    torch.testing.assert_close(ddim.slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(ddim.slerp(z0, z1, 1.0), z1)
    alpha = torch.linspace(0, 1, 7)
    path = ddim.slerp(z0, z1, alpha)
    assert path.shape == (7, 5, 3, 4)
    torch.testing.assert_close(path[3], ddim.slerp(z0, z1, 0.5))
    # orthonormal end points: the path stays on the unit circle, at angle alpha * pi / 2
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    arc = ddim.slerp(e0, e1, alpha)[:, 0]
    torch.testing.assert_close(arc.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(torch.atan2(arc[:, 1], arc[:, 0]), alpha * math.pi / 2)
    # independent Gaussian latents in high dimension: slerp keeps the norm ~ sqrt(D),
    # the straight line's midpoint has norm ~ sqrt(D / 2)
    d = 4096
    a, b = torch.randn(8, d, generator=g), torch.randn(8, d, generator=g)
    mid = ddim.slerp(a, b, 0.5).norm(dim=1) / math.sqrt(d)
    lerp = (0.5 * (a + b)).norm(dim=1) / math.sqrt(d)
    assert ((mid - 1).abs() < 0.05).all() and ((lerp - math.sqrt(0.5)).abs() < 0.05).all()
    # parallel latents fall back to the straight line
    torch.testing.assert_close(ddim.slerp(z0, 2 * z0, 0.25), 1.25 * z0)
    with pytest.raises(ValueError, match="slerp"):
        ddim.slerp(z0, z1[:, :2], 0.5)


def test_interpolate() -> None:
    gm = toys.twin("gaussians8")
    model = ddpm.exact_model(gm, LINEAR)
    x0 = gm.sample(6, _gen(11)).double()
    out = ddim.interpolate(model, x0[:3], x0[3:], LINEAR, steps=100, n=5)
    assert out.x.shape == (5, 3, 2) and out.z.shape == (5, 3, 2) and out.alpha.shape == (5,)
    assert torch.isfinite(out.x).all()
    torch.testing.assert_close(out.x[0], x0[:3], atol=0.05, rtol=0)
    torch.testing.assert_close(out.x[-1], x0[3:], atol=0.05, rtol=0)
    # interpolants land on the data: every point near one of the eight modes
    dist = torch.cdist(out.x.reshape(-1, 2), gm.means.to(out.x)).min(1).values
    assert (dist < 0.5).all()


def test_errors() -> None:
    model = _random_model()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="t_prev"):
        ddim.ddim_step(model, x, 10, 10, LINEAR)
    with pytest.raises(ValueError, match="t_prev"):
        ddim.ddim_step(model, x, 1001, 10, LINEAR)
    with pytest.raises(ValueError, match="parameterization"):
        ddim.ddim_sample(model, x, LINEAR, 10, parameterization="score")
    with pytest.raises(ValueError, match="increasing"):
        ddim.ddim_sample(model, x, LINEAR, [500, 100])
    with pytest.raises(ValueError, match="n must"):
        ddim.interpolate(model, x, x, LINEAR, 10, n=1)


def test_exercise_references_eta_one_is_ddpm_and_slerp_survives_parallel_rows() -> None:
    from course_lib.exercises import ch04

    # the reference of "ch04.ddim_coefficients" at eta = 1 is DDPM's posterior (eq. 7)
    sched = linear_schedule(1000)
    pair = respace(sched, [300, 500])
    ab_prev, ab_t = float(pair.alpha_bar[1]), float(pair.alpha_bar[2])
    c0, ct, sigma = ch04._ddim_coefficients(ab_t, ab_prev, 1.0)
    x0, xt = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.2]], dtype=torch.float64)
    post = ddpm.q_posterior(x0, xt, 2, pair)
    assert c0 * 0.7 + ct * -0.2 == pytest.approx(float(post.mean), rel=1e-12)
    assert sigma**2 == pytest.approx(float(post.variance), rel=1e-12)
    # the naive slerp divides 0 by 0 for identical rows: the check must say so
    result = ch04.check_slerp.run(ch04._naive_slerp)
    assert result.status == "failed" and "parallel" in result.message
    assert ch04.check_slerp.run(ch04._slerp).passed
