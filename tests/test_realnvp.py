"""Affine coupling flows: exact inverse, the triangular log-determinant against the full
Jacobian, a normalised density, and maximum-likelihood training that moves towards the data."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import realnvp, train


def _random_flow(dim: int, seed: int) -> realnvp.CouplingFlow:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = realnvp.CouplingFlow(dim, n_layers=4, hidden=16).double()
        for p in flow.parameters():  # away from the identity the layers start at
            p.data.add_(0.3 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_inverse_and_log_determinant(dim: int) -> None:
    flow = _random_flow(dim, 0)
    z = torch.randn(6, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, logdet = flow(z)
    z_back, logdet_inv = flow.inverse(x)
    torch.testing.assert_close(z_back, z)
    torch.testing.assert_close(logdet_inv, -logdet)
    for i in range(z.shape[0]):  # the full Jacobian, one sample at a time
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1])
    assert float(logdet.detach().abs().max()) > 0.1  # not the identity map


def test_density_integrates_to_one() -> None:
    """Riemann sum of ``exp(log p)`` over a box holding nearly all the mass."""
    flow = _random_flow(2, 2)
    xs = flow.sample(20_000, torch.Generator().manual_seed(3))
    lo = xs.min(0).values - 3
    hi = xs.max(0).values + 3
    n = 600
    g0 = torch.linspace(float(lo[0]), float(hi[0]), n, dtype=torch.float64)
    g1 = torch.linspace(float(lo[1]), float(hi[1]), n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (g0[1] - g0[0]) * (g1[1] - g1[0])
    assert float(mass) == pytest.approx(1.0, abs=0.01)


def test_maximum_likelihood_fits_a_gaussian() -> None:
    """An affine coupling stack contains the affine maps, so it can fit ``N(m, C)``
    exactly: after training, ``KL(p‖q)`` on fresh points is below 0.05 nats."""
    m, c = torch.tensor([1.0, -0.5]), torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    chol = torch.linalg.cholesky(c)
    g = torch.Generator().manual_seed(4)
    data = m + torch.randn(20_000, 2, generator=g) @ chol.T
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = realnvp.CouplingFlow(2, n_layers=4, hidden=32)
    train.train(
        flow,
        lambda f, b: -f.log_prob(b).mean(),
        train.random_batches(data, batch_size=256, generator=g),
        steps=400,
        lr=5e-3,
        progress=False,
    )
    x = m + torch.randn(4000, 2, generator=g) @ chol.T
    with torch.no_grad():
        diff = torch.distributions.MultivariateNormal(m, c).log_prob(x) - flow.log_prob(x)
    kl, se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
    assert -4 * se < kl < 0.05, (kl, se)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="mask"):
        realnvp.AffineCoupling(2, torch.tensor([True, True]))
    with pytest.raises(ValueError, match="at least 2"):
        realnvp.CouplingFlow(1)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        realnvp.CouplingFlow(2).log_prob(torch.zeros(3, 3))
