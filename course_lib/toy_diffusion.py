"""The course's 2D diffusion models: a DDPM ``eps``-predictor per toy, trained once.

Chapter 3 trains an MLP on a 2D toy with DDPM's simple loss; chapter 4 samples the same
network with DDIM. Like :mod:`course_lib.image_diffusion`, :func:`train_toy_diffusion`
keeps an atomic checkpoint named by a hash of the recipe, so the second chapter loads
the first one's model in a fraction of a second instead of training its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from course_lib import data as data_module
from course_lib import ddpm, recipes, schedules, toys, train
from course_lib.config import Config
from course_lib.nets import MLP


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that determines a trained 2D model: the toy and its number of
    training points, the :class:`~course_lib.nets.MLP`, the schedule (``"linear"`` or
    ``"cosine"``, ``T`` steps), what the net predicts, and the training budget."""

    toy: str
    n_points: int
    hidden: int
    depth: int
    schedule: str
    T: int
    parameterization: str
    steps: int
    batch_size: int
    lr: float
    ema_decay: float
    seed: int = 0


def recipe(cfg: Config, toy: str, **overrides: object) -> ToyRecipe:
    """The recipe for ``toy`` (a name of :data:`course_lib.toys.NAMES`) in ``cfg``'s
    profile, with optional field overrides (e.g. ``schedule="cosine"``)."""
    if toy not in toys.NAMES:
        raise ValueError(f"Unknown toy {toy!r}; valid names are {', '.join(toys.NAMES)}.")
    base = ToyRecipe(
        toy=toy,
        n_points=cfg.pick(smoke=2_000, cpu=20_000, gpu=50_000),
        hidden=cfg.pick(smoke=64, cpu=128, gpu=256),
        depth=3,
        schedule="linear",
        T=1000,
        parameterization="eps",
        steps=cfg.pick(smoke=30, cpu=1_500, gpu=10_000),
        batch_size=cfg.pick(smoke=128, cpu=256, gpu=1024),
        lr=2e-3,
        ema_decay=cfg.pick(smoke=0.9, cpu=0.995, gpu=0.999),
    )
    return recipes.override(base, **overrides)


@dataclass
class ToyDiffusion:
    """A trained 2D model: ``model(x_t, t / T)`` (EMA weights, eval mode) predicts
    ``recipe.parameterization``; ``x0`` are its training points; ``resumed_at`` is the
    step its checkpoint held before this call (``recipe.steps``: loaded, not trained)."""

    recipe: ToyRecipe
    model: nn.Module
    schedule: schedules.DiscreteSchedule
    x0: torch.Tensor
    result: train.TrainResult
    checkpoint: Path

    @property
    def resumed_at(self) -> int:
        """The step the checkpoint held before this call (``recipe.steps``: loaded)."""
        return self.result.resumed_at


def train_toy_diffusion(
    cfg: Config, toy: str, r: ToyRecipe | None = None, progress: bool = True
) -> ToyDiffusion:
    """Train (or load from its checkpoint) the DDPM of DDPM Algorithm 1 on a 2D toy:
    :func:`course_lib.ddpm.loss` through :func:`course_lib.train.train`. 2D models stay
    on the CPU: for nets this small a GPU's kernel launches cost more than the math."""
    r = r or recipe(cfg, toy)
    if r.toy != toy:
        raise ValueError(f"recipe is for {r.toy!r}, not {toy!r}")
    g = torch.Generator().manual_seed(r.seed)
    x0 = toys.sample(toy, r.n_points, g)
    schedule = schedules.by_name(r.schedule, r.T)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        model = MLP(dim=2, hidden=r.hidden, depth=r.depth)
    result, path = fit(
        model,
        lambda net, x: ddpm.loss(net, x, schedule, r.parameterization, g),
        x0,
        r,
        f"ddpm-toy-{toy}-{recipes.key(r)}",
        g,
        progress,
        f"DDPM on {toy}",
    )
    assert result.ema is not None
    return ToyDiffusion(r, result.ema.eval(), schedule, x0, result, path)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    data: torch.Tensor | tuple[torch.Tensor, ...],
    r: ToyRecipe,
    name: str,
    generator: torch.Generator,
    progress: bool,
    desc: str,
) -> tuple[train.TrainResult, Path]:
    """Train (or resume, or load) a 2D model on rows of ``data`` (a tensor, or a tuple of
    tensors whose rows belong together, such as points and labels) with the recipe's budget
    (steps, batch size, learning rate, EMA) through the course's one
    :func:`course_lib.train.train`, checkpointing to ``checkpoints/<name>.pt`` four times
    per run. Every toy model of the course (DDPM, flows, CNFs) is trained here."""
    path = data_module.data_root() / "checkpoints" / f"{name}.pt"
    with torch.random.fork_rng(devices=[]):
        result = train.train(
            model,
            loss_fn,
            train.random_batches(
                *(data if isinstance(data, tuple) else (data,)),
                batch_size=r.batch_size,
                generator=generator,
            ),
            steps=r.steps,
            lr=r.lr,
            ema_decay=r.ema_decay,
            checkpoint=path,
            checkpoint_every=max(r.steps // 4, 1),
            progress=progress,
            desc=desc,
        )
    return result, path
