"""The course's image diffusion model: one recipe per data set and profile, trained once.

Chapter 3 (DDPM) trains an ``eps``-prediction U-Net on MNIST (and CIFAR-10 on a GPU)
with the simple loss of DDPM Algorithm 1; chapter 4 (DDIM) samples the *same* network
with other samplers, which is DDIM's point. Both chapters call
:func:`train_image_diffusion` with the same recipe: the first call trains and writes an
atomic checkpoint, and every later call (another chapter, or the same chapter after a
Colab session ended mid-training) resumes from it, which takes seconds once training is
complete.

A recipe fixes everything that determines the weights (data, U-Net, schedule, training
budget, seed), and the checkpoint's file name carries a hash of it, so changing any of
them trains a new model instead of loading a stale one.

On CUDA the loop runs under bf16 autocast, the U-Net uses the channels-last memory
layout, the training images live on the GPU (no Python data loader per batch), and
``compile=True`` adds ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from course_lib import data as data_module
from course_lib import ddpm, recipes, schedules, train
from course_lib.config import Config
from course_lib.unet import UNet


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that determines a trained image model.

    Attributes:
        dataset: a name of :data:`course_lib.data.NAMES`.
        n_images: how many training images (a fixed random subset; ``None`` = all).
        base_channels, channel_mults, num_res_blocks, attention_levels, dropout: the
            :class:`~course_lib.unet.UNet`.
        schedule: ``"linear"`` (DDPM) or ``"cosine"`` (improved DDPM).
        T: number of diffusion steps.
        steps, batch_size, lr, warmup_steps, ema_decay: the training budget.
        flip: random horizontal flips (CIFAR-10; digits must not be mirrored).
        seed: seeds the initial weights and the batches.
    """

    dataset: str
    n_images: int | None
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[int, ...]
    dropout: float
    schedule: str
    T: int
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    flip: bool = False
    seed: int = 0


_MNIST = dict(dataset="mnist", schedule="linear", T=1000, num_res_blocks=1, dropout=0.0)
_CIFAR = dict(dataset="cifar10", schedule="linear", T=1000, flip=True)
#: ``(dataset, profile) -> recipe``. ``smoke`` takes every code path in seconds. ``cpu``
#: is 1000 steps at batch 32 (about two minutes on two cores; a step of the 0.3M-
#: parameter U-Net costs about 0.1 s there): digit-like samples, many of them readable.
#: ``gpu`` is a few minutes (MNIST) to half an hour (CIFAR-10) on one modern GPU. The
#: CIFAR-10 ``cpu`` recipe exists for completeness: an hour of CPU gives blurry blobs.
RECIPES: dict[tuple[str, str], ImageRecipe] = {
    ("mnist", "smoke"): ImageRecipe(
        **_MNIST,
        n_images=512,
        base_channels=8,
        channel_mults=(1, 2),
        attention_levels=(),
        steps=6,
        batch_size=16,
        lr=2e-3,
        warmup_steps=0,
        ema_decay=0.9,
    ),
    ("mnist", "cpu"): ImageRecipe(
        **_MNIST,
        n_images=None,
        base_channels=16,
        channel_mults=(1, 2, 2),
        attention_levels=(),
        steps=1000,
        batch_size=32,
        lr=2e-3,
        warmup_steps=100,
        ema_decay=0.995,
    ),
    ("mnist", "gpu"): ImageRecipe(
        **_MNIST,
        n_images=None,
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention_levels=(2,),
        steps=8000,
        batch_size=256,
        lr=1e-3,
        warmup_steps=500,
        ema_decay=0.999,
    ),
    ("cifar10", "smoke"): ImageRecipe(
        **_CIFAR,
        n_images=256,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        steps=4,
        batch_size=8,
        lr=2e-3,
        warmup_steps=0,
        ema_decay=0.9,
    ),
    ("cifar10", "cpu"): ImageRecipe(
        **_CIFAR,
        n_images=None,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.1,
        steps=1500,
        batch_size=64,
        lr=2e-4,
        warmup_steps=200,
        ema_decay=0.995,
    ),
    ("cifar10", "gpu"): ImageRecipe(
        **_CIFAR,
        n_images=None,
        base_channels=64,
        channel_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_levels=(1,),
        dropout=0.1,
        steps=40_000,
        batch_size=128,
        lr=2e-4,
        warmup_steps=1000,
        ema_decay=0.9995,
    ),
}
# Fashion-MNIST has MNIST's shape and size: the same budgets serve it.
RECIPES.update(
    {
        ("fashion_mnist", profile): replace(RECIPES[("mnist", profile)], dataset="fashion_mnist")
        for profile in ("smoke", "cpu", "gpu")
    }
)


