"""Tests for :mod:`course_lib.likelihood`: the PF-ODE likelihood of the exact mixture
model equals the mixture's log-density, Hutchinson's estimate is unbiased with its probe
fixed per solve, and bits/dim of a discretised toy equals its discrete entropy."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import likelihood
from course_lib import sde as sdes
from course_lib.gaussian_mixture import GaussianMixture

GM = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2]),
    torch.tensor([[-1.0, 0.5], [1.2, -0.3], [0.0, 1.5]]),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.1]], [[0.05, 0.0], [0.0, 0.4]]]),
)
FAMILIES = {"VE": sdes.VESDE(), "VP": sdes.VPSDE(), "subVP": sdes.SubVPSDE()}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exact_model(sde: sdes.SDE, t1: float = 1.0):
    """The PF-ODE drift of the exact score and the exact ``log p_{t1}`` as its prior."""
    log_p = sdes.exact_log_prob(sde, GM)

    def prior(z: torch.Tensor) -> torch.Tensor:
        return log_p(z, torch.full((z.shape[0],), t1, dtype=z.dtype))

    return sdes.pf_ode_drift(sde, sdes.exact_score(sde, GM)), prior


# ------------------------------------------------------------ exactness
@pytest.mark.parametrize("name", list(FAMILIES))
def test_pf_ode_likelihood_of_exact_model_is_the_mixture_log_prob(name: str) -> None:
    """dopri5 at rtol = atol = 1e-7, float64, exact divergence, prior = exact p_1:
    |log p - gm.log_prob| <= 1e-5 nats (measured: 1.4e-6 VP, 2.0e-6 VE, 0.9e-6 sub-VP)."""
    sde = FAMILIES[name]
    drift, prior = _exact_model(sde)
    x = GM.sample(64, _gen(0)).double()
    res = likelihood.ode_log_likelihood(drift, x, 0.0, 1.0, prior, rtol=1e-7, atol=1e-7)
    assert res.log_p.dtype == torch.float64 and res.z.shape == x.shape
    torch.testing.assert_close(res.log_p, res.prior_logp + res.delta_logp)
    err = (res.log_p - GM.log_prob(x)).abs().max().item()
    assert err < 1e-5, err
    # the N(0, I) prior in place of the exact p_1 is off by up to ~1e-2 nats here
    gap = (sde.prior_log_prob(res.z) - res.prior_logp).abs().max().item()
    assert 1e-4 < gap < 0.1, gap


def test_likelihood_from_eps_and_fixed_steps() -> None:
    """Starting at t0 = eps gives log p_eps (not log p_0); RK4 with 100 steps is within
    1e-3 nats of it."""
    sde, eps = FAMILIES["VP"], 1e-2
    drift, prior = _exact_model(sde)
    x = GM.sample(32, _gen(1)).double()
    want = sdes.exact_log_prob(sde, GM)(x, torch.full((32,), eps, dtype=torch.float64))
    adaptive = likelihood.ode_log_likelihood(drift, x, eps, 1.0, prior, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(adaptive.log_p, want, rtol=0, atol=1e-5)
    rk4 = likelihood.ode_log_likelihood(drift, x, eps, 1.0, prior, method="rk4", n_steps=100)
    assert rk4.nfe == 400
    torch.testing.assert_close(rk4.log_p, want, rtol=0, atol=1e-3)


# ------------------------------------------------------------ Hutchinson
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe: str) -> None:
    """Four points, each repeated R = 200 times in the batch (R independent probes in one
    solve): the mean estimate is within 4 standard errors of the exact log p."""
    sde, r = FAMILIES["VP"], 200
    drift, prior = _exact_model(sde)
    x = GM.sample(4, _gen(2)).double()
    res = likelihood.ode_log_likelihood(
        drift,
        x.repeat(r, 1),
        0.0,
        1.0,
        prior,
        divergence="hutchinson",
        probe=probe,
        rtol=1e-6,
        atol=1e-6,
        generator=_gen(3),
    )
    est = res.log_p.reshape(r, 4)
    se = est.std(0) / math.sqrt(r)
    z = (est.mean(0) - GM.log_prob(x)) / se
    assert (se > 1e-3).all()  # the estimate is random: measured sd ~0.1-0.5 nats
    assert z.abs().max() < 4, z


def test_hutchinson_probe_is_fixed_for_the_whole_solve() -> None:
    """For a linear field u = M x, a fixed Rademacher probe v gives exactly
    ∫ vᵀ M v dt = tr M ± (M_12 + M_21), one of two values; fresh probes at every
    evaluation would average towards tr M instead (and leave an adaptive solver chasing
    the noise: with dopri5 it does not finish). The same generator seed repeats it."""
    m = torch.tensor([[0.3, 0.8], [-0.2, -0.5]], dtype=torch.float64)

    def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ m.T

    def std_normal(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(1) - math.log(2 * math.pi)

    x = torch.randn(64, 2, generator=_gen(4), dtype=torch.float64)
    run = lambda seed: likelihood.ode_log_likelihood(  # noqa: E731
        linear,
        x,
        0.0,
        1.0,
        std_normal,
        divergence="hutchinson",
        method="rk4",
        n_steps=10,
        generator=_gen(seed),
    )
    delta = run(5).delta_logp
    trace, off = float(m.trace()), float(m[0, 1] + m[1, 0])
    dist = torch.minimum((delta - (trace + off)).abs(), (delta - (trace - off)).abs())
    assert dist.max() < 1e-6
    assert ((delta - trace).abs() > 0.5).all()  # never the average
    torch.testing.assert_close(run(5).log_p, run(5).log_p, rtol=0, atol=0)
    exact = likelihood.ode_log_likelihood(linear, x, 0.0, 1.0, std_normal)
    torch.testing.assert_close(exact.delta_logp, torch.full_like(delta, trace))


def test_augmented_drift_of_a_linear_field() -> None:
    """``u = M x + c``: ``∇·u = tr M`` exactly, Hutchinson's ``vᵀ M v`` and ``vᵀ ∂u/∂x =
    vᵀ M`` for the probe given; a field that ignores ``x`` has zero divergence."""
    m = torch.tensor([[0.3, 0.8, 0.0], [-0.2, -0.5, 1.0], [0.4, 0.1, 0.7]], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = torch.randn(5, 3, generator=_gen(9), dtype=torch.float64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    v = torch.randn(5, 3, generator=_gen(10), dtype=torch.float64)

    def linear(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return y @ m.T + c

    u, div, vjp = likelihood.augmented_drift(linear, x, t)
    torch.testing.assert_close(u, x @ m.T + c)
    torch.testing.assert_close(div, m.trace().expand(5))
    assert vjp is None  # not asked for, not computed
    _, div_e, vjp_e = likelihood.augmented_drift(linear, x, t, "exact", v, return_vjp=True)
    torch.testing.assert_close(div_e, div)
    torch.testing.assert_close(vjp_e, v @ m)
    _, div_h, vjp_h = likelihood.augmented_drift(linear, x, t, "hutchinson", v)
    torch.testing.assert_close(vjp_h, v @ m)
    torch.testing.assert_close(div_h, ((v @ m) * v).sum(1))
    # create_graph keeps the divergence differentiable by parameters: d tr M / dM = I,
    # d (vᵀ M v) / dM = Σ_b v_b v_bᵀ
    m_param = m.clone().requires_grad_(True)
    for name, want in [("exact", 5 * torch.eye(3, dtype=torch.float64)), ("hutchinson", v.T @ v)]:
        _, d, _ = likelihood.augmented_drift(
            lambda y, s: y @ m_param.T, x, t, name, v, create_graph=True
        )
        (grad_m,) = torch.autograd.grad(d.sum(), m_param)
        torch.testing.assert_close(grad_m, want)
    assert not div.requires_grad  # no graph by default
    for name in likelihood.DIVERGENCES:
        _, zero, _ = likelihood.augmented_drift(lambda y, s: c.expand(5, 3), x, t, name, v)
        torch.testing.assert_close(zero, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a probe_vector"):
        likelihood.augmented_drift(linear, x, t, "hutchinson")
    with pytest.raises(ValueError, match=r"Unknown divergence 'trace'"):
        likelihood.augmented_drift(linear, x, t, "trace")


# ------------------------------------------------------------ bits per dimension
def _discretised_toy() -> tuple[GaussianMixture, torch.Tensor]:
    """A 2D mixture on the 8-bit pixel scale [0, 256), and the exact probabilities of its
    256 x 256 bins ``P(k) = ∫_bin p`` (product of normal CDF differences per component)."""
    means = torch.tensor([[80.0, 150.0], [170.0, 100.0]], dtype=torch.float64)
    stds = torch.tensor([12.0, 8.0], dtype=torch.float64)
    weights = torch.tensor([0.6, 0.4], dtype=torch.float64)
    edges = torch.arange(257, dtype=torch.float64)
    cdf = torch.special.ndtr((edges[None, None] - means[:, :, None]) / stds[:, None, None])
    mass = cdf[..., 1:] - cdf[..., :-1]  # (K, D, 256)
    probs = torch.einsum("k,ki,kj->ij", weights, mass[:, 0], mass[:, 1])
    return GaussianMixture.isotropic(weights, means, stds), probs


def test_bits_per_dim_of_discretised_toy_is_its_discrete_entropy() -> None:
    """Data: floor of mixture samples (exactly distributed as P). Model: the same mixture
    rescaled to [-1, 1], evaluated at uniformly dequantised data, offset log2(128). The mean
    bits/dim estimates H(P) / (D ln 2) (up to KL(dequantised || model) ~ 1e-3 bits,
    far below the standard error); measured z ~ 1."""
    pixel_gm, probs = _discretised_toy()
    h_bits = float(-(probs * torch.log(probs.clamp_min(1e-300))).sum()) / (2 * math.log(2))
    n, g = 20_000, _gen(6)
    x_int = pixel_gm.sample(n, g).double().floor().clamp(0, 255).to(torch.uint8)
    y = likelihood.dequantize(x_int, g, dtype=torch.float64)
    model = GaussianMixture(
        pixel_gm.weights, pixel_gm.means / 128 - 1, pixel_gm.covariances / 128**2
    )
    bpd = likelihood.bits_per_dim(model.log_prob(y), 2, likelihood.EIGHT_BIT_OFFSET_BITS)
    z = (bpd.mean() - h_bits) / (bpd.std() / math.sqrt(n))
    assert abs(float(z)) < 4, (float(bpd.mean()), h_bits, float(z))
    # the common mistake of the [0, 1] offset, log2(256), is off by exactly one bit
    wrong = likelihood.bits_per_dim(model.log_prob(y), 2, math.log2(256))
    torch.testing.assert_close(wrong - bpd, torch.ones_like(bpd))


def test_dequantize_fills_each_bin_uniformly() -> None:
    x = torch.randint(0, 256, (50_000, 3), generator=_gen(7), dtype=torch.uint8)
    y = likelihood.dequantize(x, _gen(8), dtype=torch.float64)
    assert y.min() >= -1 and y.max() < 1
    assert torch.equal(((y + 1) * 128).floor().to(torch.uint8), x)  # stays in its bin
    u = (y + 1) * 128 - x.double()
    assert abs(float(u.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / u.numel())


# ------------------------------------------------------------ errors
def test_bad_input_is_named() -> None:
    drift, prior = _exact_model(FAMILIES["VP"])
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Unknown divergence 'trace'.*exact, hutchinson"):
        likelihood.ode_log_likelihood(drift, x, 0, 1, prior, divergence="trace")
    with pytest.raises(ValueError, match=r"Unknown probe 'uniform'.*rademacher"):
        likelihood.ode_log_likelihood(drift, x, 0, 1, prior, probe="uniform")
    with pytest.raises(ValueError, match=r"Unknown ODE method 'rk45'.*dopri5.*rk4"):
        likelihood.ode_log_likelihood(drift, x, 0, 1, prior, method="rk45")
    with pytest.raises(ValueError, match="must differ"):
        likelihood.ode_log_likelihood(drift, x, 0.5, 0.5, prior)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        likelihood.ode_log_likelihood(drift, x, 0.0, 1.5, prior)
    with pytest.raises(ValueError, match="expects 8-bit integers"):
        likelihood.dequantize(torch.zeros(3))
    with pytest.raises(ValueError, match="must lie in"):
        likelihood.dequantize(torch.tensor([0, 300]))
    with pytest.raises(ValueError, match="dim must be a positive"):
        likelihood.bits_per_dim(torch.zeros(3), 0)
