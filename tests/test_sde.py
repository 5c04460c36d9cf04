"""Tests for :mod:`course_lib.sde`: the Fokker–Planck equation at round-off, marginals
against Monte Carlo of the forward SDE, the discretisations (DDPM's chain and ancestral
step exactly, chapter 2's ladder), and the samplers against the exact mixture."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import ddim, ddpm, metrics, solvers
from course_lib import sde as sdes
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.langevin import geometric_sigmas
from course_lib.schedules import linear_schedule, respace
from course_lib.score_matching import divergence

# three components, one correlated, one elongated: no symmetry hides a wrong sign
GM = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2]),
    torch.tensor([[-1.0, 0.5], [1.2, -0.3], [0.0, 1.5]]),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.1]], [[0.05, 0.0], [0.0, 0.4]]]),
)
FAMILIES = {"VE": sdes.VESDE(), "VP": sdes.VPSDE(), "subVP": sdes.SubVPSDE()}
N = 4000  # samples for the KL checks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noised_points(sde: sdes.SDE, t: float, n: int, seed: int) -> torch.Tensor:
    """Points spread like ``p_t`` (where the identities matter)."""
    g = _gen(seed)
    return sde.perturb(GM.sample(n, g).double(), t, torch.randn(n, 2, generator=g).double())


# ------------------------------------------------------------ the families themselves
@pytest.mark.parametrize("name", list(FAMILIES))
def test_edm_sigma_round_trip_and_endpoints(name: str) -> None:
    sde = FAMILIES[name]
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sigma = sde.edm_sigma(t)
    assert sigma[0] == 0 and (sigma[1:] > sigma[:-1]).all()
    torch.testing.assert_close(sde.t_from_edm_sigma(sigma), t, rtol=0, atol=1e-12)
    m = sde.marginal(t)
    torch.testing.assert_close(m.std / m.a, sigma)
    assert m.a[0] == 1 and m.std[0] == 0  # t = 0 is the data itself
    torch.testing.assert_close(sde.edm_scale(t), m.a)


def test_family_relations() -> None:
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    vp, sub = FAMILIES["VP"].marginal(t), FAMILIES["subVP"].marginal(t)
    torch.testing.assert_close(vp.a**2 + vp.std**2, torch.ones_like(t))  # variance preserving
    torch.testing.assert_close(sub.a, vp.a)
    assert (sub.std < vp.std).all()  # "sub"-VP
    assert FAMILIES["VE"].marginal(1.0).std == pytest.approx(math.sqrt(50**2 - 0.01**2))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_prior(name: str) -> None:
    sde = FAMILIES[name]
    z = sde.prior_sample((50_000, 2), _gen(0), torch.float64)
    assert z.dtype == torch.float64
    assert z.std().item() == pytest.approx(sde.prior_std, rel=0.02)  # SE 0.3 %
    want = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z[:10]).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(z[:10]), want)


# ------------------------------------------------------------ Fokker–Planck
def _d_dt(f, t: float, delta: float = 1e-4) -> torch.Tensor:
    """Five-point central difference, error O(delta^4)."""
    return (-f(t + 2 * delta) + 8 * f(t + delta) - 8 * f(t - delta) + f(t - 2 * delta)) / (
        12 * delta
    )


def _fp_terms(
    sde: sdes.SDE, lam: float, t: float, x: torch.Tensor, laplace_term: bool = True
) -> list[torch.Tensor]:
    """The terms of ``∂_t log p + ∇·u_λ + u_λ·∇log p + (λ²/2) g² (Δ log p + |∇log p|²)``
    at points ``x`` and time ``t``, with the exact score and log-density of ``GM``."""
    score, log_prob = sdes.exact_score(sde, GM), sdes.exact_log_prob(sde, GM)
    tt = torch.full((x.shape[0],), t, dtype=torch.float64)

    def u(y: torch.Tensor) -> torch.Tensor:
        return sdes.reverse_drift(sde, score, y, tt, lam)

    def score_t(y: torch.Tensor) -> torch.Tensor:
        return score(y, tt)

    s, half_g2 = score_t(x), 0.5 * lam**2 * sde.diffusion(tt) ** 2
    terms = [
        _d_dt(lambda r: log_prob(x, torch.full_like(tt, r)), t),
        divergence(u, x, create_graph=False),
        (u(x) * s).sum(1),
    ]
    if laplace_term:
        terms += [half_g2 * divergence(score_t, x, create_graph=False), half_g2 * (s * s).sum(1)]
    return terms


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_fokker_planck_holds_for_the_reverse_family(name: str, lam: float) -> None:
    """With the exact score, ``u_λ = f - (1 + λ²)/2 g² ∇log p_t`` satisfies

    ``∂_t log p + ∇·u_λ + u_λ·∇log p + (λ²/2) g² (Δ log p + |∇log p|²) = 0``

    (``∂_t p = -∇·(u_λ p) - (λ²/2) g² Δp`` divided by ``p``); ``λ = 0`` is the PF-ODE's
    continuity equation. Checked at random points and times to round-off."""
    sde, worst = FAMILIES[name], 0.0
    for i, t in enumerate([0.05, 0.3, 0.7, 0.95]):
        terms = _fp_terms(sde, lam, t, _noised_points(sde, t, 32, seed=i))
        scale = sum(term.abs() for term in terms)  # up to ~1e4 for VE at t = 0.95
        worst = max(worst, float((sum(terms).abs() / scale).max()))
    assert worst < 1e-8, worst  # measured: at most 2e-10 (the finite difference in t)


def test_fokker_planck_check_can_fail() -> None:
    """The same check with the reverse SDE's drift but no diffusion term: off by O(1)."""
    sde = FAMILIES["VP"]
    terms = _fp_terms(sde, 1.0, 0.3, _noised_points(sde, 0.3, 32, seed=0), laplace_term=False)
    assert sum(terms).abs().mean() > 1


