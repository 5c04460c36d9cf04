"""Chapter 9's objectives against the closed-form mixture answers: each objective's loss
is its family's loss at the drawn randomness, is smallest at the exact model, and each
objective's exact network, turned into EDM's denoiser, is the posterior mean."""

from __future__ import annotations

import pytest
import torch

from course_lib import ddpm, edm, objectives, toys
from course_lib import flow_matching as fm

GM = toys.twin("gaussians8")


def exact_net(obj: objectives.Objective) -> torch.nn.Module | object:
    """The Bayes-optimal network of each objective, in the objective's own inputs."""
    if obj.name == "eps":
        return ddpm.exact_model(GM, obj.schedule)
    if obj.name == "flow":
        v = fm.exact_velocity(GM, obj.path)
        return lambda x, t: v(x, t.to(torch.float64)).to(x.dtype)
    pre = edm.Preconditioning(obj.sigma_data)

    def raw(y: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        # invert EDM eq. 7: F = (D*(x̂; σ) - c_skip x̂) / c_out, at x̂ = y / c_in, σ = e^{4c}
        level = torch.exp(4 * c_noise.to(torch.float64))  # (B,)
        sigma = level[:, None]
        xhat = y / pre.c_in(sigma)
        d = GM.optimal_denoiser(xhat, 1.0, level)
        return (d - pre.c_skip(sigma) * xhat) / pre.c_out(sigma)

    return raw


def posterior_mean(xhat: torch.Tensor, sigma: float) -> torch.Tensor:
    """EDM's exact denoiser ``E[x0 | x0 + σ ε = x̂]`` for data from the mixture."""
    return GM.optimal_denoiser(xhat, 1.0, sigma)


@pytest.mark.parametrize("name", objectives.NAMES)
@pytest.mark.parametrize("sigma", [0.05, 0.7, 5.0])
def test_every_objective_becomes_the_exact_denoiser(name: str, sigma: float) -> None:
    obj = objectives.get(name)
    if not obj.sigma_min <= sigma <= obj.sigma_max:
        pytest.skip("outside the objective's noise range")
    g = torch.Generator().manual_seed(0)
    x0 = GM.sample(256, generator=g).to(torch.float64)
    xhat = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    denoiser = obj.denoiser(exact_net(obj))
    got = denoiser(xhat, sigma)
    want = posterior_mean(xhat, sigma)
    # eps: the schedule's nearest step stands in for σ (a relative step of ~1e-3 in σ)
    tol = 2e-2 if name == "eps" else 1e-6
    assert torch.allclose(got, want, atol=tol * max(1.0, sigma)), (got - want).abs().max()


@pytest.mark.parametrize("name", objectives.NAMES)
def test_the_exact_network_has_the_smallest_loss(name: str) -> None:
    """Over the same draws, the exact network's loss is below the same network with a
    small constant added to its output: by exactly the constant's squared norm (up to
    a weight) in expectation; here it must simply be larger, with many draws."""
    obj = objectives.get(name)
    net = exact_net(obj)

    def shifted(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(x, c) + 0.1

    g = torch.Generator().manual_seed(1)
    x0 = GM.sample(4096, generator=g).to(torch.float64)
    d = objectives.draw(0, 0, x0.shape[0], (2,))
    d = objectives.Draws(d.flip, d.u.clamp(1e-3, 1 - 1e-3), d.n, d.noise.to(torch.float64))
    exact, worse = obj.loss(net, x0, d), obj.loss(shifted, x0, d)
    assert exact < worse


def test_eps_objective_is_ddpm_loss_at_the_drawn_steps() -> None:
    obj = objectives.get("eps")
    x0 = GM.sample(64, generator=torch.Generator().manual_seed(2)).float()
    d = objectives.draw(3, 4, 64, (2,))
    net = torch.nn.Linear(2, 2)

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return net(x) * tau[:, None]

    t = 1 + (d.u * 1000).long()
    x_t = ddpm.q_sample(x0, t, obj.schedule, d.noise)
    want = torch.mean((model(x_t, t / 1000) - d.noise) ** 2)
    assert torch.allclose(obj.loss(model, x0, d), want)
    assert int(t.min()) >= 1 and int(t.max()) <= 1000


def test_flow_denoiser_matches_the_linear_path_algebra() -> None:
    """On the linear path, ``σ = (1 - t)/t``: the flow state ``x_t = t x̂``."""
    path = fm.linear_path()
    seen = {}

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen["t"] = t.clone()
        return torch.zeros_like(x)

    x = torch.randn(5, 2, dtype=torch.float64)
    d = fm.denoiser_from_velocity(velocity, path)(x, 3.0)
    assert torch.allclose(seen["t"], torch.full((5,), 0.25, dtype=torch.float64))
    # v = 0 means x̂1 = x_t (the state does not move): D = t x̂ = x / 4
    assert torch.allclose(d, x / 4)


def test_unknown_objective_names_the_choices() -> None:
    with pytest.raises(ValueError, match="eps, edm, flow"):
        objectives.get("score")


def test_edm_and_flow_objectives_use_the_papers_distributions() -> None:
    """EDM: ln σ = P_mean + P_std n with EDM's (−1.2, 1.2); the flow: t = u on [0, 1]
    with x0 = the noise and x1 = the image (t = 0 noise). Swapping P_mean and P_std, or
    training the flow at 1 − t, changes these losses."""
    x0 = GM.sample(64, generator=torch.Generator().manual_seed(4)).float()
    d = objectives.draw(1, 2, 64, (2,))
    net = torch.nn.Linear(2, 2)

    def model(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(x) * (1 + c[:, None].float())

    edm_obj = objectives.get("edm")
    sigma = torch.exp(-1.2 + 1.2 * d.n)
    want = edm.edm_loss(edm.EDMDenoiser(model), x0, sigma=sigma, noise=d.noise)
    assert torch.allclose(edm_obj.loss(model, x0, d), want)
    swapped = edm.edm_loss(
        edm.EDMDenoiser(model), x0, sigma=torch.exp(1.2 - 1.2 * d.n), noise=d.noise
    )
    assert not torch.allclose(edm_obj.loss(model, x0, d), swapped)

    flow_obj = objectives.get("flow")
    t = d.u.double()
    want = fm.cfm_loss_at(model, d.noise, x0, t, fm.linear_path())
    assert torch.allclose(flow_obj.loss(model, x0, d), want)
    assert not torch.allclose(
        flow_obj.loss(model, x0, d), fm.cfm_loss_at(model, d.noise, x0, 1 - t, fm.linear_path())
    )