def recipe(cfg: Config, dataset: str = "mnist", **overrides: object) -> ImageRecipe:
    """The recipe for ``dataset`` in ``cfg``'s profile, with optional field overrides
    (e.g. ``steps=20_000`` to train longer; that is a new model with its own checkpoint)."""
    if (dataset, cfg.profile) not in RECIPES:
        names = sorted({d for d, _ in RECIPES})
        raise ValueError(f"No image recipe for {dataset!r}; recipes exist for {names}.")
    return recipes.override(RECIPES[(dataset, cfg.profile)], **overrides)


def make_unet(r: ImageRecipe, channels: int, num_classes: int | None = None) -> UNet:
    """The recipe's U-Net for images with ``channels`` channels (label-conditioned, with a
    null label, when ``num_classes`` is given)."""
    return UNet(
        channels,
        num_classes=num_classes,
        base_channels=r.base_channels,
        channel_mults=r.channel_mults,
        num_res_blocks=r.num_res_blocks,
        attention_levels=r.attention_levels,
        dropout=r.dropout,
    )


def training_images(cfg: Config, r: ImageRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's training images in ``[-1, 1]`` and their labels, on ``cfg.device``:
    the split ``cfg.train_split``, cut to a fixed random subset of ``r.n_images``."""
    ds = data_module.load(r.dataset, split=cfg.train_split)
    if r.n_images is not None and r.n_images < len(ds):
        ds = ds.subset(r.n_images, torch.Generator().manual_seed(r.seed))
    return ds.to_float().to(cfg.device), ds.labels.to(cfg.device)


def seeded_unet(cfg: Config, r: ImageRecipe, channels: int, num_classes: int | None = None) -> UNet:
    """The recipe's U-Net with initial weights seeded by ``r.seed`` (the caller's random
    stream is untouched), on ``cfg.device``, channels-last on CUDA."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        model = make_unet(r, channels, num_classes).to(cfg.device)
    if cfg.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class ImageDiffusion:
    """A trained image model and what chapters need around it.

    Attributes:
        recipe: the :class:`ImageRecipe`.
        model: the EMA weights, in eval mode: ``model(x_t, t / T)`` predicts ``eps``.
        schedule: the training schedule.
        images: the training images in ``[-1, 1]``, ``(N, C, H, W)``, on the device.
        labels: their labels ``(N,)``.
        result: the :class:`~course_lib.train.TrainResult` (losses of every step).
        checkpoint: where the training state is kept.
    """

    recipe: ImageRecipe
    model: nn.Module
    schedule: schedules.DiscreteSchedule
    images: torch.Tensor
    labels: torch.Tensor
    result: train.TrainResult
    checkpoint: Path

    @property
    def resumed_at(self) -> int:
        """The step the checkpoint held before this call (``recipe.steps``: loaded)."""
        return self.result.resumed_at

    @property
    def trained_now(self) -> bool:
        """Whether (some of) the training ran in this call rather than being loaded."""
        return self.resumed_at < self.recipe.steps


def checkpoint_path(r: ImageRecipe, cfg: Config, kind: str = "ddpm") -> Path:
    """``<data root>/checkpoints/<kind>-<dataset>-<split>-<recipe hash>.pt``."""
    name = f"{kind}-{r.dataset}-{cfg.train_split}-{recipes.key(r)}.pt"
    return data_module.data_root() / "checkpoints" / name


ImageLoss = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]
# a class-conditional model's loss also gets the batch's labels: loss(net, x, y, generator)
ConditionalImageLoss = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor
]


