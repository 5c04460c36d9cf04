"""Ground truth for flow matching: paths, the exact marginal velocity, the CFM loss, the
conversions to diffusion's parameterisations, and sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from course_lib import flow_matching as fm
from course_lib import likelihood, solvers, toys
from course_lib import sde as sdes
from course_lib.gaussian_mixture import GaussianMixture

PATH_NAMES = tuple(fm.PATHS)


@pytest.fixture(scope="module")
def gm() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[1.5, -0.5], [-1.0, 1.0]]),
        torch.tensor([[[0.20, 0.05], [0.05, 0.10]], [[0.3, 0.0], [0.0, 0.05]]]),
    )


@pytest.mark.parametrize("name", PATH_NAMES)
def test_path_ends_and_derivatives(name: str) -> None:
    path = fm.get_path(name)
    t = torch.linspace(0.05, min(0.95, path.t_max - 0.01), 19, dtype=torch.float64)
    h = 1e-6  # central differences: error O(h²) ≈ 1e-12 times the third derivative
    for coef, deriv in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        fd = (coef(t + h) - coef(t - h)) / (2 * h)
        torch.testing.assert_close(deriv(t), fd, rtol=1e-7, atol=1e-8)
    assert float(path.sigma(0.0)) == pytest.approx(1.0, abs=1e-4)
    if name != "vp":  # the VP path only nears the ends (α_0 ≈ 0.0066)
        assert float(path.alpha(0.0)) == pytest.approx(0.0, abs=1e-15)
        assert float(path.alpha(1.0)) == pytest.approx(1.0)
        assert float(path.sigma(1.0)) == pytest.approx(0.0, abs=1e-15)
    else:
        assert 0 < float(path.alpha(0.0)) < 0.01
        assert float(path.sigma(path.t_max)) < 0.05


def _continuity_terms(u, log_p, x: torch.Tensor, t: torch.Tensor, h: float = 1e-5):
    """``∂_t log p_t`` by central differences and ``∇·u_t + u_t·∇log p_t`` by autograd
    (written here independently of ``flow_figures.continuity_check``)."""
    dt_log_p = (log_p(x, t + h) - log_p(x, t - h)) / (2 * h)
    x_req = x.clone().requires_grad_(True)
    v = u(x_req, t)
    div = sum(
        torch.autograd.grad(v[:, i].sum(), x_req, retain_graph=True)[0][:, i] for i in range(2)
    )
    x_req2 = x.clone().requires_grad_(True)
    score = torch.autograd.grad(log_p(x_req2, t).sum(), x_req2)[0]
    return dt_log_p, div + (v * score).sum(1), div


@pytest.mark.parametrize("name", PATH_NAMES)
def test_exact_velocity_solves_the_continuity_equation(gm: GaussianMixture, name: str) -> None:
    """``∂_t log p_t + ∇·u_t + u_t·∇log p_t = 0``, i.e. ``∂_t p_t + ∇·(p_t u_t) = 0``."""
    path = fm.get_path(name)
    u = fm.exact_velocity(gm, path)
    log_p = fm.exact_log_prob(gm, path)
    g = torch.Generator().manual_seed(0)
    for t_val in (0.2, 0.5, 0.8):
        t = torch.tensor(t_val, dtype=torch.float64)
        x = gm.noised(float(path.alpha(t)), float(path.sigma(t))).sample(64, g).double()
        dt_log_p, flux, div = _continuity_terms(u, log_p, x, t)
        residual = dt_log_p + flux
        scale = dt_log_p.abs().max() + div.abs().max()
        # central differences in t at h = 1e-5: truncation ~1e-10, round-off ~1e-11 / h
        assert residual.abs().max() < 1e-6 * scale, (name, t_val, residual.abs().max())


def test_exact_velocity_is_wrong_for_a_wrong_path(gm: GaussianMixture) -> None:
    """The continuity test above can fail: the linear path's velocity does not transport
    the cosine path's densities."""
    lin, cos = fm.linear_path(), fm.cosine_path()
    u = fm.exact_velocity(gm, lin)
    log_p = fm.exact_log_prob(gm, cos)
    t = torch.tensor(0.5, dtype=torch.float64)
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dt_log_p, flux, _ = _continuity_terms(u, log_p, x, t)
    assert (dt_log_p + flux).abs().max() > 1e-2


