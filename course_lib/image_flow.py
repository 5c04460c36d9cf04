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
from course_lib import image_diffusion, train
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

    @property
    def resumed_at(self) -> int:
        """The step the checkpoint held before this call (``recipe.steps``: loaded)."""
        return self.result.resumed_at

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v_θ(x, t)`` for ``t`` a scalar or ``(B,)``."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        return self.model(x, t.to(x.dtype))


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
