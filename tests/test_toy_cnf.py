"""Maximum-likelihood CNFs: training through the course's loop learns a density to within a
margin measured against the exact answer, and the toy recipe trains, checkpoints and loads."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import cnf, config, toy_cnf, train
from course_lib.nets import MLP


def test_mle_cnf_learns_a_gaussian() -> None:
    """A CNF trained by maximum likelihood on ``N(m, C)`` reaches ``KL(p‖q) < 0.05`` nats.

    ``KL(p‖q) = E_p[log p - log q]`` is estimated on 4000 fresh points, with the exact
    ``log p``: the same points in both terms, so the estimate's noise is that of the
    difference, not of either log-density (measured ~0.01 nats after 200 steps)."""
    m = torch.tensor([1.0, -0.5])
    c = torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    chol = torch.linalg.cholesky(c)
    g = torch.Generator().manual_seed(1)
    data = m + torch.randn(20_000, 2, generator=g) @ chol.T
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MLP(dim=2, hidden=32, depth=1, time_scale=1.0)
    train.train(
        net,
        lambda n, b: cnf.mle_loss(n, b, method="rk4", n_steps=4),
        train.random_batches(data, batch_size=256, generator=g),
        steps=200,
        lr=1e-2,
        progress=False,
    )
    x = m + torch.randn(4000, 2, generator=g) @ chol.T
    log_p = torch.distributions.MultivariateNormal(m, c).log_prob(x)
    with torch.no_grad():
        log_q = cnf.log_prob(net, x, method="dopri5", rtol=1e-6, atol=1e-6).log_p
    diff = (log_p - log_q).double()
    kl, se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
    assert -4 * se < kl < 0.05, (kl, se)
    # an untrained CNF is far from it: the margin is not vacuous
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = MLP(dim=2, hidden=32, depth=1, time_scale=1.0)
    with torch.no_grad():
        log_q0 = cnf.log_prob(fresh, x, method="rk4", n_steps=8).log_p
    assert float((log_p - log_q0).mean()) > 0.5


def test_train_toy_cnf_checkpoints_and_loads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    cfg = config.get_config("smoke")
    r = toy_cnf.recipe(
        cfg, "moons", steps=6, hidden=16, depth=1, n_points=256, batch_size=32, method="rk4"
    )
    first = toy_cnf.train_toy_cnf(cfg, "moons", r, progress=False)
    assert first.checkpoint.exists() and first.result.resumed_at == 0
    assert first.nfe == [4 * r.n_steps] * r.base.steps  # rk4: four calls per step
    again = toy_cnf.train_toy_cnf(cfg, "moons", r, progress=False)
    assert again.result.resumed_at == r.base.steps and again.nfe == []
    for a, b in zip(first.model.parameters(), again.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    x = torch.randn(5, 2)
    assert first.velocity(x, torch.tensor(0.5)).shape == (5, 2)
    with pytest.raises(ValueError, match="Unknown method"):
        toy_cnf.recipe(cfg, "moons", method="rk45")
    with pytest.raises(ValueError, match="Unknown divergence"):
        toy_cnf.recipe(cfg, "moons", divergence="trace")
    with pytest.raises(ValueError, match="not 'moons'"):
        toy_cnf.train_toy_cnf(cfg, "moons", toy_cnf.recipe(cfg, "gaussians8"))