@dataclass
class TrainedImageModel:
    """What :func:`train_image_model` returns: the EMA model (eval mode), the training
    images in ``[-1, 1]`` on the device, their labels, the losses and the checkpoint."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    result: train.TrainResult
    checkpoint: Path


def train_image_model(
    cfg: Config,
    r: ImageRecipe,
    loss: ImageLoss | ConditionalImageLoss,
    kind: str,
    compile: bool = False,
    progress: bool = True,
    checkpoint_every: int = 250,
    num_classes: int | None = None,
) -> TrainedImageModel:
    """Train (or resume, or load) the recipe's U-Net on its data set with ``loss(net, x,
    generator)``: the set-up every image model of the course shares (a fixed subset of
    the training split on the device, seeded weights, flips for CIFAR-10, channels-last
    and bf16 autocast on CUDA, EMA and atomic checkpoints named ``kind``-... that hold
    the batch and noise generators' states, so a resumed run is the uninterrupted run).

    With ``num_classes`` the U-Net takes labels (and a null label, :class:`~course_lib.
    unet.UNet`), batches carry each image's label, and the loss is ``loss(net, x, y,
    generator)`` (chapter 8: label dropout happens inside it)."""
    images, labels = training_images(cfg, r)
    if num_classes is not None and int(labels.max()) >= num_classes:
        raise ValueError(
            f"{r.dataset} has labels up to {int(labels.max())}, more than num_classes = "
            f"{num_classes}"
        )
    model = seeded_unet(cfg, r, images.shape[1], num_classes)
    channels_last = cfg.device.type == "cuda"
    # batch indices are drawn on the CPU; the noise and flips on the images' device
    batch_generator = torch.Generator().manual_seed(r.seed)
    batches = train.random_batches(
        *((images, labels) if num_classes else (images,)),
        batch_size=r.batch_size,
        generator=batch_generator,
    )
    generator = torch.Generator(device=cfg.device).manual_seed(r.seed + 1)

    def loss_fn(net: nn.Module, batch: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        if r.flip:
            flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return loss(net, x, generator) if y is None else loss(net, x, y, generator)

    path = checkpoint_path(r, cfg, kind)
    result = train_with_recipe(
        cfg, r, model, loss_fn, batches, path,
        compile=compile, checkpoint_every=checkpoint_every, progress=progress,
        desc=f"{kind} on {r.dataset}", generators=(batch_generator, generator),
    )  # fmt: skip
    assert result.ema is not None
    return TrainedImageModel(result.ema.eval(), images, labels, result, path)


def train_with_recipe(
    cfg: Config,
    r: ImageRecipe,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, train.Batch], torch.Tensor],
    next_batch: Callable[[int], train.Batch],
    checkpoint: Path,
    *,
    compile: bool = False,
    checkpoint_every: int = 250,
    progress: bool = True,
    desc: str = "training",
    generators: tuple[torch.Generator, ...] = (),
) -> train.TrainResult:
    """:func:`course_lib.train.train` with the recipe's budget (steps, learning rate,
    warm-up, EMA decay, batch size for the images/s display) and ``cfg``'s bf16 autocast,
    inside a fork of torch's global random stream (CPU and the training GPU), so that
    training leaves the caller's stream as it was."""
    devices = [cfg.device.index or 0] if cfg.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return train.train(
            model,
            loss_fn,
            next_batch,
            steps=r.steps,
            lr=r.lr,
            warmup_steps=r.warmup_steps,
            ema_decay=r.ema_decay,
            amp=cfg.use_amp,
            compile=compile,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            progress=progress,
            desc=desc,
            generators=generators,
            batch_size=r.batch_size,
        )


def train_image_diffusion(
    cfg: Config,
    dataset: str = "mnist",
    r: ImageRecipe | None = None,
    compile: bool = False,
    progress: bool = True,
    checkpoint_every: int = 250,
) -> ImageDiffusion:
    """Train (or resume, or load) the recipe's ``eps``-prediction DDPM on ``dataset``.

    The loss is DDPM's simple loss, :func:`course_lib.ddpm.loss` (Algorithm 1), and the
    loop is the course's one :func:`course_lib.train.train` (through
    :func:`train_image_model`), with EMA weights, atomic checkpoints every
    ``checkpoint_every`` steps, and bf16 autocast + channels-last on CUDA.

    Args:
        cfg: the active config (profile, device, training split).
        dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        r: the recipe (default :func:`recipe` ``(cfg, dataset)``).
        compile: ``torch.compile`` the U-Net (GPU; the first steps then take a minute).
        progress: show the training bar.
        checkpoint_every: save this often, so an interrupted run loses little.
    """
    r = r or recipe(cfg, dataset)
    if r.dataset != dataset:
        raise ValueError(f"recipe is for {r.dataset!r}, not {dataset!r}")
    schedule = schedules.by_name(r.schedule, r.T)
    trained = train_image_model(
        cfg,
        r,
        lambda net, x0, g: ddpm.loss(net, x0, schedule, "eps", g),
        "ddpm",
        compile=compile,
        progress=progress,
        checkpoint_every=checkpoint_every,
    )
    return ImageDiffusion(
        recipe=r,
        model=trained.model,
        schedule=schedule,
        images=trained.images,
        labels=trained.labels,
        result=trained.result,
        checkpoint=trained.checkpoint,
    )