# ------------------------------------------------------------ marginals by Monte Carlo
@pytest.mark.parametrize("name", list(FAMILIES))
def test_marginals_match_monte_carlo_of_the_forward_sde(name: str) -> None:
    """Euler–Maruyama on ``dx = f dt + g dw`` from data: mean and covariance at t = 0.5 and
    t = 1 agree with ``N(a m, a² C + std² I)`` (moments of the noised mixture) within
    their standard errors (estimated from the same samples)."""
    sde, n, steps = FAMILIES[name], 10_000, 1000
    g = _gen(1)
    x = GM.sample(n, g).double()
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist()
    for i in range(steps):
        x = solvers.euler_maruyama_step(sde.drift, sde.diffusion, x, grid[i], grid[i + 1], g)
        if i + 1 in (steps // 2, steps):
            m = sde.marginal(grid[i + 1])
            mean = float(m.a) * GM.mean()
            cov = float(m.a) ** 2 * GM.covariance() + float(m.std) ** 2 * torch.eye(2)
            dev = x - x.mean(0)
            prods = dev[:, :, None] * dev[:, None, :]  # (n, 2, 2)
            z_mean = (x.mean(0) - mean) / (x.std(0) / math.sqrt(n))
            z_cov = (prods.mean(0) - cov) / (prods.std(0) / math.sqrt(n))
            assert z_mean.abs().max() < 4.5 and z_cov.abs().max() < 4.5, (z_mean, z_cov)


# ------------------------------------------------------------ discretisations
def test_vp_discretisation_is_ddpm_linear_schedule() -> None:
    assert torch.equal(sdes.VPSDE().discretize(1000).beta, linear_schedule(1000).beta)


def test_ve_discretisation_is_chapter_2_ladder_and_smld_chain() -> None:
    sde = sdes.VESDE(sigma_min=0.01, sigma_max=50.0)
    ladder = sde.discretize(10)
    torch.testing.assert_close(ladder, geometric_sigmas(50.0, 0.01, 10), rtol=1e-12, atol=0)
    # the exact transition between ladder times is SMLD's step, sigma_i² - sigma_{i-1}²
    t = torch.linspace(1, 0, 10, dtype=torch.float64)
    step = sde.transition(t[1:], t[:-1])
    assert (step.a == 1).all()
    torch.testing.assert_close(step.std**2, ladder[:-1] ** 2 - ladder[1:] ** 2, rtol=1e-12, atol=0)


def _vp_matching(schedule) -> tuple[sdes.VPSDE, list[float]]:
    """The VP SDE (β_min = 0.1) whose ``a(1)² = alpha_bar_T``, and the times ``t_i`` with
    ``a(t_i)² = alpha_bar_i``. (DDPM's T = 1000 chain runs slightly past the default VP
    SDE's t = 1: ``alpha_bar_1000 = 4.04e-5 < e^{-10.05}``, at t = 1.0034.)"""
    big_b = float(-torch.log(schedule.alpha_bar[-1]))
    sde = sdes.VPSDE(beta_min=0.1, beta_max=2 * big_b - 0.1)
    sigma = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
    return sde, sde.t_from_edm_sigma(sigma).clamp(0, 1).tolist()


def test_vp_transition_on_ddpm_grid_is_ddpm_chain() -> None:
    schedule = linear_schedule(1000)
    sde, t = _vp_matching(schedule)
    t = torch.tensor(t, dtype=torch.float64)
    step = sde.transition(t[:-1], t[1:])
    torch.testing.assert_close(step.a**2, schedule.alpha[1:], rtol=1e-12, atol=0)
    torch.testing.assert_close(step.std**2, schedule.beta[1:], rtol=1e-9, atol=0)


@pytest.mark.parametrize(("variance", "n_steps"), [("beta", 1000), ("beta_tilde", 50)])
def test_vp_ancestral_step_is_ddpm_algorithm_2(variance: str, n_steps: int) -> None:
    """Ancestral steps of the VP SDE on DDPM's grid (full, or respaced to 50 steps) with the
    exact score reproduce ``ddpm.ancestral_sample`` with the exact ε-model, noise for noise."""
    schedule = linear_schedule(1000)
    if n_steps < 1000:
        schedule = respace(schedule, ddim.timesteps(1000, n_steps))
    sde, t = _vp_matching(schedule)
    x_T = torch.randn(256, 2, generator=_gen(0), dtype=torch.float64)
    want = ddpm.ancestral_sample(
        ddpm.exact_model(GM, schedule), x_T, schedule, variance=variance, generator=_gen(1)
    ).x
    score, g, x = sdes.exact_score(sde, GM), _gen(1), x_T
    for i in range(schedule.T, 0, -1):
        x = sdes.ancestral_step(sde, score, x, t[i], t[i - 1], g, variance=variance)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-10)  # measured: 2e-12


