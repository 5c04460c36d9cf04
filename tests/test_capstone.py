"""Chapter 9's lab pipeline (course_lib.capstone): the sampler table on every objective,
recipes, sampling sharded over processes, and the denoising error e(σ) against the exact
mixture denoiser. Training under DDP and kill-and-resume are in test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from test_objectives import GM, exact_net, posterior_mean

from course_lib import capstone, objectives


def test_capstone_sampler_table_per_objective() -> None:
    flow = objectives.get("flow")
    names = set(capstone.samplers(flow, exact_net(flow)))
    assert {
        "flow, Euler",
        "flow, Heun",
        "EDM Heun",
        "DDIM, η = 0",
        "PC (VP, RD + Langevin)",
    } <= names
    eps = objectives.get("eps")
    assert "flow, Euler" not in capstone.samplers(eps, exact_net(eps))


def test_unknown_recipe_names_the_choices() -> None:
    from course_lib.config import get_config

    with pytest.raises(ValueError, match="smoke, cpu, gpu, ddpm35m"):
        capstone.recipe(get_config("smoke"), "nope")


def test_sharded_sampling_does_not_depend_on_the_process_count() -> None:
    """Batch ``b`` is drawn from seed ``seed + 1000 b`` whoever draws it: rank ``r`` of
    ``W`` draws batches ``r, r + W, ...`` (here without a process group, each rank's own
    share), and the one-process run draws them all in order."""

    def sampler(knob: int, z: torch.Tensor, g: torch.Generator) -> object:
        return type("Result", (), {"x": 2 * z})()

    one = capstone.sample(sampler, 1, 10, (3,), seed=5, batch_size=4)  # batches 0, 1, 2
    assert one.shape == (10, 3)
    rank0 = capstone.sample(
        sampler, 1, 12, (3,), seed=5, batch_size=4,
        dist=capstone.distributed.Dist(rank=0, world_size=2),
    )  # fmt: skip
    rank1 = capstone.sample(
        sampler, 1, 12, (3,), seed=5, batch_size=4,
        dist=capstone.distributed.Dist(rank=1, world_size=2),
    )  # fmt: skip
    assert torch.equal(rank0[:4], one[:4]) and torch.equal(rank0[4:6], one[8:10])
    assert torch.equal(rank1[:4], one[4:8])
    assert not torch.equal(one[:4], one[4:8])


def test_denoising_error_of_the_exact_denoiser_spans_zero_to_the_data_variance() -> None:
    """``e(σ)`` of the posterior mean: near 0 at small σ, the data's variance per
    element at large σ, increasing in between, and below any other denoiser's."""
    x0 = GM.sample(4000, generator=torch.Generator().manual_seed(5)).to(torch.float64)

    def exact(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return posterior_mean(x, sigma)

    sigmas = [1e-3, 0.1, 0.5, 2.0, 1e3]
    e = capstone.denoising_error(exact, x0, sigmas)
    variance = float(x0.var(0, unbiased=False).mean())
    assert e[0] < 1e-5 and abs(float(e[-1]) - variance) < 0.01 * variance
    assert torch.all(e[1:] >= e[:-1])
    shrunk = capstone.denoising_error(lambda x, s: 0.9 * exact(x, s), x0, sigmas)
    assert torch.all(shrunk[:-1] > e[:-1])