@pytest.mark.parametrize("name", PATH_NAMES)
def test_cfm_loss_is_minimised_by_the_exact_velocity(gm: GaussianMixture, name: str) -> None:
    """With common random numbers, ``L(u + δ) - L(u) = mean δ² + 2 mean δ·(u - u_cond)``;
    the cross term has mean zero because ``u = E[u_cond | x_t]`` (the CFM gradient
    identity), so the difference is ``mean δ²`` within its Monte-Carlo error."""
    path = fm.get_path(name)
    u = fm.exact_velocity(gm, path)
    g = torch.Generator().manual_seed(2)
    n = 20_000
    x1 = gm.sample(n, g).double()
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = path.t_max * torch.rand(n, generator=g, dtype=torch.float64)
    delta = torch.tensor([0.2, -0.1], dtype=torch.float64)
    base = fm.cfm_loss_at(u, x0, x1, t, path)
    shifted = fm.cfm_loss_at(lambda x, s: u(x, s) + delta, x0, x1, t, path)
    # the cross term per sample, for its standard error
    xt = path.interpolate(x0, x1, t)
    resid = u(xt, t) - path.conditional_velocity(x0, x1, t)
    cross = (2 * resid * delta).mean(1)
    se = float(cross.std() / math.sqrt(n))
    expected = float((delta**2).mean())
    assert abs(float(shifted - base) - expected) < 4 * se
    assert float(shifted - base) > 0
    # a field that is off by a constant is detectably worse than the exact one
    assert expected > 4 * se


@pytest.mark.parametrize("name", PATH_NAMES)
def test_conversions_round_trip(gm: GaussianMixture, name: str) -> None:
    path = fm.get_path(name)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(50, generator=g, dtype=torch.float64) * 0.8 + 0.1
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    a = torch.randn(50, 2, generator=g, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        fm.eps_from_velocity(path, x, fm.velocity_from_eps(path, x, a, t), t), a, **tol
    )
    torch.testing.assert_close(
        fm.x1_from_velocity(path, x, fm.velocity_from_x1(path, x, a, t), t), a, **tol
    )
    torch.testing.assert_close(
        fm.score_from_velocity(path, x, fm.velocity_from_score(path, x, a, t), t), a, **tol
    )
    torch.testing.assert_close(fm.score_from_eps(path, fm.eps_from_score(path, a, t), t), a, **tol)
    # every parameterisation of the exact field gives the exact velocity
    u = fm.exact_velocity(gm, path)(x, t)
    alpha, sigma = path.alpha(t), path.sigma(t)
    score = gm.noised_score(x, alpha, sigma)
    x1 = gm.optimal_denoiser(x, alpha, sigma)
    eps = fm.eps_from_score(path, score, t)
    torch.testing.assert_close(fm.velocity_from_score(path, x, score, t), u, **tol)
    torch.testing.assert_close(fm.velocity_from_x1(path, x, x1, t), u, **tol)
    torch.testing.assert_close(fm.velocity_from_eps(path, x, eps, t), u, **tol)
    torch.testing.assert_close(fm.velocity_from_x1_eps(path, x1, eps, t), u, **tol)
    # flow time ↔ EDM noise level
    torch.testing.assert_close(path.t_from_edm_sigma(path.edm_sigma(t)), t, **tol)