# ------------------------------------------------------------ samplers
def _kl(sde: sdes.SDE, n_steps: int, predictor: str, corrector: str, seed: int) -> float:
    g = _gen(seed)
    x_T = sde.prior_sample((N, 2), g, torch.float64)
    res = sdes.pc_sample(
        sde, sdes.exact_score(sde, GM), x_T, n_steps, predictor, corrector, generator=g
    )
    return metrics.kl_divergence(res.x, GM.log_prob)


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def test_corrector_improves_the_predictor_at_equal_predictor_steps() -> None:
    """Score SDE's P vs PC at the same number of predictor steps (their Table 1 rows
    "P1000" vs "PC1000"), VP, 20 steps: KL 0.11 -> 0.06 nats (measured)."""
    sde = FAMILIES["VP"]
    p = _mean_se([_kl(sde, 20, "reverse_diffusion", "none", s) for s in range(3)])
    pc = _mean_se([_kl(sde, 20, "reverse_diffusion", "langevin", s) for s in range(3)])
    assert p[0] - pc[0] > 3 * math.hypot(p[1], pc[1]), (p, pc)


def test_pc_beats_predictor_alone_at_equal_nfe_when_the_prior_is_off() -> None:
    """At equal NFE (PC with 20 steps vs P with 40, 41 NFE each) the corrector wins where
    the predictor cannot repair what it is given: here a VE SDE with sigma_max = 1, whose
    prior N(0, I) is far from p_1. Measured KL: P 0.058 ± 0.013, PC 0.020 ± 0.008 (5
    seeds). With the exact score and a prior that matches p_1 (the families' defaults),
    spending the NFE on predictor steps is as good or better: see the report."""
    sde = sdes.VESDE(sigma_min=0.01, sigma_max=1.0)
    seeds = range(100, 105)
    p = _mean_se([_kl(sde, 40, "reverse_diffusion", "none", s) for s in seeds])
    pc = _mean_se([_kl(sde, 20, "reverse_diffusion", "langevin", s) for s in seeds])
    assert p[0] - pc[0] > 3 * math.hypot(p[1], pc[1]), (p, pc)


