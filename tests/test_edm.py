"""Tests for :mod:`course_lib.edm`: conversions (round trips in float64), EDM's
preconditioning and loss against closed forms, the time grid, the samplers' NFE and
measured orders with exact denoisers, the churn, and the adapters between chapter 3's
discrete models and EDM denoisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import ddim, ddpm, edm, metrics, sde, solvers, toys
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.schedules import cosine_schedule, linear_schedule, respace

LINEAR = linear_schedule(1000)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=F64)


class Recording:
    """A denoiser that records the noise levels it is called at (wrapping ``inner``, or
    the identity ``D(x; σ) = x``, whose ODE drift is zero)."""

    def __init__(self, inner: edm.Denoiser | None = None) -> None:
        self.inner = inner
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and bool((sigma == sigma[0]).all())
        self.sigmas.append(float(sigma[0]))
        return x if self.inner is None else self.inner(x, sigma)


# ------------------------------------------------------------------ conversions
def test_vp_sigma_round_trips_and_matches_ddpm() -> None:
    ab = LINEAR.alpha_bar[1:]
    sig = edm.vp_sigma(ab)
    assert torch.allclose(edm.alpha_bar_from_sigma(sig), ab, rtol=0, atol=1e-12)
    assert torch.allclose(sig, LINEAR.sigma[1:] / LINEAR.sqrt_alpha_bar[1:], rtol=1e-12)
    s = torch.logspace(-3, 3, 50, dtype=F64)
    assert torch.allclose(edm.vp_sigma(edm.alpha_bar_from_sigma(s)), s, rtol=1e-10)
    assert edm.sigma_range(LINEAR) == pytest.approx((0.0100005, 157.407), rel=1e-5)
    with pytest.raises(ValueError, match="alpha_bar"):
        edm.vp_sigma(torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="σ >= 0"):
        edm.alpha_bar_from_sigma(-1.0)


def test_parameterizations_round_trip_in_float64() -> None:
    x, eps, score = _randn(64, 3, 4), _randn(64, 3, 4, seed=1), _randn(64, 3, 4, seed=2)
    sigma = torch.exp(_randn(64, seed=3) * 2)  # (B,), from 0.01 to 100
    d = edm.denoiser_from_eps(x, eps, sigma)
    assert torch.allclose(edm.eps_from_denoiser(x, d, sigma), eps, rtol=0, atol=1e-10)
    assert torch.allclose(
        edm.denoiser_from_score(x, score, sigma), x + sigma[:, None, None] ** 2 * score
    )
    d2 = edm.denoiser_from_score(x, score, sigma)
    assert torch.allclose(edm.score_from_denoiser(x, d2, sigma), score, rtol=1e-10, atol=1e-10)
    # score = -eps / σ for the same denoiser (Tweedie in both forms)
    s_from_d = edm.score_from_denoiser(x, d, sigma)
    assert torch.allclose(s_from_d, -eps / sigma[:, None, None], rtol=1e-10, atol=1e-10)
    x_t = edm.ddpm_x_from_edm(x, sigma)
    assert torch.allclose(edm.edm_x_from_ddpm(x_t, sigma), x, rtol=0, atol=1e-10)
    assert torch.allclose(edm.ddpm_x_from_edm(x, 2.0), x / math.sqrt(5))  # a float σ
    assert edm.denoiser_from_eps(x, eps, 0.0).equal(x)


def test_conversions_agree_with_ddpm_on_its_grid() -> None:
    """At DDPM step ``t``: ``x̂ = x_t / √ᾱ_t`` and ``σ_t = √((1 - ᾱ_t)/ᾱ_t)`` turn
    DDPM's ``x0 = (x_t - √(1 - ᾱ) ε) / √ᾱ`` (eq. 4) into ``D = x̂ - σ ε``."""
    t = torch.tensor([1, 10, 200, 999, 1000] * 4)
    x_t, eps = _randn(20, 2), _randn(20, 2, seed=1)
    sigma = edm.vp_sigma(LINEAR.alpha_bar[t])
    x = edm.edm_x_from_ddpm(x_t, sigma)
    assert torch.allclose(x, x_t / LINEAR.sqrt_alpha_bar[t][:, None], rtol=1e-12)
    want = ddpm.x0_from_eps(x_t, eps, t, LINEAR)
    assert torch.allclose(edm.denoiser_from_eps(x, eps, sigma), want, rtol=1e-10, atol=1e-10)
    score_t = ddpm.score_from_eps(eps, t, LINEAR)  # ∇_{x_t}; ∇_x̂ = √ᾱ ∇_{x_t}
    score_x = edm.score_from_denoiser(x, edm.denoiser_from_eps(x, eps, sigma), sigma)
    assert torch.allclose(score_x, LINEAR.sqrt_alpha_bar[t][:, None] * score_t, rtol=1e-9)