def test_time_maps() -> None:
    lin = fm.linear_path()
    sigma = torch.tensor([0.01, 0.5, 1.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(lin.t_from_edm_sigma(sigma), 1 / (1 + sigma), rtol=1e-12, atol=0)
    vp = fm.vp_path()
    s = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(fm.diffusion_time(fm.diffusion_time(s)), s)
    m = sdes.VPSDE().marginal(s)
    torch.testing.assert_close(vp.alpha(1 - s), m.a)
    torch.testing.assert_close(vp.sigma(1 - s), m.std)


def test_vp_flow_of_a_diffusion_model_is_chapter_5s_pf_ode(gm: GaussianMixture) -> None:
    """The exact diffusion noise predictor, converted to a velocity on the VP path and
    integrated forward in flow time, reproduces chapter 5's probability-flow ODE run
    backward in diffusion time on the mirrored grid (the same RK4 steps)."""
    sde = sdes.VPSDE()
    score = sdes.exact_score(sde, gm)

    def eps_model(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -sde.marginal(s).std[:, None].to(x) * score(x, s)

    path = fm.vp_path(sde)
    v = fm.velocity_from_diffusion_eps(eps_model, path)
    x0 = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    flow = fm.sample(v, x0, 40, "rk4", path=path).x
    grid = 1 - fm.time_grid(40, path)
    pf = solvers.solve_ode(sdes.pf_ode_drift(sde, score), x0, grid, "rk4").x
    torch.testing.assert_close(flow, pf, rtol=1e-8, atol=1e-8)


def test_euler_converges_at_first_order(gm: GaussianMixture) -> None:
    path = fm.linear_path()
    u = fm.exact_velocity(gm, path)
    x0 = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    reference = fm.sample(u, x0, 400, "rk4").x
    errors = [
        float((fm.sample(u, x0, n, "euler").x - reference).norm(dim=1).mean())
        for n in (25, 50, 100)
    ]
    for coarse, fine in itertools.pairwise(errors):
        assert 1.6 < coarse / fine < 2.4, errors  # halving h halves a first-order error
    heun = float((fm.sample(u, x0, 50, "heun").x - reference).norm(dim=1).mean())
    assert heun < errors[1] / 5  # second order beats first at equal steps


def test_exact_flow_likelihood_is_the_mixture_log_prob(gm: GaussianMixture) -> None:
    """Chapter 5's instantaneous change of variables on the exact linear-path flow, run
    from the data (t = 1) to the noise (t = 0), gives ``log p`` of the mixture."""
    path = fm.linear_path()
    x = gm.sample(40, torch.Generator().manual_seed(6)).double()

    def prior(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(1) - math.log(2 * math.pi)

    ll = likelihood.ode_log_likelihood(
        fm.exact_velocity(gm, path), x, 1.0, 0.0, prior, rtol=1e-8, atol=1e-8
    )
    torch.testing.assert_close(ll.log_p, gm.log_prob(x), rtol=0, atol=1e-4)


def test_straightness_of_straight_and_curved_fields() -> None:
    x0 = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    shift = torch.tensor([1.0, 2.0], dtype=torch.float64)
    straight = fm.straightness(lambda x, t: shift.expand_as(x), x0, 20)
    assert straight.straightness == pytest.approx(0.0, abs=1e-12)
    assert straight.path_energy == pytest.approx(5.0)
    assert straight.displacement == pytest.approx(5.0)
    # rotation by one radian: the arc has length |x|, the chord 2 sin(1/2) |x|, so
    # S / E = 1 - 2 (1 - cos 1); Euler's radius grows by (1 + h²)^(S/2) ≈ 1.0025 at S = 200
    rot = fm.straightness(lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1), x0, 200)
    ratio = 1 - 2 * (1 - math.cos(1.0))
    assert rot.straightness / rot.path_energy == pytest.approx(ratio, rel=0.02)
    assert rot.path_energy == pytest.approx(rot.straightness + rot.displacement, rel=1e-9)


def test_errors() -> None:
    with pytest.raises(ValueError, match="Unknown path"):
        fm.get_path("straight")
    with pytest.raises(ValueError, match=r"t = 0 noise"):
        fm.linear_path().alpha(1.5)
    with pytest.raises(ValueError, match="must match"):
        fm.cfm_loss_at(
            lambda x, t: x, torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3), fm.linear_path()
        )
    with pytest.raises(ValueError, match="n_steps"):
        fm.time_grid(0)


def test_cfm_loss_draws_and_couples() -> None:
    twin = toys.twin("moons")
    path = fm.linear_path()
    u = fm.exact_velocity(twin, path)
    x1 = twin.sample(256, torch.Generator().manual_seed(8))
    seen = {}

    def coupling(x0, x1, generator):
        seen["shapes"] = (x0.shape, x1.shape)
        return x0, x1

    loss = fm.cfm_loss(u, x1, path, coupling, torch.Generator().manual_seed(9))
    assert seen["shapes"] == (x1.shape, x1.shape)
    zero = fm.cfm_loss(
        lambda x, t: torch.zeros_like(x), x1, path, None, torch.Generator().manual_seed(9)
    )
    assert 0 < float(loss) < float(zero)


def test_flow_between_gaussians_is_their_ot_map() -> None:
    """For ``x1 ~ N(m, c² I)`` the linear path's marginal flow maps ``x0`` to ``m + c x0``,
    the OT (Brenier) map between the two Gaussians; so a reflow of the exact flow returns
    OT pairs, with transport cost ``W₂² = ‖m‖² + D (1 - c)²``."""
    m, c = torch.tensor([2.0, -1.0]), 0.5
    gm = GaussianMixture.isotropic([1.0], m[None], c)
    x0 = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    pairs = fm.reflow_pairs(fm.exact_velocity(gm, fm.linear_path()), x0, 100, "rk4")
    torch.testing.assert_close(pairs[1], m.double() + c * x0, rtol=1e-7, atol=1e-7)
    cost = float(((pairs[1] - pairs[0]) ** 2).sum(1).mean())
    w2 = float((m**2).sum()) + 2 * (1 - c) ** 2
    # Monte Carlo: ‖m + (c - 1) x0‖² has std ≈ 2 |c - 1| ‖m‖ ≈ 2.2, so the mean of 500 has se ≈ 0.1
    assert cost == pytest.approx(w2, abs=0.4)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_cfm_loss_of_a_noise_predictor_is_a_weighted_eps_loss(name: str) -> None:
    """Sample by sample, ``‖v(ε̂) - u_cond‖² = λ_t ‖ε̂ - x0‖²`` for *any* noise predictor
    (here an arbitrary smooth function), which is what "flow matching with a Gaussian path
    is diffusion with a time weighting" means."""
    path = fm.get_path(name)
    g = torch.Generator().manual_seed(11)
    n = 64
    x1 = torch.randn(n, 2, generator=g, dtype=torch.float64) + 1.0
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64) * path.t_max
    xt = path.interpolate(x0, x1, t)
    eps_hat = torch.tanh(xt) + 0.1 * t[:, None]
    v = fm.velocity_from_eps(path, xt, eps_hat, t)
    lhs = ((v - path.conditional_velocity(x0, x1, t)) ** 2).sum(1)
    rhs = fm.eps_loss_weight(path, t) * ((eps_hat - x0) ** 2).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-12)
    if name == "linear":  # σ̇ - α̇σ/α = -1 - (1 - t)/t = -1/t
        torch.testing.assert_close(fm.eps_loss_weight(path, t), t**-2)
