"""Tests for :mod:`course_lib.ddpm` against exact answers.

Ground truth comes from Bayes' rule by Monte Carlo (the posterior), from the Gaussian
mixture's closed forms (the optimal predictor, log-likelihoods) and from two independent
samples of the target (the MMD floor). Tolerances are a few Monte Carlo standard errors.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import scipy.stats
import torch

from course_lib import ddpm, metrics, toys
from course_lib.ddim import timesteps
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.nets import MLP
from course_lib.schedules import DiscreteSchedule, cosine_schedule, linear_schedule, respace

LINEAR = linear_schedule(1000)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------- forward process
def test_conversions_round_trip() -> None:
    g = _gen(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 500, 999, 1000])
    xt = ddpm.q_sample(x0, t, LINEAR, eps)
    a = LINEAR.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, a * x0 + (1 - a**2).sqrt() * eps)
    torch.testing.assert_close(ddpm.x0_from_eps(xt, eps, t, LINEAR), x0)
    torch.testing.assert_close(ddpm.eps_from_x0(xt, x0, t, LINEAR), eps)
    v = ddpm.v_from(x0, eps, t, LINEAR)
    torch.testing.assert_close(v, a * eps - (1 - a**2).sqrt() * x0)
    torch.testing.assert_close(ddpm.x0_from_v(xt, v, t, LINEAR), x0)
    torch.testing.assert_close(ddpm.eps_from_v(xt, v, t, LINEAR), eps)
    score = ddpm.score_from_eps(eps, t, LINEAR)
    torch.testing.assert_close(ddpm.eps_from_score(score, t, LINEAR), eps)
    # a scalar t broadcasts over the batch
    torch.testing.assert_close(
        ddpm.q_sample(x0, 7, LINEAR, eps), ddpm.q_sample(x0, torch.full((6,), 7), LINEAR, eps)
    )


def test_score_of_standard_normal_data() -> None:
    # x0 ~ N(0, I) stays N(0, I) under the VP process: E[eps | x_t] = s x_t, score = -x_t
    x = torch.randn(5, 2, generator=_gen(1), dtype=torch.float64)
    t = torch.tensor([3, 30, 300, 600, 900])
    eps_star = LINEAR.sigma[t][:, None] * x
    torch.testing.assert_close(ddpm.score_from_eps(eps_star, t, LINEAR), -x)
    gm = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 1.0)
    model = ddpm.exact_model(gm, LINEAR)
    torch.testing.assert_close(ddpm.call_model(model, x, t, LINEAR), eps_star)


def test_posterior_mean_eq11() -> None:
    # with eps-prediction, mu_tilde(x0_hat(eps), x_t) is DDPM eq. 11
    g = _gen(2)
    xt, eps = torch.randn(4, 2, generator=g).double(), torch.randn(4, 2, generator=g).double()
    t = torch.tensor([1, 2, 400, 1000])
    mean = ddpm.q_posterior(ddpm.x0_from_eps(xt, eps, t, LINEAR), xt, t, LINEAR).mean
    beta, alpha = LINEAR.beta[t][:, None], LINEAR.alpha[t][:, None]
    eq11 = (xt - beta / LINEAR.sigma[t][:, None] * eps) / alpha.sqrt()
    torch.testing.assert_close(mean, eq11)


@pytest.mark.parametrize(
    ("schedule", "t"),
    [
        (LINEAR, 2),
        (LINEAR, 50),
        (LINEAR, 700),
        (cosine_schedule(1000), 300),
        (linear_schedule(5), 3),
    ],
)
def test_posterior_matches_bayes_by_monte_carlo(schedule: DiscreteSchedule, t: int) -> None:
    """For a fixed x0, (x_{t-1}, x_t) is jointly Gaussian: regressing x_{t-1} on x_t gives
    the posterior mean's slope and intercept, and the residual variance beta_tilde."""
    n, x0 = 400_000, 0.7
    g = _gen(t)
    ab_prev, alpha = float(schedule.alpha_bar[t - 1]), float(schedule.alpha[t])
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    x_t = math.sqrt(alpha) * x_prev + math.sqrt(1 - alpha) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    xc, yc = x_t - x_t.mean(), x_prev - x_prev.mean()
    slope = float((xc * yc).sum() / (xc**2).sum())
    intercept = float(x_prev.mean() - slope * x_t.mean())
    resid_var = float(((yc - slope * xc) ** 2).sum() / (n - 2))
    se_slope = math.sqrt(resid_var / float((xc**2).sum()))
    se_intercept = math.sqrt(resid_var * (1 / n + float(x_t.mean()) ** 2 / float((xc**2).sum())))
    se_var = resid_var * math.sqrt(2 / n)

    post = ddpm.q_posterior(
        torch.full((2, 1), x0, dtype=torch.float64),
        torch.tensor([[0.0], [1.0]]).double(),
        t,
        schedule,
    )
    mean0, mean1 = float(post.mean[0, 0]), float(post.mean[1, 0])
    assert abs(mean0 - intercept) < 5 * se_intercept
    assert abs((mean1 - mean0) - slope) < 5 * se_slope
    assert abs(float(post.variance.flatten()[0]) - resid_var) < 5 * se_var
    torch.testing.assert_close(post.log_variance, post.variance.log())