def test_conversion_errors() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="σ > 0"):
        edm.eps_from_denoiser(x, x, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="σ > 0"):
        edm.score_from_denoiser(x, x, -1.0)
    with pytest.raises(ValueError, match="shape"):
        edm.denoiser_from_eps(x, x, torch.ones(2))


# -------------------------------------------------------------- preconditioning
def test_preconditioning_closed_form() -> None:
    """Table 1 and App. B.6: ``c_in² (σ² + σ_data²) = 1``; the effective target's variance
    ``(1 - c_skip)² σ_data² + c_skip² σ²`` equals ``c_out²`` and is minimal in ``c_skip``;
    ``λ = 1 / c_out²``; ``c_noise = ln(σ) / 4``."""
    assert edm.Preconditioning().sigma_data == 0.5
    for sd in (0.5, 1.3):
        p = edm.Preconditioning(sd)
        s = torch.logspace(-3, 2, 40, dtype=F64)
        cs, co, ci = p.c_skip(s), p.c_out(s), p.c_in(s)
        assert torch.allclose(ci**2 * (s**2 + sd**2), torch.ones_like(s), rtol=1e-12)
        target_var = (1 - cs) ** 2 * sd**2 + cs**2 * s**2
        assert torch.allclose(target_var, co**2, rtol=1e-12)
        # d/dc [(1 - c)² σ_d² + c² σ²] = 0 at c_skip
        assert torch.allclose(-(1 - cs) * sd**2 + cs * s**2, torch.zeros_like(s), atol=1e-12)
        assert torch.allclose(p.loss_weight(s) * co**2, torch.ones_like(s), rtol=1e-12)
        assert torch.allclose(p.c_noise(s), torch.log(s) / 4, rtol=1e-12)
    assert float(edm.Preconditioning().c_skip(0.0)) == 1.0  # σ -> 0: D = x̂
    with pytest.raises(ValueError, match="sigma_data"):
        edm.Preconditioning(0.0)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 5.0, 80.0])
def test_preconditioning_gives_unit_variance_monte_carlo(sigma: float) -> None:
    """For (non-Gaussian) data of variance ``σ_data²``, the network's input ``c_in x̂`` and
    its effective target ``(x0 - c_skip x̂) / c_out`` both have unit variance (within
    four standard errors of a sample variance)."""
    p, n = edm.Preconditioning(), 200_000
    g = _gen(int(sigma * 100))
    x0 = (torch.rand(n, generator=g, dtype=F64) * 2 - 1) * p.sigma_data * math.sqrt(3)
    x = x0 + sigma * torch.randn(n, generator=g, dtype=F64)
    for v in (p.c_in(sigma) * x, (x0 - p.c_skip(sigma) * x) / p.c_out(sigma)):
        sq = (v - v.mean()) ** 2
        se = float(sq.std() / math.sqrt(n))
        assert abs(float(sq.mean()) - 1) < 4 * se


