"""Chapter 7: continuous normalizing flows on the 2D toys, trained by maximum likelihood
(FFJORD, Grathwohl et al. 2019) through the course's one training loop.

The network is chapter 3's MLP (the one chapter 6's flows use, so that the two training
methods can be compared on the same model); the loss is :func:`course_lib.cnf.mle_loss`,
whose solve is differentiable. The recipe fixes the solver, the divergence estimator and
the regularisers, because each changes the trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from course_lib import cnf, recipes, toy_diffusion, toys, train
from course_lib.config import Config
from course_lib.nets import MLP


@dataclass(frozen=True)
class CNFRecipe:
    """A maximum-likelihood CNF on a toy: chapter 3's network and data (``base``; its
    ``steps``, ``batch_size`` and ``lr`` are overridden per profile by :func:`recipe`), the
    solver of the training solves, the divergence, the regularisers (Finlay et al. 2020)
    and the time scale of the network's time embedding (a CNF integrates the network in
    ``t``; the diffusion chapters' scale of 1000 makes ``v`` oscillate in ``t`` and the
    solver pay for it)."""

    base: toy_diffusion.ToyRecipe
    method: str = "dopri5"
    n_steps: int = 8
    rtol: float = 1e-3
    atol: float = 1e-3
    divergence: str = "exact"
    adjoint: bool = False
    kinetic_weight: float = 0.0
    jacobian_weight: float = 0.0
    time_scale: float = 1.0


def recipe(cfg: Config, toy: str, **overrides: object) -> CNFRecipe:
    """The CNF recipe for ``toy`` in ``cfg``'s profile; ``overrides`` may name fields of
    :class:`CNFRecipe` or of its base."""
    own = {k: v for k, v in overrides.items() if k in CNFRecipe.__dataclass_fields__}
    rest = {k: v for k, v in overrides.items() if k not in own}
    budget = {
        "steps": cfg.pick(smoke=10, cpu=250, gpu=5_000),
        "batch_size": cfg.pick(smoke=64, cpu=128, gpu=512),
        "lr": 2e-3,
    }
    base = toy_diffusion.recipe(cfg, toy, **(budget | rest))
    r = CNFRecipe(base, **own)  # type: ignore[arg-type]
    if r.method not in cnf.ADAPTIVE_METHODS + cnf.FIXED_METHODS:
        valid = ", ".join(cnf.ADAPTIVE_METHODS + cnf.FIXED_METHODS)
        raise ValueError(f"Unknown method {r.method!r}; valid: {valid}.")
    if r.divergence not in cnf.DIVERGENCES:
        raise ValueError(
            f"Unknown divergence {r.divergence!r}; valid: {', '.join(cnf.DIVERGENCES)}."
        )
    return r


def build_model(hidden: int, depth: int, time_scale: float = 1.0) -> MLP:
    """The velocity network of a toy CNF: chapter 3's MLP with a time embedding of scale
    ``time_scale`` (chapter 6's flows use the same network)."""
    return MLP(dim=2, hidden=hidden, depth=depth, time_scale=time_scale)


class ExactField(nn.Module):
    """A known velocity ``v(x, t)`` (e.g. :func:`course_lib.flow_matching.exact_velocity`)
    as a parameter-free module, so that :func:`course_lib.cnf.log_prob` can integrate it."""

    def __init__(self, velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.velocity = velocity

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, t)


@dataclass
class ToyCNF:
    """A trained CNF: ``model(x, t)`` (EMA weights, eval mode) is ``v_θ`` in flow time;
    ``nfe`` holds the forward NFE of each training step run in this call (empty when the
    model was loaded)."""

    recipe: CNFRecipe
    model: nn.Module
    x1: torch.Tensor
    result: train.TrainResult
    checkpoint: Path
    nfe: list[int] = field(default_factory=list)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).expand(x.shape[0])
        return self.model(x.float(), t.float()).to(x.dtype)

    def solve_options(self) -> dict[str, object]:
        """The solver settings of the recipe, for :func:`course_lib.cnf.log_prob`."""
        r = self.recipe
        return {"method": r.method, "n_steps": r.n_steps, "rtol": r.rtol, "atol": r.atol}


def train_toy_cnf(
    cfg: Config, toy: str, r: CNFRecipe | None = None, progress: bool = True
) -> ToyCNF:
    """Train (or load) a CNF on ``toy`` by maximum likelihood through
    :func:`course_lib.train.train`, with atomic checkpoints like every model of the course."""
    r = r or recipe(cfg, toy)
    b = r.base
    if b.toy != toy:
        raise ValueError(f"recipe is for {b.toy!r}, not {toy!r}")
    g = torch.Generator().manual_seed(b.seed)
    x1 = toys.sample(toy, b.n_points, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(b.seed)
        model = build_model(b.hidden, b.depth, r.time_scale)
    nfe: list[int] = []

    def loss_fn(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        res = cnf.log_prob(
            net, batch, divergence=r.divergence, method=r.method, n_steps=r.n_steps,
            rtol=r.rtol, atol=r.atol, adjoint=r.adjoint, generator=g,
            jacobian=r.jacobian_weight > 0,
        )  # fmt: skip
        nfe.append(res.nfe)
        return cnf.regularized_loss(res, r.kinetic_weight, r.jacobian_weight)

    result, ckpt = toy_diffusion.fit(
        model, loss_fn, x1, b, f"cnf-toy-{toy}-{recipes.key(r)}", g, progress,
        f"CNF (maximum likelihood) on {toy}",
    )  # fmt: skip
    assert result.ema is not None
    return ToyCNF(r, result.ema.eval(), x1, result, ckpt, nfe)
