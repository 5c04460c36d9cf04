"""Chapter 9's CIFAR-10 lab: one U-Net, the objective you pick, on one GPU or many.

The pieces are the course's: chapter 3's U-Net and data set-up
(:func:`course_lib.image_diffusion.training_images`, :func:`~course_lib.image_diffusion.
seeded_unet`), the one training loop (:func:`course_lib.train.train`, which runs as DDP
under ``torchrun``), the three objectives of :mod:`course_lib.objectives`, chapter 5's
table of samplers (:func:`course_lib.sde_figures.nfe_samplers`) and the course's FID
(:mod:`course_lib.evaluate`). What this module adds is the plumbing of a long run:
batches dealt out epoch by epoch across processes (:class:`course_lib.distributed.
EpochBatches`), random numbers that depend only on ``(seed, step)`` so that a run
killed at any moment resumes to the same weights, and sampling sharded across ranks.

The same entry point runs in a notebook (one process) and from the command line::

    python -m course_lib.capstone train --objective eps --profile gpu
    torchrun --nproc_per_node=4 -m course_lib.capstone train --objective eps --profile gpu
    python -m course_lib.capstone sample --objective eps --profile gpu --knob 18
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from course_lib import data as data_module
from course_lib import distributed, evaluate, image_diffusion, objectives, recipes, train
from course_lib import sde_figures as sf
from course_lib.config import Config, get_config
from course_lib.flow_figures import EULER as FLOW_EULER
from course_lib.flow_figures import HEUN as FLOW_HEUN
from course_lib.flow_figures import flow_samplers
from course_lib.image_diffusion import ImageRecipe

#: Chapter 9's budgets, each written as its difference from the CIFAR-10 recipe of
#: chapters 3–6 it starts from (:data:`course_lib.image_diffusion.RECIPES`). ``smoke``
#: takes every code path in seconds; ``cpu`` trains a 0.3M-parameter U-Net for a couple
#: of minutes on two cores (colour blobs with the right statistics, not objects: say so
#: when you show them); ``gpu`` is the course's CIFAR-10 model of chapters 3–6 (10M
#: parameters, about half an hour on one modern GPU). ``ddpm35m`` is DDPM's CIFAR-10
#: configuration (Ho et al. 2020, App. B: 128 channels, multipliers 1, 2, 2, 2, two
#: residual blocks, attention at 16x16, dropout 0.1) built with the course's U-Net —
#: 40.1M parameters, against 35.7M in DDPM's own code — with DDPM's batch, learning
#: rate, warm-up and EMA, trained for a budget you choose (``--steps``; DDPM trained it
#: for 800k steps).
_COURSE = {p: image_diffusion.RECIPES[("cifar10", p)] for p in ("smoke", "cpu", "gpu")}
RECIPES: dict[str, ImageRecipe] = {
    "smoke": replace(_COURSE["smoke"], steps=6, batch_size=16),
    "cpu": replace(
        _COURSE["cpu"],
        n_images=5000,
        base_channels=16,
        dropout=0.0,
        steps=800,
        batch_size=32,
        lr=2e-3,
        warmup_steps=50,
    ),
    "gpu": _COURSE["gpu"],
    "ddpm35m": replace(
        _COURSE["gpu"], base_channels=128, steps=800_000, warmup_steps=5000, ema_decay=0.9999
    ),
}


#: Published CIFAR-10 budgets to read a run against: ``(what, hardware and time, result)``
#: (``../shared/PUBLISHED_NUMBERS.md``; FID protocols differ, see each paper).
PUBLISHED_BUDGETS: tuple[tuple[str, str, str], ...] = (
    (
        "DDPM, 35.7M U-Net, 800k steps at batch 128",
        "TPU v3-8, about 10.6 h (21 steps/s: about 2,700 images/s)",
        "Inception FID 3.17 (50k samples, 1000 steps; Ho et al. 2020, Table 1)",
    ),
    (
        "EDM (DDPM++ VP), 200M images at batch 512",
        "8 V100s, about 2 days",
        "Inception FID 1.97 unconditional at 35 NFE (min over 3 sets of 50k; Karras et al. 2022)",
    ),
    (
        "OT-CFM (torchcfm's recipe), 400k iterations at batch 128",
        "one RTX 4090 about 19 h, one V100 about 60 h (users' reports)",
        "Inception FID 3.5 with dopri5, against the train split (Tong et al. 2023, README)",
    ),
)


def recipe(cfg: Config, name: str | None = None, **overrides: object) -> ImageRecipe:
    """Chapter 9's recipe ``name`` (default: ``cfg``'s profile), with field overrides
    (``steps=...`` to train longer: a new checkpoint)."""
    name = name or cfg.profile
    if name not in RECIPES:
        raise ValueError(f"no chapter-9 recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return recipes.override(RECIPES[name], **overrides)


def checkpoint_path(cfg: Config, r: ImageRecipe, objective: str) -> Path:
    """``<data root>/checkpoints/cifar-<objective>-<split>-<recipe hash>.pt``: the same
    file whatever the number of processes, so a run can resume with another count."""
    objectives.get(objective)  # an unknown objective fails here, before any work
    name = f"cifar-{objective}-{cfg.train_split}-{recipes.key(r)}.pt"
    return data_module.data_root() / "checkpoints" / name


@dataclass
class Capstone:
    """A trained chapter-9 model and what the lab needs around it.

    Attributes:
        recipe: the :class:`~course_lib.image_diffusion.ImageRecipe`.
        objective: the :class:`~course_lib.objectives.Objective` it was trained with.
        model: the EMA network, eval mode (``net(x, c)``: the objective says what ``c``
            and the output are; use :meth:`denoiser`, :meth:`samplers`).
        images: the training images in ``[-1, 1]`` on the device; ``labels`` theirs.
        result: the :class:`~course_lib.train.TrainResult` (loss of every step).
        checkpoint: the checkpoint file.
    """

    recipe: ImageRecipe
    objective: objectives.Objective
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    result: train.TrainResult
    checkpoint: Path

    @property
    def parameters(self) -> int:
        """The network's number of parameters."""
        return sum(p.numel() for p in self.model.parameters())

    def denoiser(self) -> objectives.edm.Denoiser:
        """EDM's ``D(x̂; σ)`` of the trained network (:meth:`Objective.denoiser`)."""
        return self.objective.denoiser(self.model)

    def samplers(self) -> dict[str, sf.NFESampler]:
        """Every sampler of chapters 3–6 on this one network (:func:`samplers`)."""
        return samplers(self.objective, self.model)


