"""Three ways to train one U-Net, and one denoiser that every sampler understands.

Chapter 9 trains the same network with the objective the learner picks:

* ``"eps"``: DDPM's ``ε``-prediction on the linear schedule (chapter 3,
  :func:`course_lib.ddpm.loss`, Ho et al. 2020, eq. 14);
* ``"edm"``: EDM's preconditioned denoiser with log-normal noise levels (chapter 5,
  :func:`course_lib.edm.edm_loss`, Karras et al. 2022, eq. 2, 7, 8 and Table 1);
* ``"flow"``: conditional flow matching on the linear path (chapter 6,
  :func:`course_lib.flow_matching.cfm_loss_at`, Lipman et al. 2023, eq. 9 and 20).

Whatever the objective, :meth:`Objective.denoiser` turns the trained network into EDM's
denoiser ``D(x̂; σ)`` and :meth:`Objective.eps_model` into chapter 3's ``ε̂(x_t, t / T)``:
the two forms :func:`course_lib.sde_figures.nfe_samplers` needs to run every sampler of
chapters 3–5 (ancestral DDPM, DDIM, EDM's Euler and Heun, PC, an adaptive solve).

The random numbers of a training step (flips, times or noise levels, noise) are drawn
for the *global* batch from a generator seeded by ``(seed, step)`` and each process takes
its rows (:func:`draw`): a run is then the same with any number of processes, and after a
restart (:mod:`course_lib.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from course_lib import ddpm, distributed, edm, schedules
from course_lib import flow_matching as fm

NAMES = ("eps", "edm", "flow")


@dataclass(frozen=True)
class Draws:
    """The random numbers of one training step, this process's rows of the global batch.

    Attributes:
        flip: ``(b,)`` bool, mirror the image (CIFAR-10's horizontal flips).
        u: ``(b,)`` uniform on ``[0, 1)``: the DDPM step or the flow time.
        n: ``(b,)`` standard normal: EDM's ``ln σ = P_mean + P_std n``.
        noise: ``(b, C, H, W)`` standard normal: ``ε`` (the flow's ``x0``).
    """

    flip: torch.Tensor
    u: torch.Tensor
    n: torch.Tensor
    noise: torch.Tensor


def draw(
    seed: int,
    step: int,
    global_batch: int,
    image_shape: tuple[int, ...],
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Draws:
    """Draw step ``step``'s random numbers for all ``global_batch`` images from
    :func:`course_lib.distributed.step_generator` on ``device`` and keep this process's
    rows (:func:`course_lib.distributed.shard_rows`). Each process draws the ``W``
    shares and keeps one: a few hundred thousand numbers, next to a U-Net step."""
    g = distributed.step_generator(seed, step, device)
    B = global_batch
    flip = torch.rand(B, generator=g, device=device) < 0.5
    u = torch.rand(B, generator=g, device=device)
    n = torch.randn(B, generator=g, device=device)
    noise = torch.randn((B, *image_shape), generator=g, device=device)
    rows = [distributed.shard_rows(v, rank, world_size) for v in (flip, u, n, noise)]
    return Draws(*rows)


@dataclass(frozen=True)
class Objective:
    """A training objective for ``net(x, c) -> (B, C, H, W)`` and how its trained net
    becomes a denoiser.

    Attributes:
        name: ``"eps"``, ``"edm"`` or ``"flow"``.
        schedule: chapter 3's discrete schedule (the ``eps`` objective trains on it;
            the others are converted to it for DDIM and ancestral sampling).
        sigma_min, sigma_max: the noise levels the denoiser is trustworthy between,
            where samplers start and stop.
    """

    name: str
    schedule: schedules.DiscreteSchedule
    sigma_min: float
    sigma_max: float
    P_mean: float = -1.2  # EDM Table 1
    P_std: float = 1.2  # EDM Table 1
    sigma_data: float = 0.5  # EDM Table 1, images in [-1, 1]

    @property
    def path(self) -> fm.AffinePath:
        """The flow's path (the linear path: rectified flow / I-CFM)."""
        return fm.linear_path()

    def loss(self, net: nn.Module, x0: torch.Tensor, d: Draws) -> torch.Tensor:
        """The objective's mean loss on the images ``x0`` with the step's draws ``d``
        (flips already applied by the caller)."""
        if self.name == "eps":
            T = self.schedule.T
            t = (1 + (d.u * T).long()).clamp(max=T)  # uniform on {1, ..., T}
            return ddpm.loss(net, x0, self.schedule, "eps", t=t, eps=d.noise.to(x0.dtype))
        if self.name == "edm":
            sigma = torch.exp(self.P_mean + self.P_std * d.n)
            denoiser = edm.EDMDenoiser(net, self.sigma_data)
            return edm.edm_loss(
                denoiser, x0, sigma_data=self.sigma_data, sigma=sigma.to(x0.dtype),
                noise=d.noise.to(x0.dtype),
            )  # fmt: skip
        t = self.path.t_max * d.u.to(torch.float64)
        return fm.cfm_loss_at(net, d.noise.to(x0.dtype), x0, t, self.path)

    def denoiser(self, net: nn.Module) -> edm.Denoiser:
        """The trained ``net`` as EDM's ``D(x̂; σ)``: :func:`course_lib.edm.
        denoiser_from_ddpm` (``eps``), :class:`course_lib.edm.EDMDenoiser` (``edm``),
        :func:`course_lib.flow_matching.denoiser_from_velocity` (``flow``)."""
        if self.name == "eps":
            return edm.denoiser_from_ddpm(net, self.schedule)
        if self.name == "edm":
            return edm.EDMDenoiser(net, self.sigma_data)
        return fm.denoiser_from_velocity(_flow_velocity(net), self.path)

    def eps_model(self, net: nn.Module) -> ddpm.Model:
        """The trained ``net`` as chapter 3's ``ε̂(x_t, t / T)`` on :attr:`schedule` (the
        net itself for ``eps``; :func:`course_lib.edm.ddpm_model_from_denoiser`
        otherwise)."""
        if self.name == "eps":
            return net
        return edm.ddpm_model_from_denoiser(self.denoiser(net), self.schedule)

    def velocity(self, net: nn.Module) -> fm.Velocity | None:
        """The flow's own velocity ``v_θ(x, t)`` (``flow`` only; ``None`` otherwise)."""
        return _flow_velocity(net) if self.name == "flow" else None


def _flow_velocity(net: nn.Module) -> fm.Velocity:
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        return net(x, t.to(x.dtype))

    return velocity


def get(name: str, T: int = 1000, schedule: str = "linear") -> Objective:
    """The objective ``name`` (one of :data:`NAMES`) with chapter 3's schedule; its
    noise range is where the denoiser was trained: the schedule's own range for ``eps``
    (:func:`course_lib.edm.sigma_range`), EDM's ``[0.002, 80]`` otherwise."""
    if name not in NAMES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(NAMES)}")
    sched = schedules.by_name(schedule, T)
    if name == "eps":
        lo, hi = edm.sigma_range(sched)
        return Objective(name, sched, 1.001 * lo, min(80.0, hi))
    return Objective(name, sched, 0.002, 80.0)
