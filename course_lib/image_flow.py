"""The course's image flow: chapter 3's U-Net, data and budget, trained with flow matching.

Chapter 6 compares a flow and a diffusion model that differ *only* in the objective: the
same :class:`~course_lib.image_diffusion.ImageRecipe` (U-Net, data, steps, batch, learning
rate, EMA, seed) and the same set-up (:func:`course_lib.image_diffusion.train_image_model`),
with :func:`course_lib.flow_matching.cfm_loss` in place of DDPM's loss. ``model(x, t)``
is the velocity ``v_θ`` at flow time ``t`` (``t = 0`` noise, ``t = 1`` data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_lib import flow_matching as fm
from course_lib import guidance, image_diffusion, train
from course_lib.config import Config
from course_lib.image_diffusion import ImageRecipe


@dataclass
class ImageFlow:
    """A trained image flow: the EMA velocity net (eval mode), its path, the training
    images in ``[-1, 1]`` and labels, the losses and the checkpoint."""

    recipe: ImageRecipe
    model: nn.Module
    path: fm.AffinePath
    images: torch.Tensor
    labels: torch.Tensor
    result: train.TrainResult
    checkpoint: Path
    num_classes: int | None = None  # set for a class-conditional flow (chapter 8)

    @property
    def resumed_at(self) -> int:
        """The step the checkpoint held before this call (``recipe.steps``: loaded)."""
        return self.result.resumed_at

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v_θ(x, t)`` for ``t`` a scalar or ``(B,)`` (a conditional flow: with the null
        label, i.e. the unconditional velocity)."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        return self.model(x, t.to(x.dtype))

    def guided(self, y: int | torch.Tensor, w: float) -> fm.Velocity:
        """The classifier-free-guided velocity ``(1 + w) v(x, t, y) − w v(x, t, ∅)`` of a
        class-conditional flow (:func:`course_lib.guidance.guided_model`)."""
        if self.num_classes is None:
            raise ValueError(
                "guided() needs a class-conditional flow: train_conditional_image_flow"
            )

        def net(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.model(x, t.to(x.dtype), labels)

        return guidance.guided_model(net, y, w, self.num_classes)


def train_image_flow(
    cfg: Config,
    dataset: str = "mnist",
    r: ImageRecipe | None = None,
    path: str = "linear",
    compile: bool = False,
    progress: bool = True,
    checkpoint_every: int = 250,
) -> ImageFlow:
    """Train (or resume, or load) a flow-matching U-Net on ``dataset`` with chapter 3's
    recipe (default :func:`course_lib.image_diffusion.recipe`) and the conditional
    flow-matching loss on ``path`` with independent pairs (I-CFM / rectified flow on the
    linear path). Its checkpoint is ``flow-<path>-<dataset>-...``, beside the DDPM's."""
    r = r or image_diffusion.recipe(cfg, dataset)
    if r.dataset != dataset:
        raise ValueError(f"recipe is for {r.dataset!r}, not {dataset!r}")
    p = fm.get_path(path)
    trained = image_diffusion.train_image_model(
        cfg,
        r,
        lambda net, x1, g: fm.cfm_loss(net, x1, p, None, g),
        f"flow-{path}",
        compile=compile,
        progress=progress,
        checkpoint_every=checkpoint_every,
    )
    return ImageFlow(
        r, trained.model, p, trained.images, trained.labels, trained.result, trained.checkpoint
    )


def train_conditional_image_flow(
    cfg: Config,
    dataset: str = "mnist",
    r: ImageRecipe | None = None,
    p_uncond: float = 0.2,
    compile: bool = False,
    progress: bool = True,
    checkpoint_every: int = 250,
) -> ImageFlow:
    """A class-conditional flow on the linear path for classifier-free guidance (chapter 8):
    chapter 3's recipe and set-up, the U-Net with a label embedding and a null label, and
    the CFM loss with each label dropped to the null label with probability ``p_uncond``
    (:func:`course_lib.guidance.drop_labels`, per sample; Ho & Salimans 2022)."""
    r = r or image_diffusion.recipe(cfg, dataset)
    if r.dataset != dataset:
        raise ValueError(f"recipe is for {r.dataset!r}, not {dataset!r}")
    if not 0.0 < p_uncond < 1.0:
        raise ValueError(f"p_uncond must lie strictly between 0 and 1, got {p_uncond}")
    n_classes = 10  # MNIST, Fashion-MNIST and CIFAR-10 all have ten classes
    p = fm.linear_path()

    def loss(net: nn.Module, x1: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        labels = guidance.drop_labels(y, p_uncond, n_classes, g)
        return fm.cfm_loss(lambda xt, t: net(xt, t, labels), x1, p, None, g)

    trained = image_diffusion.train_image_model(
        cfg, r, loss, f"flow-linear-cond{p_uncond:g}", compile=compile, progress=progress,
        checkpoint_every=checkpoint_every, num_classes=n_classes,
    )  # fmt: skip
    return ImageFlow(
        r, trained.model, p, trained.images, trained.labels, trained.result,
        trained.checkpoint, n_classes,
    )  # fmt: skip