def samplers(objective: objectives.Objective, net: nn.Module) -> dict[str, sf.NFESampler]:
    """``name -> (knob, z, generator) -> SampleResult`` for one trained network: chapter
    5's table (:func:`course_lib.sde_figures.nfe_samplers`: EDM Euler and Heun, RK4,
    dopri5, PC, DDIM, ancestral DDPM) on the objective's denoiser and ``ε``-model,
    ``x0`` clipped to ``[-1, 1]`` for DDIM and DDPM as in chapters 3–5, plus, for a
    flow, its own Euler and Heun in flow time (:func:`course_lib.flow_figures.
    flow_samplers`)."""
    table = sf.nfe_samplers(
        objective.denoiser(net),
        objective.eps_model(net),
        objective.schedule,
        objective.sigma_min,
        objective.sigma_max,
        clip_x0=1.0,
    )
    velocity = objective.velocity(net)
    if velocity is not None:
        own = flow_samplers(velocity, objective.path)
        table = {"flow, Euler": own[FLOW_EULER], "flow, Heun": own[FLOW_HEUN], **table}
    return table


def train_capstone(
    cfg: Config,
    objective: str = "eps",
    r: ImageRecipe | None = None,
    dist: distributed.Dist | None = None,
    compile: bool = False,
    progress: bool = True,
    checkpoint_every: int = 100,
    checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> Capstone:
    """Train (or resume, or load) chapter 9's U-Net on CIFAR-10 with ``objective``.

    One process or several (``dist`` from :func:`course_lib.distributed.from_env`, under
    ``torchrun``): the global batch ``r.batch_size`` is split over the processes
    (:class:`course_lib.distributed.EpochBatches`); every random number of step ``k``
    (flips, times or noise levels, noise: :func:`course_lib.objectives.draw`; dropout:
    torch's generator reseeded by ``(seed, k, rank)``) depends on ``(seed, k)`` only.
    Hence, for a recipe without dropout, a run takes the same steps with 1 or ``W``
    processes up to the rounding of the gradient all-reduce (dropout masks are drawn
    per process, so with dropout ``W`` processes run the same recipe, not the same
    bits); a checkpoint resumes with any process count; and a killed run resumes to
    the weights of an uninterrupted one (bit for bit on the CPU; on a GPU, bf16 and
    cuDNN's nondeterministic kernels make it close, not bitwise). Rank 0 writes the
    checkpoint (atomically) every ``checkpoint_every`` steps and at the end; on CUDA the
    loop runs in bf16 autocast on channels-last tensors, ``compile=True`` adds
    ``torch.compile``.

    ``dtype=torch.float64`` trains in double precision: slow, but it shows that ``W``
    processes take the one-process steps to about ``1e-12``. In float32 the first Adam
    steps amplify the all-reduce's rounding: Adam's first update ``-lr·g/(|g| + ε)`` is
    about ``-lr·sign(g)`` whatever ``|g|`` is, and in the zero-initialised convolutions
    (the output layer, each residual branch's second convolution) the first gradients
    are sums of nearly cancelling terms whose sign a change in summation order can
    flip (measured: ``6e-4`` after four steps in float32).
    """
    r = r or recipe(cfg)
    obj = objectives.get(objective, r.T, r.schedule)
    dist = dist or distributed.Dist(device=cfg.device)
    if dist.device != cfg.device:
        cfg = replace(cfg, device=dist.device)
    images, labels = image_diffusion.training_images(cfg, r)
    images = images.to(dtype)
    model = image_diffusion.seeded_unet(cfg, r, images.shape[1]).to(dtype)
    batches = distributed.EpochBatches(
        images.shape[0], r.batch_size, r.seed, dist.rank, dist.world_size
    )
    shape = tuple(images.shape[1:])
    channels_last = cfg.device.type == "cuda"

    def next_batch(step: int) -> tuple[torch.Tensor, objectives.Draws]:
        # dropout draws from torch's generator (forked by train_with_recipe, so the
        # caller's stream is untouched): make it a function of (seed, step, rank)
        torch.manual_seed((r.seed * 7919 + step) * 64 + dist.rank)
        d = objectives.draw(
            r.seed, step, r.batch_size, shape, dist.rank, dist.world_size, cfg.device
        )
        x = images[batches(step).to(images.device)]
        if r.flip:
            x = torch.where(d.flip[:, None, None, None], x.flip(3), x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, d

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, objectives.Draws]) -> torch.Tensor:
        return obj.loss(net, *batch)

    path = Path(checkpoint) if checkpoint is not None else checkpoint_path(cfg, r, objective)
    result = image_diffusion.train_with_recipe(
        cfg, r, model, loss_fn, next_batch, path,
        compile=compile, checkpoint_every=checkpoint_every, progress=progress and dist.is_main,
        desc=f"{objective} on CIFAR-10" + (f" ({dist.world_size} processes)" * dist.active),
    )  # fmt: skip
    assert result.ema is not None
    return Capstone(r, obj, result.ema.eval(), images, labels, result, path)