def test_edm_denoiser_applies_eq7() -> None:
    seen = {}

    class Net(nn.Module):
        def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            seen["x"], seen["c"] = x, c_noise
            return torch.tanh(x) + c_noise[:, None]

    den = edm.EDMDenoiser(Net(), sigma_data=0.7)
    x, sigma = _randn(8, 2), torch.linspace(0.1, 10, 8, dtype=F64)
    out = den(x, sigma)
    p, s = edm.Preconditioning(0.7), sigma[:, None]
    assert torch.allclose(seen["x"], p.c_in(s) * x) and torch.allclose(
        seen["c"], torch.log(sigma) / 4
    )
    want = p.c_skip(s) * x + p.c_out(s) * (torch.tanh(p.c_in(s) * x) + p.c_noise(s))
    assert torch.allclose(out, want, rtol=1e-12) and out.dtype == F64
    assert den(x, 2.0).shape == x.shape  # a float σ
    with pytest.raises(ValueError, match="σ > 0"):
        den(x, 0.0)


# ----------------------------------------------------------------------- loss
def test_edm_loss_of_exact_denoiser_is_one_for_gaussian_data() -> None:
    """For ``x0 ~ N(0, σ_data² I)`` the posterior variance per element is
    ``σ_data² σ² / (σ² + σ_data²) = 1 / λ(σ)``, so ``λ ||D* - x0||² / D ~ χ²_D / D``: mean 1
    at *every* σ, standard error ``√(2 / (D B))``. Fixed σ's and EDM's log-normal draws."""
    gm = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 0.5)
    den = edm.exact_denoiser(gm)
    b = 20_000
    x0 = gm.sample(b, _gen(0)).double()
    se = math.sqrt(2 / (2 * b))
    for i, sigma in enumerate([0.002, 0.3, 3.0, 80.0, None]):
        loss = edm.edm_loss(den, x0, generator=_gen(i), sigma=sigma)
        assert abs(float(loss) - 1) < 4 * se
    # a worse denoiser scores worse: the plain skip D = x̂ (λ σ² = 1 + σ²/σ_data² > 1)
    assert float(edm.edm_loss(lambda x, s: x, x0, generator=_gen(9), sigma=0.3)) > 1.2


def test_edm_loss_of_exact_denoiser_is_the_bayes_risk_of_a_mixture() -> None:
    """For the gaussians8 twin, the loss of ``D*`` at fixed σ equals an independent Monte
    Carlo of the Bayes risk ``λ(σ) E tr Cov(x0 | x̂) / D`` (law of total variance with each
    component's Gaussian posterior), within four standard errors; shifting ``D*`` raises it."""
    gm = toys.twin("gaussians8")
    den, p = edm.exact_denoiser(gm), edm.Preconditioning()
    b = 4000
    x0 = gm.sample(b, _gen(1)).double()
    for sigma in (0.05, 0.5, 2.0):
        risk = _bayes_risk(gm, x0 + sigma * _randn(b, 2, seed=7), sigma) * float(
            p.loss_weight(sigma)
        )
        vals = torch.stack(
            [edm.edm_loss(den, x0[i::8], generator=_gen(i), sigma=sigma) for i in range(8)]
        )
        se = math.hypot(float(vals.std()) / math.sqrt(8), float(risk.std()) / math.sqrt(b))
        assert abs(float(vals.mean()) - float(risk.mean())) < 4 * se
        base = edm.edm_loss(den, x0, generator=_gen(0), sigma=sigma)  # same draws for both
        shifted = edm.edm_loss(lambda x, s: den(x, s) + 0.05, x0, generator=_gen(0), sigma=sigma)
        assert float(shifted) > float(base)