def test_corrector_alone_converges_to_p_t() -> None:
    """Langevin steps with the snr rule at a fixed t = 0.3 (VP) from a wrong start
    (N(0, 4 I)): KL to p_t falls from > 1 nat to the floor of exact samples."""
    sde, t = FAMILIES["VP"], 0.3
    m = sde.marginal(t)
    p_t = GM.noised(float(m.a), float(m.std))
    floor = metrics.kl_floor(lambda n: p_t.sample(n).double(), p_t.log_prob, N, repeats=4)
    g, score = _gen(0), sdes.exact_score(sde, GM)
    x = 2 * torch.randn(N, 2, generator=g, dtype=torch.float64)
    kl = []
    for k in range(150):
        x = sdes.langevin_corrector_step(score, x, t, snr=0.16, generator=g)
        if k + 1 in (10, 150):
            kl.append(metrics.kl_divergence(x, p_t.log_prob))
    assert kl[0] > 1.0  # measured 1.6
    assert kl[1] < floor.mean + 3 * floor.std, (kl, floor)  # measured ~0.00 vs 0.00 ± 0.015


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_reverse_processes_reach_the_data(lam: float) -> None:
    """Euler(–Maruyama) on the reverse family, 200 steps from the VP prior to t = 1e-3:
    λ = 0 (PF-ODE) and λ = 1 (Anderson) both land within the KL floor of p_0."""
    sde = FAMILIES["VP"]
    floor = metrics.kl_floor(lambda n: GM.sample(n).double(), GM.log_prob, N, repeats=4)
    x_T = sde.prior_sample((N, 2), _gen(3), torch.float64)
    grid = torch.linspace(1, 1e-3, 201, dtype=torch.float64)
    res = sdes.reverse_sde_sample(sde, sdes.exact_score(sde, GM), x_T, grid, lam, _gen(4))
    assert res.nfe == 200 and res.x.dtype == torch.float64
    kl = metrics.kl_divergence(res.x, GM.log_prob)
    assert kl < floor.mean + 3 * floor.std, (kl, floor)


def test_pc_sample_bookkeeping() -> None:
    sde = FAMILIES["VE"]
    x_T = sde.prior_sample((8, 2), _gen(0), torch.float64)
    score = sdes.exact_score(sde, GM)
    res = sdes.pc_sample(sde, score, x_T, 5, n_corrector=2, generator=_gen(1), keep=1)
    assert res.nfe == 5 * (1 + 2) + 1 and res.x.dtype == torch.float64
    assert res.trajectory.shape == (7, 8, 2) and res.times[-1] == 0
    for predictor, nfe in [("euler_maruyama", 7), ("ancestral", 7), ("none", 4)]:
        assert sdes.pc_sample(sde, score, x_T, 3, predictor, generator=_gen(1)).nfe == nfe
    assert sdes.pc_sample(sde, score, x_T, 3, corrector="none", denoise=False).nfe == 3


# ------------------------------------------------------------ errors
def test_bad_input_is_named() -> None:
    sde, x = FAMILIES["VP"], torch.zeros(4, 2)
    score = sdes.exact_score(sde, GM)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        sde.marginal(1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        sde.drift(x, torch.full((4,), -0.1))
    with pytest.raises(ValueError, match=r"Unknown predictor 'heun'.*reverse_diffusion"):
        sdes.pc_sample(sde, score, x, 3, predictor="heun")
    with pytest.raises(ValueError, match=r"Unknown corrector 'mala'.*langevin"):
        sdes.pc_sample(sde, score, x, 3, corrector="mala")
    with pytest.raises(ValueError, match="cannot both be 'none'"):
        sdes.pc_sample(sde, score, x, 3, predictor="none", corrector="none")
    with pytest.raises(ValueError, match="Unknown variance"):
        sdes.ancestral_step(sde, score, x, 0.5, 0.4, variance="learned")
    with pytest.raises(ValueError, match="t_next < t"):
        sdes.reverse_diffusion_step(sde, score, x, 0.4, 0.5)
    with pytest.raises(ValueError, match="must descend"):
        sdes.reverse_sde_sample(sde, score, x, torch.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        sdes.VPSDE(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sdes.VESDE(sigma_min=1.0, sigma_max=0.5)