@torch.no_grad()
def denoising_error(
    denoiser: objectives.edm.Denoiser,
    x0: torch.Tensor,
    sigmas: Sequence[float],
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """The denoiser's mean squared error per element at each noise level,

    ``e(σ) = E ||D(x0 + σ ε; σ) - x0||² / D``, estimated on the images ``x0``,

    the one yardstick every objective shares: whatever a network was trained to predict,
    samplers consume its denoiser, and the loss of each objective is a weighting of
    ``e(σ)`` over σ (EDM eq. 2 and 8; chapter 6's ``λ_t``). Two reference levels: ``0``
    at ``σ -> 0`` for a perfect denoiser, and the data's variance per element (the error
    of predicting the mean image) at ``σ -> ∞``. The noise comes from a generator
    seeded by ``seed``, the same for every level. Returns a float64 tensor ``(len(sigmas),)``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g).to(x0)
    errors = []
    for sigma in sigmas:
        total = 0.0
        for start in range(0, x0.shape[0], batch_size):
            x, z = x0[start : start + batch_size], noise[start : start + batch_size]
            d = denoiser(x + sigma * z, float(sigma))
            total += float((d.double() - x.double()).pow(2).sum())
        errors.append(total / x0.numel())
    return torch.tensor(errors, dtype=torch.float64)


@torch.no_grad()
def sample(
    sampler: sf.NFESampler,
    knob: int,
    n: int,
    shape: tuple[int, ...],
    seed: int = 0,
    dist: distributed.Dist | None = None,
    batch_size: int = 500,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` samples (on the CPU) from ``sampler`` at ``knob``, drawn in batches of at
    most ``batch_size``, sharded over the processes of ``dist``: rank ``r`` draws
    batches ``r, r + W, ...``, each from its own seed ``seed + 1000 b``, and the
    batches are gathered in order, so the samples do not depend on the process count."""
    dist = dist or distributed.Dist()
    n_batches = math.ceil(n / batch_size)
    per_rank = math.ceil(n_batches / dist.world_size)
    mine = []
    for j in range(per_rank):
        b = dist.rank + j * dist.world_size
        z_gen = torch.Generator().manual_seed(seed + 1000 * b)
        z = torch.randn((batch_size, *shape), generator=z_gen).to(dist.device, dtype)
        g = torch.Generator(device=dist.device).manual_seed(seed + 1000 * b + 1)
        x = sampler(knob, z, g).x if b < n_batches else torch.zeros_like(z)
        mine.append(x)
    local = torch.stack(mine)  # (per_rank, batch, ...): equal shapes on every rank
    gathered = distributed.all_gather_rows(local[None])  # (W, per_rank, batch, ...)
    # gathered[r, j] is batch r + j W: reorder to batch order
    ordered = gathered.transpose(0, 1).reshape(-1, *shape)
    return ordered[:n].float().cpu()


def sharded_fid(
    evaluator: evaluate.Evaluator, x: torch.Tensor, dist: distributed.Dist | None = None
) -> float:
    """The course's FID of samples ``x`` that every process holds (:func:`sample`
    gathers them), with the feature extraction split over the processes: rank ``r``
    takes rows ``r, r + W, ...``, the features are gathered (padded to equal shapes,
    then trimmed) and the Fréchet distance to the evaluator's reference statistics is
    computed from all of them, so the number does not depend on ``W``."""
    dist = dist or distributed.Dist()
    n, w = x.shape[0], dist.world_size
    padded = torch.cat([x, x[: (-n) % w]]) if n % w else x
    mine = evaluator.features(padded[dist.rank :: w].clamp(-1, 1))
    gathered = distributed.all_gather_rows(mine.to(dist.device)[None]).cpu()  # (W, n/W, F)
    features = gathered.transpose(0, 1).reshape(-1, gathered.shape[-1])[:n]  # row order
    mu, cov = evaluate.gaussian_stats(features)
    return evaluate.frechet_distance(mu, cov, evaluator.ref_mu, evaluator.ref_cov)


# ------------------------------------------------------- several processes, checked
def cli_command(args: Sequence[str], processes: int = 1, port: int | None = None) -> list[str]:
    """The command line that runs this module's CLI with ``args`` as one process, or as
    ``processes`` processes under ``torchrun`` on this machine (loopback address)."""
    if processes == 1:
        return [sys.executable, "-m", "course_lib.capstone", *args]
    if port is None:
        with socket.socket() as s:  # a free port for the processes to meet on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={port}",
        "-m", "course_lib.capstone", *args,
    ]  # fmt: skip