# ----------------------------------------------------------- the optimal model
def test_exact_model_agrees_with_the_score() -> None:
    # two code paths of the mixture: eps* from the denoiser equals -s * (noised score)
    gm = toys.twin("moons")
    x = gm.sample(64, _gen(3)).double() * 1.3
    t = torch.randint(1, 1001, (64,), generator=_gen(4))
    a, s = LINEAR.sqrt_alpha_bar[t], LINEAR.sigma[t]
    eps = ddpm.call_model(ddpm.exact_model(gm, LINEAR), x, t, LINEAR)
    torch.testing.assert_close(eps, -s[:, None] * gm.noised_score(x, a, s))
    # respaced schedules are served by the same model at the training-grid times
    sub = respace(LINEAR, timesteps(1000, 10))
    x0_full = ddpm.call_model(ddpm.exact_model(gm, LINEAR, "x0"), x, 300, LINEAR)
    x0_sub = ddpm.call_model(ddpm.exact_model(gm, sub, "x0"), x, 3, sub)
    torch.testing.assert_close(x0_sub, x0_full)
    with pytest.raises(ValueError, match="not a step"):
        ddpm.exact_model(gm, sub)(x, torch.full((64,), 0.25))


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_exact_model_attains_the_loss_minimum(parameterization: str) -> None:
    gm, n = toys.twin("gaussians8"), 20_000
    x0 = gm.sample(n, _gen(5)).double()
    exact = ddpm.exact_model(gm, LINEAR, parameterization)
    best = float(ddpm.loss(exact, x0, LINEAR, parameterization, generator=_gen(6)))
    for wrong in (lambda x, tau: exact(x, tau) + 0.05, lambda x, tau: 1.05 * exact(x, tau)):
        # the same generator seed: the same t and eps, so only the predictions differ
        assert best < float(ddpm.loss(wrong, x0, LINEAR, parameterization, generator=_gen(6)))

    # the minimum is E||target - E[target | x_t]||^2 = E||target||^2 - E||E[target | x_t]||^2
    # (orthogonality of the regression residual); per sample, on fresh draws
    g = _gen(7)
    t = torch.randint(1, 1001, (n,), generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    xt = ddpm.q_sample(x0, t, LINEAR, eps)
    pred = ddpm.call_model(exact, xt, t, LINEAR)
    target = {"eps": eps, "x0": x0, "v": ddpm.v_from(x0, eps, t, LINEAR)}[parameterization]
    err = ((target - pred) ** 2).mean(1)
    minimum = (target**2 - pred**2).mean(1)
    diff = err - minimum
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    se = math.sqrt(float(err.var() + minimum.var()) / n)
    assert abs(best - float(minimum.mean())) < 4 * se


def test_loss_trains_an_mlp() -> None:
    torch.manual_seed(0)
    model = MLP(dim=2, hidden=32, depth=1)
    x0 = toys.sample("moons", 64, _gen(8))
    for p in ("eps", "x0", "v"):
        value = ddpm.loss(model, x0, LINEAR, p, generator=_gen(9))
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
    assert all(q.grad is not None for q in model.parameters())


# -------------------------------------------------------------------- sampling
# How far a sampler may be from the floor. For two exact samples of the moons twin
# (n = 1000, 40 repeats) the ratio distance / floor had, at the 97.5% quantile and the
# maximum: MMD with the median-heuristic bandwidth 3.1 and 4.3 (a heavy tail: the smooth
# kernel leaves few degrees of freedom, so it is reported, not tested); sliced W2 1.7 and
# 2.0; MMD at the mode-scale bandwidth 0.15, max 1.7 over 25 repeats. The limits sit above
# those, and well below what a wrong variance or mean gives.
FINE_BANDWIDTH = 0.15
LIMITS = {"sliced_w2": 2.5, "fine_mmd": 3.0}


@functools.cache
def _floors(name: str, n: int) -> dict[str, float]:
    gm, g = toys.twin(name), _gen(n)
    floor = metrics.floor(lambda k: gm.sample(k, g), n, repeats=4)
    fine = [metrics.mmd(gm.sample(n, g), gm.sample(n, g), FINE_BANDWIDTH) for _ in range(4)]
    return {"mmd": floor["mmd"], "sliced_w2": floor["sliced_w2"], "fine_mmd": sum(fine) / 4}


def distance_ratios(name: str, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Distances between ``x`` and exact samples of the twin of ``name`` (the mean over two
    references), each divided by its floor, the mean for an exact ``x`` of the same size:
    ``metrics.floor``'s MMD (median-heuristic bandwidth) and sliced W2, and the MMD at
    bandwidth 0.15, the scale of the modes, which also sees the width of each mode."""
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
    ("name", "grid", "variance", "n"),
    [
        ("gaussians8", None, "beta_tilde", 1000),
        ("gaussians8", 100, "beta", 1000),
        ("moons", 100, "beta", 1000),
    ],
)
def test_ancestral_sampling_matches_target(
    name: str, grid: int | None, variance: str, n: int
) -> None:
    gm = toys.twin(name)
    schedule = LINEAR if grid is None else respace(LINEAR, timesteps(1000, grid))
    x_T = torch.randn(n, 2, generator=_gen(10))
    result = ddpm.ancestral_sample(
        ddpm.exact_model(gm, schedule), x_T, schedule, variance, generator=_gen(11), keep=50
    )
    assert result.nfe == schedule.T and result.x.shape == (n, 2)
    assert result.trajectory is not None and result.times is not None
    assert result.times[0] == 1000 and result.times[-1] == 0
    torch.testing.assert_close(result.trajectory[-1], result.x)
    ratios = distance_ratios(name, result.x, 12)
    print(f"ancestral {name} grid={grid or 1000} {variance}: distance / floor {ratios}")
    # (with 100 steps, beta_tilde visibly narrows the modes: fine ratio ~2.5, not tested)
    assert all(ratios[k] < limit for k, limit in LIMITS.items())


def test_ancestral_parameterizations_agree() -> None:
    # the exact eps-, x0- and v-models describe one sampler: same noise, same samples
    gm = toys.twin("gaussians8")
    schedule = respace(LINEAR, timesteps(1000, 20))
    x_T = torch.randn(50, 2, generator=_gen(13), dtype=torch.float64)
    out = [
        ddpm.ancestral_sample(
            ddpm.exact_model(gm, schedule, p), x_T, schedule, "beta", p, generator=_gen(14)
        ).x
        for p in ("eps", "x0", "v")
    ]
    torch.testing.assert_close(out[1], out[0])
    torch.testing.assert_close(out[2], out[0])
    # clipping x0 to [-c, c] keeps the last step (x0_hat) inside the box
    clipped = ddpm.ancestral_sample(
        ddpm.exact_model(gm, schedule), x_T, schedule, clip_x0=0.5, generator=_gen(14)
    ).x
    assert clipped.abs().max() <= 0.5 + 1e-12


# ------------------------------------------------------------------ likelihood
def _gap(
    gm: GaussianMixture, x0: torch.Tensor, schedule: DiscreteSchedule, variance: str
) -> tuple[torch.Tensor, float, float]:
    """Per-sample ``log p(x0) - ELBO`` (>= 0 in expectation), its mean and standard error."""
    model = ddpm.exact_model(gm, schedule)
    terms = ddpm.elbo_terms(model, x0, schedule, variance=variance, generator=_gen(15))
    assert terms.diffusion.shape == (x0.shape[0], schedule.T - 1)
    gap = gm.log_prob(x0) - terms.elbo
    return gap, float(gap.mean()), float(gap.std()) / math.sqrt(len(gap))


def _expected_gaussian_gap(schedule: DiscreteSchedule, mean: list[float], v: float, variance: str):
    """``E[L] + E[log p]`` in closed form for ``x0 ~ N(m, v I)``: with the exact model,
    ``mu_tilde - mu_theta = c0 (x0 - E[x0 | x_t])``, whose variance per dimension is
    ``c0^2 Var(x0 | x_t) = c0^2 / (1 / v + snr_t)``."""
    d, m2 = len(mean), sum(m * m for m in mean)
    ab, snr, ab_T = schedule.alpha_bar, schedule.snr, float(schedule.alpha_bar[-1])
    prior = 0.5 * (ab_T * (d * v + m2) - d * ab_T - d * math.log1p(-ab_T))
    t = torch.arange(2, schedule.T + 1)
    c0_sq = ab[t - 1] * schedule.beta[t] ** 2 / (1 - ab[t]) ** 2
    bt = schedule.beta_tilde[t]
    var = bt if variance == "beta_tilde" else schedule.beta[t]
    post_var = 1 / (1 / v + snr[t])
    steps = 0.5 * d * (torch.log(var / bt) + bt / var - 1 + c0_sq * post_var / var).sum()
    b1 = float(schedule.beta[1])
    decoder = 0.5 * d * (1 / (1 / v + float(snr[1])) / b1 + math.log(2 * math.pi * b1))
    entropy = 0.5 * d * (math.log(2 * math.pi * v) + 1)
    return prior + float(steps) + decoder - entropy


@pytest.mark.parametrize(
    ("big_t", "variance"),
    [(100, "beta"), (100, "beta_tilde"), (1000, "beta"), (1000, "beta_tilde")],
)
def test_elbo_of_a_gaussian_matches_closed_form(big_t: int, variance: str) -> None:
    mean, v = [0.5, -0.3], 0.64
    gm = GaussianMixture.isotropic([1.0], [mean], math.sqrt(v))
    x0 = gm.sample(1000, _gen(17)).double()
    schedule = cosine_schedule(big_t)
    _, gap, se = _gap(gm, x0, schedule, variance)
    expected = _expected_gaussian_gap(schedule, mean, v, variance)
    print(f"Gaussian ELBO gap T={big_t} {variance}: {gap:.4f} +- {se:.4f}, exact {expected:.4f}")
    assert abs(gap - expected) < 4 * se
    if variance == "beta":  # sigma_t^2 = beta_t is the right reverse variance here: tight
        assert expected < 0.01 * 100 / big_t
    else:  # beta_tilde is too small in the first steps: the gap tends to D * gamma / 2
        assert expected > 0.5


def test_elbo_bounds_log_likelihood_and_tightens_with_T() -> None:
    # two narrow modes: 10 Gaussian reverse steps cannot carve them out, 500 can
    gm = GaussianMixture.isotropic([0.4, 0.6], [[-1.0], [1.0]], [0.1, 0.2])
    x0 = gm.sample(3000, _gen(16)).double()
    gaps = []
    for big_t in (10, 50, 500):
        gap, mean, se = _gap(gm, x0, cosine_schedule(big_t), "beta")
        print(f"mixture ELBO gap T={big_t}: {mean:.4f} +- {se:.4f} nats")
        assert mean > -3 * se
        gaps.append(gap)
    for coarse, fine in itertools.pairwise(gaps):
        d = coarse - fine  # paired: same x0
        assert float(d.mean()) > 3 * float(d.std()) / math.sqrt(len(d))


def test_elbo_terms_closed_form() -> None:
    """A model that predicts a constant x0 = c makes every term deterministic:
    L_{t-1} = KL between N(mu_tilde, beta_tilde) and N(mu_tilde - c0 (x0 - c), var_t)."""
    c, schedule = 0.1, linear_schedule(50, 1e-3, 0.2)

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, c)

    k = torch.randint(0, 256, (3, 1, 2, 2), generator=_gen(18))
    x0 = (2 * k / 255 - 1).double()
    sq = ((x0 - c) ** 2).flatten(1).sum(1)
    snr = schedule.snr
    ab_T = float(schedule.alpha_bar[-1])
    prior = 0.5 * ((ab_T * x0**2).flatten(1).sum(1) + 4 * (1 - ab_T - 1 - math.log(1 - ab_T)))
    for variance in ("beta_tilde", "beta"):
        terms = ddpm.elbo_terms(model, x0, schedule, "x0", variance, "discrete", _gen(19))
        torch.testing.assert_close(terms.prior, prior)
        t = torch.arange(2, 51)
        c0_sq = (schedule.alpha_bar[t - 1] * schedule.beta[t] ** 2) / (
            1 - schedule.alpha_bar[t]
        ) ** 2
        bt = schedule.beta_tilde[t]
        var = bt if variance == "beta_tilde" else schedule.beta[t]
        expected = 0.5 * (
            c0_sq[None] * sq[:, None] / var + 4 * (torch.log(var / bt) + bt / var - 1)
        )
        torch.testing.assert_close(terms.diffusion, expected)
        if variance == "beta_tilde":  # sum_t c0^2 / beta_tilde = SNR_1 - SNR_T
            torch.testing.assert_close(terms.diffusion.sum(1), 0.5 * float(snr[1] - snr[-1]) * sq)
        # L_0: 8-bit discretised decoder around c with std sqrt(beta_1), computed with scipy
        std = math.sqrt(float(schedule.beta[1]))
        lo = [(-math.inf if v < -0.999 else v - 1 / 255) for v in x0.flatten().tolist()]
        hi = [(math.inf if v > 0.999 else v + 1 / 255) for v in x0.flatten().tolist()]
        p = scipy.stats.norm.cdf(hi, loc=c, scale=std) - scipy.stats.norm.cdf(lo, loc=c, scale=std)
        direct = -torch.log(torch.tensor(p).clamp_min(1e-12)).view(3, 4).sum(1)
        torch.testing.assert_close(terms.decoder, direct)
        torch.testing.assert_close(terms.bits_per_dim(), terms.total / (4 * math.log(2)))
        bpd = ddpm.nll_bound_bits_per_dim(
            model, x0, schedule, "x0", variance, "discrete", 7.0, _gen(19)
        )
        torch.testing.assert_close(bpd, terms.bits_per_dim() + 7.0)


@pytest.mark.parametrize("std", [0.002, 0.01, 0.3, 3.0])
def test_discretized_decoder_sums_to_one(std: float) -> None:
    x0 = (2 * torch.arange(256, dtype=torch.float64) / 255 - 1)[:, None]
    for mu in (-1.3, -1.0, -0.2, 0.0137, 0.99, 1.0, 2.0):
        log_p = ddpm.discretized_gaussian_log_likelihood(
            x0, torch.tensor(mu, dtype=torch.float64), std
        )
        assert abs(float(log_p.exp().sum()) - 1) < 1e-9
        x = x0.flatten().numpy()
        cdf_hi = scipy.stats.norm.cdf((x + 1 / 255 - mu) / std)
        cdf_lo = scipy.stats.norm.cdf((x - 1 / 255 - mu) / std)
        cdf_hi[-1], cdf_lo[0] = 1.0, 0.0  # the edge bins reach +-inf
        direct = torch.tensor(cdf_hi - cdf_lo)
        keep = direct > 1e-8  # where the plain difference of CDFs is still accurate
        torch.testing.assert_close(log_p.flatten()[keep], direct.log()[keep], rtol=1e-6, atol=1e-9)


def test_continuous_decoder() -> None:
    # L_0 of the exact model on a narrow Gaussian: -log N(x0; x0_hat(x_1), beta_1), by hand
    gm = GaussianMixture.isotropic([1.0], [[0.2, 0.0]], 0.5)
    schedule = linear_schedule(20, 1e-3, 0.3)
    x0 = gm.sample(5, _gen(20)).double()
    terms = ddpm.elbo_terms(ddpm.exact_model(gm, schedule), x0, schedule, generator=_gen(21))
    # replay the generator: elbo_terms draws x_2..x_20 first (one chunk here), then x_1
    g = _gen(21)
    torch.randn(19 * 5, 2, generator=g, dtype=torch.float64)
    x1 = ddpm.q_sample(x0, 1, schedule, torch.randn(5, 2, generator=g, dtype=torch.float64))
    x0_hat = gm.optimal_denoiser(x1, float(schedule.sqrt_alpha_bar[1]), float(schedule.sigma[1]))
    b1 = float(schedule.beta[1])
    direct = (0.5 * (x0 - x0_hat) ** 2 / b1 + 0.5 * math.log(2 * math.pi * b1)).sum(1)
    torch.testing.assert_close(terms.decoder, direct)


# ---------------------------------------------------------------------- errors
def test_errors() -> None:
    x0 = torch.randn(4, 2)
    eps = torch.randn(4, 2)
    model = ddpm.exact_model(toys.twin("gaussians8"), LINEAR)
    with pytest.raises(ValueError, match="shape"):
        ddpm.q_sample(x0, torch.ones(3, dtype=torch.long), LINEAR, eps)
    with pytest.raises(ValueError, match="shape"):
        ddpm.q_sample(x0, torch.ones(4, 1, dtype=torch.long), LINEAR, eps)
    with pytest.raises(ValueError, match="eps"):
        ddpm.q_sample(x0, 3, LINEAR, torch.randn(4, 3))
    with pytest.raises(TypeError, match="integer"):
        ddpm.q_sample(x0, torch.full((4,), 0.5), LINEAR, eps)
    with pytest.raises(ValueError, match="outside"):
        ddpm.q_sample(x0, 1001, LINEAR, eps)
    with pytest.raises(ValueError, match="x_t has shape"):
        ddpm.q_posterior(x0, torch.randn(4, 3), 3, LINEAR)
    with pytest.raises(ValueError, match="parameterization"):
        ddpm.loss(model, x0, LINEAR, "score")
    with pytest.raises(ValueError, match="parameterization"):
        ddpm.exact_model(toys.twin("gaussians8"), LINEAR, "velocity")
    with pytest.raises(ValueError, match="variance"):
        ddpm.ancestral_sample(model, x0, LINEAR, variance="learned")
    with pytest.raises(ValueError, match="decoder"):
        ddpm.elbo_terms(model, x0, LINEAR, decoder="logistic")
    with pytest.raises(ValueError, match="model returned"):
        ddpm.predict(lambda x, t: x[:, :1], x0, 5, LINEAR)


# ------------------------------------------------------ issue 14: weight, kernel, speed
def test_ancestral_sample_equals_the_step_by_step_reference() -> None:
    # the loop with precomputed coefficients is Algorithm 2 written with predict and
    # q_posterior, the same noise draws, every parameterization, with and without clipping
    gm = toys.twin("moons")
    schedule = respace(LINEAR, timesteps(1000, 30))
    x_T = torch.randn(40, 2, generator=_gen(21), dtype=torch.float64)
    for parameterization, variance, clip in [
        ("eps", "beta", None),
        ("x0", "beta_tilde", None),
        ("v", "beta", 0.5),
    ]:
        model = ddpm.exact_model(gm, schedule, parameterization)
        fast = ddpm.ancestral_sample(
            model, x_T, schedule, variance, parameterization, _gen(22), clip_x0=clip
        ).x
        var = schedule.beta if variance == "beta" else schedule.beta_tilde
        x, g = x_T, _gen(22)
        for t in range(schedule.T, 0, -1):
            pred = ddpm.predict(model, x, t, schedule, parameterization, clip)
            x = ddpm.q_posterior(pred.x0, x, t, schedule).mean
            if t > 1:
                x = x + float(var[t]) ** 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        torch.testing.assert_close(fast, x, rtol=1e-10, atol=1e-10)


def test_loss_weight_is_eq12_and_spans_about_fifty_fold() -> None:
    w = ddpm.loss_weight(LINEAR)
    assert math.isnan(float(w[0]))
    t = 400
    beta, alpha, ab = (float(v[t]) for v in (LINEAR.beta, LINEAR.alpha, LINEAR.alpha_bar))
    assert float(w[t]) == pytest.approx(beta**2 / (2 * beta * alpha * (1 - ab)), rel=1e-12)
    # 1/(2t) near the data only; first-to-last ratio ~49, max/min ~100 (not 1000)
    assert float(w[1]) == pytest.approx(0.5, rel=1e-3)
    assert float(w[5]) == pytest.approx(1 / 10, rel=0.3)
    assert float(w[100]) > 1.8 / 200
    assert 45 < float(w[1] / w[1000]) < 55
    assert 90 < float(w[1:].max() / w[1:].min()) < 110
    wt = ddpm.loss_weight(LINEAR, "beta_tilde")
    assert math.isinf(float(wt[1])) and (wt[2:] > w[2:]).all()
    with pytest.raises(ValueError, match="variance"):
        ddpm.loss_weight(LINEAR, "sigma")


@pytest.mark.parametrize(("t", "s"), [(300, 299), (300, 100), (50, 10)])
def test_reverse_kernel_is_a_density_and_matches_bayes(t: int, s: int) -> None:
    gm = toys.twin("gaussians8")
    x_t = torch.tensor([0.3, 0.2], dtype=torch.float64)
    kernel = ddpm.reverse_kernel(gm, LINEAR, t, s, x_t)
    # integrates to one on a grid that covers it
    mean, cov = kernel.mean(), kernel.covariance()
    half = 7 * float(torch.linalg.eigvalsh(cov).max().sqrt())
    n = 401
    gx = torch.linspace(float(mean[0]) - half, float(mean[0]) + half, n, dtype=torch.float64)
    gy = torch.linspace(float(mean[1]) - half, float(mean[1]) + half, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(gx, gy, indexing="xy")
    pts = torch.stack([xx.ravel(), yy.ravel()], 1)
    mass = float(kernel.log_prob(pts).exp().sum() * (gx[1] - gx[0]) * (gy[1] - gy[0]))
    assert mass == pytest.approx(1.0, abs=2e-3)
    # Bayes: q(x_s | x_t) = q(x_t | x_s) p_s(x_s) / p_t(x_t), all in closed form
    ab_t, ab_s = float(LINEAR.alpha_bar[t]), float(LINEAR.alpha_bar[s])
    g2 = ab_t / ab_s
    y = kernel.sample(6, _gen(23)).double()
    log_fwd = torch.distributions.Normal(math.sqrt(g2) * y, math.sqrt(1 - g2)).log_prob(x_t).sum(1)
    log_ps = gm.noised_log_prob(y, math.sqrt(ab_s), math.sqrt(1 - ab_s))
    log_pt = gm.noised_log_prob(x_t[None], math.sqrt(ab_t), math.sqrt(1 - ab_t))
    torch.testing.assert_close(kernel.log_prob(y), log_fwd + log_ps - log_pt, rtol=0, atol=1e-8)


def test_reverse_kernel_is_the_posterior_averaged_over_x0_by_monte_carlo() -> None:
    # x0 ~ p(x0 | x_t) by self-normalised importance sampling from the data, and DDPM's
    # Gaussian posterior q(x_s | x_t, x0) on the respaced pair (s, t), averaged over x0
    gm = toys.twin("gaussians8")
    t, s = 300, 100
    x_t = torch.tensor([0.3, 0.2], dtype=torch.float64)
    ab_t = float(LINEAR.alpha_bar[t])
    x0 = gm.sample(200_000, _gen(24)).double()
    log_w = torch.distributions.Normal(math.sqrt(ab_t) * x0, math.sqrt(1 - ab_t)).log_prob(x_t)
    w = torch.softmax(log_w.sum(1), 0)
    pair = respace(LINEAR, [s, t])
    post = ddpm.q_posterior(x0, x_t.expand_as(x0), 2, pair)
    kernel = ddpm.reverse_kernel(gm, LINEAR, t, s, x_t)
    y = kernel.sample(5, _gen(25)).double()
    comp = torch.distributions.Normal(post.mean[:, None, :], post.variance.sqrt()[:, None, :])
    mc = (w[:, None] * comp.log_prob(y[None]).sum(2).exp()).sum(0)
    ess = float(1 / (w**2).sum())
    assert ess > 20_000  # the weights are flat enough for a few-percent estimate
    torch.testing.assert_close(mc.log(), kernel.log_prob(y), rtol=0, atol=0.05)
    # its mean is E[x_s | x_t]; a 1-step kernel is one bump, a 200-step one is not
    torch.testing.assert_close(kernel.mean(), (w[:, None] * post.mean).sum(0), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="s < t"):
        ddpm.reverse_kernel(gm, LINEAR, 100, 100, x_t)
    with pytest.raises(ValueError, match="dimension"):
        ddpm.reverse_kernel(gm, LINEAR, 300, 100, torch.zeros(3))