def _bayes_risk(gm: GaussianMixture, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``tr Cov(x0 | x̂) / D`` per sample, from ``sum_k r_k (tr P_k + |m_k|²) - |D*|²`` with
    ``m_k = mu_k + C_k S_k^-1 (x̂ - mu_k)``, ``P_k = C_k - C_k S_k^-1 C_k``, ``S_k = C_k + σ² I``."""
    eye = torch.eye(gm.dim, dtype=F64)
    s_inv = torch.linalg.inv(gm.covariances + sigma**2 * eye)  # (K, D, D)
    gain = gm.covariances @ s_inv
    m = gm.means[None] + torch.einsum("kij,bkj->bki", gain, x[:, None] - gm.means[None])
    tr_p = torch.diagonal(gm.covariances - gain @ gm.covariances, dim1=-2, dim2=-1).sum(-1)
    r = gm.noised(1.0, sigma).responsibilities(x)  # (B, K)
    second = (r * (tr_p[None] + (m**2).sum(-1))).sum(1)
    mean = (r[..., None] * m).sum(1)
    return (second - (mean**2).sum(1)) / gm.dim


def test_edm_loss_draws_log_normal_sigma_and_is_differentiable() -> None:
    x0 = torch.zeros(20_000, 1, dtype=F64)
    sigmas = []

    def grab(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigmas.append(sigma)
        return x

    edm.edm_loss(grab, x0, generator=_gen(0))
    log_s = torch.log(sigmas[0])
    se = 1.2 / math.sqrt(len(log_s))
    assert abs(float(log_s.mean()) + 1.2) < 4 * se
    assert abs(float(log_s.std()) - 1.2) < 4 * 1.2 / math.sqrt(2 * len(log_s))
    net = nn.Linear(2, 2)
    den = edm.EDMDenoiser(lambda x, c: net(x))  # type: ignore[arg-type]
    edm.edm_loss(den, torch.randn(16, 2), generator=_gen(1)).backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


# ------------------------------------------------------------------ time grid
def test_time_grid() -> None:
    s = edm.time_grid(18)
    assert s.shape == (19,) and s.dtype == F64 and s[-1] == 0
    assert float(s[0]) == pytest.approx(80.0, rel=1e-12)
    assert float(s[-2]) == pytest.approx(0.002, rel=1e-12)
    assert (s[1:] < s[:-1]).all()
    # σ_i^(1/ρ) is linear in i (eq. 5)
    roots = s[:-1] ** (1 / 7)
    assert torch.allclose(roots.diff(), roots.diff()[0].expand(17), rtol=1e-10)
    lin = edm.time_grid(5, 1.0, 9.0, rho=1.0)
    assert torch.allclose(lin, torch.tensor([9.0, 7.0, 5.0, 3.0, 1.0, 0.0], dtype=F64))
    geo = edm.time_grid(5, 1.0, 16.0, rho=1e7)[:-1]  # ρ -> inf: geometric
    assert torch.allclose(geo, torch.tensor([16.0, 8.0, 4.0, 2.0, 1.0], dtype=F64), rtol=1e-5)
    assert edm.time_grid(1).tolist() == [80.0, 0.0]
    with pytest.raises(ValueError, match="sigma_min"):
        edm.time_grid(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="rho"):
        edm.time_grid(10, rho=0.0)
    with pytest.raises(ValueError, match="at least one"):
        edm.time_grid(0)


# --------------------------------------------------------------------- samplers
def test_heun_nfe_and_the_levels_it_evaluates() -> None:
    """Algorithm 1: Heun evaluates ``σ_i`` and ``σ_{i+1}`` per step, except the last step
    into ``σ_N = 0`` (Euler): ``2 N - 1`` NFE; Euler ``N``; without the trailing 0, ``2 N``."""
    sig = edm.time_grid(6)
    x = _randn(4, 2)
    rec = Recording()
    res = edm.heun_sample(rec, x, sig)
    assert res.nfe == 11 == len(rec.sigmas)
    want = [sig[0]] + [v for v in sig[1:-1] for _ in range(2)]
    assert rec.sigmas == pytest.approx([float(v) for v in want], rel=1e-12)
    rec = Recording()
    assert edm.euler_sample(rec, x, sig).nfe == 6 and rec.sigmas == sig[:-1].tolist()
    assert edm.heun_sample(Recording(), x, sig[:-1]).nfe == 10


def test_deterministic_heun_is_solvers_heun_with_final_euler() -> None:
    gm = toys.twin("gaussians8")
    den, sig = edm.exact_denoiser(gm), edm.time_grid(10)
    x = 80 * _randn(64, 2)
    res = edm.heun_sample(den, x, sig, keep=1)
    ref = solvers.solve_ode(edm.ode_drift(den), x, sig, "heun", final_euler=True)
    assert torch.equal(res.x, ref.x) and res.x.dtype == F64
    assert res.trajectory.shape == (11, 64, 2) and torch.equal(res.trajectory[-1], res.x)
    assert torch.allclose(res.times, sig.float())
    eu = edm.euler_sample(den, x, sig)
    assert torch.equal(eu.x, solvers.solve_ode(edm.ode_drift(den), x, sig, "euler").x)
    # Euler into σ = 0 returns the denoiser's output at σ_{N-1}
    last = edm.euler_sample(den, x, sig[:-1]).x
    assert torch.allclose(eu.x, den(last, torch.full((64,), float(sig[-2]), dtype=F64)))


def _fit_slope(steps: list[int], errors: list[float]) -> float:
    """The slope ``p`` of ``log error = c - p log N`` (least squares)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


STEPS = [16, 32, 64, 128]


def test_solver_orders_against_the_closed_form_gaussian_flow() -> None:
    """For ``x0 ~ N(mu, C)`` the ODE ``dx̂/dσ = (x̂ - D*(x̂; σ)) / σ`` is solved exactly by
    ``x̂(σ) - mu = U diag(√((c_i + σ²)/(c_i + σ_0²))) Uᵀ (x̂(σ_0) - mu)``. On EDM's
    ``ρ = 7`` grid from 80 to 0.002, the global error's fitted slope against N is ≈ 1
    (Euler; measured 0.96) and ≈ 2 (Heun; measured 2.06)."""
    cov = torch.tensor([[0.3, 0.1], [0.1, 0.05]], dtype=F64)
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    den = edm.exact_denoiser(GaussianMixture(torch.ones(1), mu[None], cov[None]))
    x = 80 * _randn(128, 2)
    c, u = torch.linalg.eigh(cov)
    exact = mu + ((x - mu) @ u * torch.sqrt((c + 0.002**2) / (c + 80.0**2))) @ u.T
    for method, order in (("euler", 1), ("heun", 2)):
        errors = []
        for n in STEPS:
            xs = solvers.solve_ode(edm.ode_drift(den), x, edm.time_grid(n + 1)[:-1], method).x
            errors.append(float((xs - exact).pow(2).sum(1).mean().sqrt()))
        assert abs(_fit_slope(STEPS, errors) - order) < 0.15 * order, (method, errors)


def test_solver_orders_with_the_exact_denoiser_of_a_2d_mixture() -> None:
    """The same with the gaussians8 twin (eight components) against a fine RK4 reference
    (256 steps; its own error, measured against 1024 steps, is 1.2e-6, 0.3% of Heun's
    smallest): fitted slopes 1.03 (Euler) and 2.08 (Heun) over N = 16 .. 128. Heun beats
    Euler at equal NFE."""
    den = edm.exact_denoiser(toys.twin("gaussians8"))
    f = edm.ode_drift(den)
    x = 80 * _randn(64, 2, seed=1)
    ref = solvers.solve_ode(f, x, edm.time_grid(257)[:-1], "rk4").x
    errs: dict[str, list[float]] = {}
    for method, order in (("euler", 1), ("heun", 2)):
        errs[method] = []
        for n in STEPS:
            xs = solvers.solve_ode(f, x, edm.time_grid(n + 1)[:-1], method).x
            errs[method].append(float((xs - ref).pow(2).sum(1).mean().sqrt()))
        assert abs(_fit_slope(STEPS, errs[method]) - order) < 0.15 * order, errs
    assert errs["heun"][1] < errs["euler"][2]  # Heun at N = 32 (64 NFE) vs Euler at 64


def test_churn_levels_and_noise() -> None:
    """Algorithm 2: ``γ_i = min(S_churn / N, √2 - 1)`` inside ``[S_min, S_max]``, the first
    evaluation at ``σ̂_i = σ_i (1 + γ_i)``; with ``D(x̂; σ) = x̂`` (zero drift) the sample
    moves only by the added noise, of variance ``S_noise² Σ (σ̂_i² - σ_i²)``."""
    sig = edm.time_grid(8, sigma_min=0.01, sigma_max=10.0)
    n, s_min, s_max = 8, 0.05, 2.0
    for s_churn in (2.0, 100.0):
        rec = Recording()
        res = edm.heun_sample(
            rec, torch.zeros(20_000, 2, dtype=F64), sig, s_churn, s_min, s_max, 1.007, _gen(0)
        )
        gamma = min(s_churn / n, math.sqrt(2) - 1)
        hats = [
            float(s) * (1 + gamma) if s_min <= float(s) <= s_max else float(s) for s in sig[:-1]
        ]
        assert rec.sigmas[0::2] == pytest.approx(hats, rel=1e-12)
        var = 1.007**2 * sum(h**2 - float(s) ** 2 for h, s in zip(hats, sig[:-1], strict=True))
        emp = res.x.pow(2).mean()
        assert abs(float(emp) / var - 1) < 4 * math.sqrt(2 / res.x.numel())
    with pytest.raises(ValueError, match="S_churn"):
        edm.heun_sample(Recording(), torch.zeros(2, 2), sig, S_churn=-1.0)


def test_samplers_with_exact_denoiser_reach_the_moons_twin() -> None:
    """Issue 16's yardstick (KL with the k-NN entropy, n = 4,000): deterministic Heun at
    79 NFE and the churn sampler (S_churn = 40, 79 NFE) both score within three floor
    spreads of exact samples (measured: floor 0.023 +- 0.016, Heun 0.030, churn 0.027),
    while Euler at 12 NFE does not (0.44)."""
    gm = toys.twin("moons")
    den, sig = edm.exact_denoiser(gm), edm.time_grid(40)
    g = _gen(3)
    fl = metrics.kl_floor(lambda n: gm.sample(n, g), gm.log_prob, 4000, repeats=4)
    x = 80 * torch.randn(4000, 2, generator=g, dtype=F64)
    heun = edm.heun_sample(den, x, sig)
    churn = edm.heun_sample(den, x, sig, S_churn=40.0, generator=g)
    euler = edm.euler_sample(den, x, edm.time_grid(12))
    kl = {
        k: metrics.kl_divergence(r.x, gm.log_prob)
        for k, r in [("heun", heun), ("churn", churn), ("euler", euler)]
    }
    assert kl["heun"] < fl.mean + 3 * fl.std and kl["churn"] < fl.mean + 3 * fl.std, (kl, fl)
    assert kl["euler"] > fl.mean + 5 * fl.std, (kl, fl)


def test_sampler_grid_errors() -> None:
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="decrease"):
        edm.heun_sample(Recording(), x, [0.0, 1.0])
    with pytest.raises(ValueError, match="only the last"):
        edm.heun_sample(Recording(), x, [1.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="σ > 0"):
        edm.ode_drift(Recording())(x, torch.zeros(2))


# --------------------------------------------------------------------- adapters
def test_exact_denoiser_is_tweedie() -> None:
    gm = toys.twin("moons")
    x, sigma = _randn(50, 2), torch.full((50,), 0.3, dtype=F64)
    d = edm.exact_denoiser(gm)(x, sigma)
    assert torch.allclose(d, gm.optimal_denoiser(x, 1.0, 0.3), rtol=1e-12)
    score = edm.score_from_denoiser(x, d, sigma)
    assert torch.allclose(score, gm.noised_score(x, 1.0, 0.3), rtol=1e-9, atol=1e-9)
    mixed = torch.linspace(0.1, 3.0, 50, dtype=F64)  # per-sample levels
    d_mixed = edm.exact_denoiser(gm)(x, mixed)
    assert torch.allclose(d_mixed[7], gm.optimal_denoiser(x[7:8], 1.0, float(mixed[7]))[0])


SCHEDULES = {
    "linear": LINEAR,
    "cosine": cosine_schedule(1000),
    "respaced": respace(LINEAR, ddim.timesteps(1000, 50)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_denoiser_from_ddpm_is_exact_on_the_grid(name: str, param: str) -> None:
    """Chapter 3's exact model, through the adapter, is the exact denoiser at every noise
    level of its schedule (measured difference 0 to 1e-15)."""
    sched = SCHEDULES[name]
    gm = toys.twin("moons")
    adapted = edm.denoiser_from_ddpm(ddpm.exact_model(gm, sched, param), sched, param)
    exact = edm.exact_denoiser(gm)
    sig = edm.vp_sigma(sched.alpha_bar[1:])
    x0 = gm.sample(32, _gen(0)).double()
    for j in [*range(0, sched.T, max(1, sched.T // 12)), sched.T - 1]:
        s = torch.full((32,), float(sig[j]), dtype=F64)
        x = x0 + s[:, None] * _randn(32, 2, seed=j)
        assert torch.allclose(adapted(x, s), exact(x, s), rtol=0, atol=1e-10), j


def test_denoiser_from_ddpm_between_grid_points() -> None:
    """Between the steps, ``ddpm.exact_model`` snaps to the nearest training step (a
    trained network interpolates smoothly instead), so the adapter is off by the gap:
    measured on the moons twin at 60 levels in [0.03, 80], max error 0.0037 (RMS 4e-4)
    for T = 1000, 0.0146 for T = 250 (same continuous VP schedule): first order in the
    step gap, a factor 4 for 4 times the steps."""
    gm = toys.twin("moons")
    exact = edm.exact_denoiser(gm)
    levels = torch.logspace(math.log10(0.03), math.log10(80), 60, dtype=F64)
    x0 = gm.sample(64, _gen(0)).double()
    xs = [x0 + s * _randn(64, 2, seed=i) for i, s in enumerate(levels)]

    def max_error(sched):
        d = edm.denoiser_from_ddpm(ddpm.exact_model(gm, sched), sched)
        return max(
            float((d(x, s.expand(64)) - exact(x, s.expand(64))).norm(dim=1).max())
            for x, s in zip(xs, levels, strict=True)
        )

    fine, coarse = max_error(LINEAR), max_error(linear_schedule(250, 4e-4, 0.08))
    assert fine < 0.005
    assert 3 < coarse / fine < 5


def test_ddpm_model_from_denoiser_inverts_the_adapter() -> None:
    gm = toys.twin("gaussians8")
    exact = edm.exact_denoiser(gm)
    for sched in SCHEDULES.values():
        model = edm.ddpm_model_from_denoiser(exact, sched)
        # at every step it is chapter 3's exact ε-model
        x = _randn(16, 2)
        for t in (1, sched.T // 3, sched.T):
            want = ddpm.predict(ddpm.exact_model(gm, sched), x, t, sched).eps
            got = ddpm.predict(model, x, t, sched).eps
            assert torch.allclose(got, want, rtol=0, atol=1e-10)
        # and back: denoiser -> ε-model -> denoiser is the identity at any σ in range
        back = edm.denoiser_from_ddpm(model, sched)
        lo, hi = edm.sigma_range(sched)
        s = torch.exp(torch.linspace(math.log(lo), math.log(hi), 16, dtype=F64))
        assert torch.allclose(back(x, s), exact(x, s), rtol=0, atol=1e-10)


def test_samplers_agree_across_the_adapters() -> None:
    """DDPM's ancestral sampler with the denoiser as an ε-model equals it with chapter 3's
    exact model (same noise), and EDM's Heun sampler with chapter 3's exact model equals
    it with the exact denoiser on a grid of the schedule's levels: to 1e-10 in float64."""
    gm = toys.twin("gaussians8")
    sched = SCHEDULES["respaced"]
    x_T = _randn(128, 2)
    a = ddpm.ancestral_sample(
        edm.ddpm_model_from_denoiser(edm.exact_denoiser(gm), sched), x_T, sched, generator=_gen(1)
    )
    b = ddpm.ancestral_sample(ddpm.exact_model(gm, sched), x_T, sched, generator=_gen(1))
    assert torch.allclose(a.x, b.x, rtol=0, atol=1e-10)
    sig = edm.vp_sigma(sched.alpha_bar[1:]).flip(0)
    grid = torch.cat([sig[sig < 80], sig.new_zeros(1)])
    x = grid[0] * x_T
    via_ddpm = edm.heun_sample(edm.denoiser_from_ddpm(ddpm.exact_model(gm, sched), sched), x, grid)
    direct = edm.heun_sample(edm.exact_denoiser(gm), x, grid)
    assert torch.allclose(via_ddpm.x, direct.x, rtol=0, atol=1e-10)
    assert via_ddpm.nfe == 2 * (len(grid) - 1) - 1


def test_euler_on_a_ddpm_schedule_is_ddim() -> None:
    """DDIM (eta = 0) is Euler's method for ``dx̂/dσ`` in ``x̂ = x_t / √ᾱ_t`` on the levels
    ``σ_t = vp_sigma(ᾱ_t)`` (DDIM eq. 14): the two samplers agree to 1e-10 in float64."""
    gm = toys.twin("gaussians8")
    sched = SCHEDULES["respaced"]
    x_T = _randn(128, 2)
    want = ddim.ddim_sample(ddpm.exact_model(gm, sched), x_T, sched, steps=None)
    grid = torch.cat([edm.vp_sigma(sched.alpha_bar[1:]).flip(0), torch.zeros(1, dtype=F64)])
    got = edm.euler_sample(edm.exact_denoiser(gm), edm.edm_x_from_ddpm(x_T, grid[0]), grid)
    assert got.nfe == want.nfe == sched.T
    assert torch.allclose(got.x, want.x, rtol=0, atol=1e-10)


def test_adapter_range_errors() -> None:
    d = edm.denoiser_from_ddpm(ddpm.exact_model(toys.twin("moons"), LINEAR), LINEAR)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="time_grid"):
        d(x, torch.full((2,), 0.002, dtype=F64))  # EDM's σ_min is below DDPM's 0.01
    with pytest.raises(ValueError, match="t >= 1"):
        edm.ddpm_model_from_denoiser(edm.exact_denoiser(toys.twin("moons")), LINEAR)(
            x, torch.zeros(2, dtype=F64)
        )
    with pytest.raises(ValueError, match="parameterization"):
        edm.denoiser_from_ddpm(lambda x, t: x, LINEAR, "score")


@pytest.mark.parametrize("family", [sde.VPSDE(), sde.SubVPSDE(), sde.VESDE()])
def test_score_fn_from_denoiser_matches_the_sde_exact_score(family: sde.SDE) -> None:
    """``∇log p_t(x) = (a D*(x / a; σ) - x) / (a σ)²`` with ``a = s(t)``, ``σ = std / a``."""
    gm = toys.twin("gaussians8")
    score = edm.score_fn_from_denoiser(edm.exact_denoiser(gm), family)
    want = sde.exact_score(family, gm)
    x = 2 * _randn(40, 2)
    for t in (torch.full((40,), 0.3, dtype=F64), torch.linspace(0.01, 1.0, 40, dtype=F64)):
        assert torch.allclose(score(x, t), want(x, t), rtol=1e-9, atol=1e-9)