def run_cli(
    args: Sequence[str], processes: int = 1, env: dict[str, str] | None = None
) -> dict[str, object]:
    """Run the CLI (``train`` prints a JSON report on its last line: returned as a dict)
    and raise a ``RuntimeError`` with the tail of its error output if it fails."""
    out = subprocess.run(
        cli_command(args, processes), env={**os.environ, **(env or {})},
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} with {processes} process(es) failed:\n{out.stderr[-3000:]}"
        )
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    return json.loads(last) if last.startswith("{") else {"output": out.stdout}


def max_weight_difference(a: str | Path, b: str | Path) -> float:
    """``max |w_a - w_b|`` over the weights and EMA weights of two checkpoints."""
    states = [torch.load(p, map_location="cpu", weights_only=False) for p in (a, b)]
    flat = [
        {f"{part}.{k}": v for part in ("model", "ema") for k, v in st[part].items()}
        for st in states
    ]
    if flat[0].keys() != flat[1].keys():
        raise ValueError(f"{a} and {b} hold different networks")
    return max(float((flat[0][k].double() - flat[1][k].double()).abs().max()) for k in flat[0])


# -------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_lib.capstone",
        description="Chapter 9: train and sample a CIFAR-10 model, in one process or "
        "under torchrun --nproc_per_node=N.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "sample"):
        s = sub.add_parser(name)
        s.add_argument("--objective", choices=objectives.NAMES, default="eps")
        s.add_argument("--profile", default=None, help="smoke, cpu or gpu (COURSE_PROFILE)")
        s.add_argument("--recipe", choices=sorted(RECIPES), default=None)
        s.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
        s.add_argument("--checkpoint", default=None, help="checkpoint file (default: by hash)")
        s.add_argument(
            "--float64", action="store_true", help="double precision (to check DDP exactly)"
        )
    t = sub.choices["train"]
    t.add_argument("--compile", action="store_true", help="torch.compile the U-Net (GPU)")
    t.add_argument("--checkpoint-every", type=int, default=500)
    s = sub.choices["sample"]
    s.add_argument("--sampler", default="EDM Heun")
    s.add_argument(
        "--knob",
        type=int,
        default=18,
        help="the sampler's knob: steps for the Euler, Heun, DDIM, DDPM and PC samplers "
        "(EDM Heun with N steps costs 2N - 1 NFE), k for dopri5's tolerance 10^-k",
    )
    s.add_argument("-n", type=int, default=1000, help="number of samples")
    s.add_argument("--batch-size", type=int, default=500, help="samples per sampler call")
    s.add_argument("--out", default="samples.pt", help="where rank 0 saves the samples")
    s.add_argument("--fid", action="store_true", help="rank 0 prints the course's FID")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = get_config(args.profile)
    dist = distributed.from_env()
    try:
        overrides = {"steps": args.steps} if args.steps else {}
        r = recipe(cfg, args.recipe, **overrides)
        if args.command == "train":
            cap = train_capstone(
                cfg, args.objective, r, dist, compile=args.compile,
                checkpoint_every=args.checkpoint_every, checkpoint=args.checkpoint,
                dtype=torch.float64 if args.float64 else torch.float32,
            )  # fmt: skip
            if dist.is_main:
                res = cap.result
                report = {
                    "objective": args.objective,
                    "steps": res.steps,
                    "resumed_at": res.resumed_at,
                    "processes": dist.world_size,
                    "images_per_second": res.steps_per_second * r.batch_size,
                    "final_loss": sum(res.losses[-50:]) / max(1, len(res.losses[-50:])),
                    "checkpoint": str(cap.checkpoint),
                }
                print(json.dumps(report))
        else:
            path = Path(args.checkpoint or checkpoint_path(cfg, r, args.objective))
            if not path.is_file() or torch.load(path, weights_only=False)["step"] < r.steps:
                raise FileNotFoundError(
                    f"no finished checkpoint at {path}: train it first with the same options "
                    f"(python -m course_lib.capstone train --objective {args.objective} ...)."
                )
            dtype = torch.float64 if args.float64 else torch.float32
            cap = train_capstone(
                cfg, args.objective, r, dist, progress=False, checkpoint=path, dtype=dtype
            )
            table = cap.samplers()
            if args.sampler not in table:
                raise ValueError(
                    f"unknown sampler {args.sampler!r}; choose one of {', '.join(table)}"
                )
            shape = tuple(cap.images.shape[1:])
            x = sample(table[args.sampler], args.knob, args.n, shape, dist=dist,
                       batch_size=args.batch_size, dtype=dtype)  # fmt: skip
            if dist.is_main:
                torch.save(x, args.out)
                print(f"{x.shape[0]} samples ({args.sampler}, knob {args.knob}) -> {args.out}")
            if args.fid:  # every rank extracts the features of its share
                evaluator = evaluate.course_evaluator(cfg, "cifar10")
                fid = sharded_fid(evaluator, x, dist)
                if dist.is_main:
                    print(
                        f"course classifier-feature FID {fid:.4f}: {x.shape[0]} samples "
                        f"against the {cfg.train_split} split, seed 0"
                    )
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
