"""The ground truth itself is checked against independent computations."""

import math

import pytest
import torch
from scipy.stats import multivariate_normal

from course_lib.gaussian_mixture import GaussianMixture


@pytest.fixture
def gm() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]),
        torch.tensor(
            [
                [[0.3, 0.1], [0.1, 0.2]],
                [[0.5, -0.2], [-0.2, 0.4]],
                [[0.1, 0.0], [0.0, 0.6]],
            ]
        ),
    )


def points(n=50, seed=0):
    return 2 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_log_prob_matches_scipy(gm):
    x = points()
    want = sum(
        w * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
        for w, m, c in zip(gm.weights, gm.means, gm.covariances, strict=True)
    )
    assert torch.allclose(gm.log_prob(x), torch.log(torch.as_tensor(want)), atol=1e-10)


def test_score_is_gradient_of_log_prob(gm):
    x = points().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(gm.score(x.detach()), grad, atol=1e-10)


@pytest.mark.parametrize(("a", "s"), [(1.0, 0.5), (0.6, 0.8), (0.1, 1.0)])
def test_noised_score_and_log_prob_match_noised_mixture(gm, a, s):
    x = points()
    noised = gm.noised(a, s)
    assert torch.allclose(gm.noised_log_prob(x, a, s), noised.log_prob(x), atol=1e-10)
    assert torch.allclose(gm.noised_score(x, a, s), noised.score(x), atol=1e-10)


def test_per_sample_noise_levels_match_scalar_ones(gm):
    x = points(6)
    a = torch.tensor([1.0, 0.9, 0.7, 0.5, 0.3, 0.1], dtype=torch.float64)
    s = torch.sqrt(1 - a**2) + 0.01
    batched = gm.optimal_denoiser(x, a, s)
    single = torch.stack(
        [gm.optimal_denoiser(x[i : i + 1], float(a[i]), float(s[i]))[0] for i in range(6)]
    )
    assert torch.allclose(batched, single, atol=1e-12)


def test_sample_moments(gm):
    n = 200_000
    x = gm.sample(n, torch.Generator().manual_seed(1)).double()
    # 5 standard errors of the sample mean and covariance
    se_mean = torch.sqrt(torch.diagonal(gm.covariance()) / n)
    assert ((x.mean(0) - gm.mean()).abs() < 5 * se_mean).all()
    assert torch.allclose(torch.cov(x.T), gm.covariance(), atol=0.02)


def test_noised_law_matches_sampling(gm):
    """Mean and covariance of a*x0 + s*eps, sampled, equal those of gm.noised(a, s)."""
    a, s, n = 0.7, 0.6, 200_000
    g = torch.Generator().manual_seed(2)
    xt = a * gm.sample(n, g).double() + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    noised = gm.noised(a, s)
    assert torch.allclose(xt.mean(0), noised.mean(), atol=0.01)
    assert torch.allclose(torch.cov(xt.T), noised.covariance(), atol=0.02)


def test_optimal_denoiser_is_tweedie(gm):
    a, s = 0.8, 0.6
    x = points()
    tweedie = (x + s**2 * gm.noised_score(x, a, s)) / a
    assert torch.allclose(gm.optimal_denoiser(x, a, s), tweedie, atol=1e-10)


def test_optimal_denoiser_beats_perturbations_by_monte_carlo(gm):
    """E||D(x_t) - x0||^2 is smallest for the posterior mean."""
    a, s, n = 0.8, 0.6, 100_000
    g = torch.Generator().manual_seed(3)
    x0 = gm.sample(n, g).double()
    xt = a * x0 + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    d = gm.optimal_denoiser(xt, a, s)
    best = ((d - x0) ** 2).sum(1)
    for shift in (0.05, -0.05):
        worse = ((d + shift - x0) ** 2).sum(1)
        diff = worse - best  # paired: its standard error is small
        assert diff.mean() > 4 * diff.std() / math.sqrt(n)


def test_single_gaussian_denoiser_is_linear():
    c = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    gm = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), c[None])
    a, s = 0.5, 0.7
    x = points()
    gain = a * c @ torch.linalg.inv(a**2 * c + s**2 * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(gm.optimal_denoiser(x, a, s), x @ gain.T, atol=1e-12)


def test_isotropic_constructor_and_1d():
    gm = GaussianMixture.isotropic([0.8, 0.2], [-2.0, 2.0], 0.5)
    assert gm.dim == 1 and gm.n_components == 2
    x = torch.tensor([[0.0]], dtype=torch.float64)
    want = math.log(0.8 * math.exp(-8) + 0.2 * math.exp(-8)) - math.log(
        0.5 * math.sqrt(2 * math.pi)
    )
    assert gm.log_prob(x).item() == pytest.approx(want, abs=1e-12)


def test_bad_inputs_raise_clear_errors(gm):
    with pytest.raises(ValueError, match="shapes"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="weights must be positive"):
        GaussianMixture(torch.tensor([1.0, 0.0]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        gm.score(torch.zeros(3, 3))
