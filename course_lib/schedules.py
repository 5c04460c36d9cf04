"""Discrete noise schedules: one object per schedule, storing only ``alpha_bar``.

Chapter 3 follows Ho et al. (2020): ``t = 0`` is data, ``t in {1, ..., T}`` are the noise
levels, and

    ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``,   ``eps ~ N(0, I)``.

A schedule is fully described by ``alpha_bar_0 = 1 > alpha_bar_1 > ... > alpha_bar_T > 0``;
everything else is derived from it (DDPM §2):

* ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` and ``alpha_t = 1 - beta_t``, so that
  ``alpha_bar_t = prod_{s <= t} alpha_s``;
* ``sigma = sqrt(1 - alpha_bar_t)`` (:attr:`DiscreteSchedule.sigma`), the noise scale of
  ``x_t``. Only the code name: chapter 3's text writes the noise scale out and keeps
  DDPM's ``sigma_t`` for the reverse-process standard deviation;
* ``beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``, the variance of the
  posterior ``q(x_{t-1} | x_t, x0)`` (DDPM eq. 7);
* ``snr_t = alpha_bar_t / (1 - alpha_bar_t)`` and ``log_snr_t`` (Kingma et al. 2021).

Storing ``alpha_bar`` (not ``beta``) makes respacing trivial: a schedule on a sub-grid
``tau_1 < ... < tau_S`` of the training steps is just ``alpha_bar`` read off on that grid,
with the betas recomputed from it (Nichol & Dhariwal 2021, §4). Each schedule also
remembers which training step each of its entries is (:attr:`DiscreteSchedule.timesteps`)
so that a network trained on the full grid is always called at the right time
``t / T`` (:meth:`DiscreteSchedule.model_time`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False, repr=False)
class DiscreteSchedule:
    """A discrete variance-preserving schedule, ``alpha_bar_t`` for ``t = 0 .. T``.

    All derived quantities are float64 tensors of shape ``(T + 1,)`` indexed by ``t``;
    entry 0 is the data level (``alpha_bar_0 = 1``, ``beta_0 = 0``, ``sigma_0 = 0``).

    Args:
        alpha_bar: ``(T + 1,)``, ``alpha_bar[0] = 1``, strictly decreasing, in ``(0, 1]``.
        timesteps: ``(T + 1,)`` integers, the step on the *training* grid of each entry
            (``timesteps[0] = 0``, strictly increasing). Default ``0 .. T``: the schedule
            is its own training grid. :func:`respace` sets it for sub-grids.
        train_T: number of steps of the training grid (default ``T``); the network is
            called at ``timesteps[t] / train_T``.

    Raises:
        ValueError: ``alpha_bar`` is not 1D, ``alpha_bar_0 != 1``, a value lies outside
            ``(0, 1]``, or it is not strictly decreasing; or ``timesteps`` is invalid.
    """

    alpha_bar: torch.Tensor
    timesteps: torch.Tensor | None = None
    train_T: int | None = None

    def __post_init__(self) -> None:
        ab = torch.as_tensor(self.alpha_bar, dtype=torch.float64).detach().cpu().clone()
        if ab.ndim != 1 or ab.shape[0] < 2:
            raise ValueError(
                f"alpha_bar must have shape (T + 1,) with T >= 1, got {tuple(ab.shape)}"
            )
        if not torch.isfinite(ab).all() or (ab <= 0).any() or (ab > 1).any():
            raise ValueError("every alpha_bar_t must lie in (0, 1]")
        if abs(float(ab[0]) - 1.0) > 1e-12:
            raise ValueError(f"alpha_bar_0 must be 1 (t = 0 is the data), got {float(ab[0])}")
        ab[0] = 1.0
        if not (ab[1:] < ab[:-1]).all():
            t = int((ab[1:] >= ab[:-1]).nonzero()[0]) + 1
            raise ValueError(
                "alpha_bar must be strictly decreasing (every beta_t > 0); "
                f"alpha_bar_{t} = {float(ab[t])} >= alpha_bar_{t - 1} = {float(ab[t - 1])}"
            )
        big_t = ab.shape[0] - 1
        if self.timesteps is None:
            steps = torch.arange(big_t + 1)
        else:
            steps = torch.as_tensor(self.timesteps).detach().cpu().long().clone()
        train_t = int(self.train_T) if self.train_T is not None else int(steps[-1])
        if steps.shape != ab.shape or steps[0] != 0 or not (steps[1:] > steps[:-1]).all():
            raise ValueError(
                "timesteps must have the shape of alpha_bar, start at 0 and increase strictly"
            )
        if train_t < int(steps[-1]):
            raise ValueError(f"train_T = {train_t} is below the last timestep {int(steps[-1])}")
        object.__setattr__(self, "alpha_bar", ab)
        object.__setattr__(self, "timesteps", steps)
        object.__setattr__(self, "train_T", train_t)

    @classmethod
    def from_betas(
        cls, betas: torch.Tensor | Sequence[float], **kwargs: torch.Tensor | int | None
    ) -> DiscreteSchedule:
        """The schedule with ``beta_1 .. beta_T`` (shape ``(T,)``, each in ``(0, 1)``):
        ``alpha_bar_t = prod_{s=1}^t (1 - beta_s)`` (DDPM §2, ``alpha_bar_0 = 1``)."""
        b = torch.as_tensor(betas, dtype=torch.float64)
        if b.ndim != 1 or b.shape[0] < 1:
            raise ValueError(f"betas must have shape (T,), got {tuple(b.shape)}")
        if (b <= 0).any() or (b >= 1).any():
            raise ValueError("every beta_t must lie in (0, 1)")
        return cls(torch.cat([b.new_ones(1), torch.cumprod(1 - b, 0)]), **kwargs)

    # ------------------------------------------------------------ derived values
    @property
    def T(self) -> int:
        """Number of noise levels ``T`` of this schedule (its grid is ``0 .. T``)."""
        return self.alpha_bar.shape[0] - 1

    @property
    def beta(self) -> torch.Tensor:
        """``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}``, with ``beta_0 = 0``."""
        ab = self.alpha_bar
        return torch.cat([ab.new_zeros(1), 1 - ab[1:] / ab[:-1]])

    @property
    def alpha(self) -> torch.Tensor:
        """``alpha_t = 1 - beta_t``; ``cumprod(alpha) == alpha_bar``."""
        ab = self.alpha_bar
        return torch.cat([ab.new_ones(1), ab[1:] / ab[:-1]])

    @property
    def sqrt_alpha_bar(self) -> torch.Tensor:
        """``sqrt(alpha_bar_t)``, the signal scale of ``x_t``."""
        return self.alpha_bar.sqrt()

    @property
    def sigma(self) -> torch.Tensor:
        """``sqrt(1 - alpha_bar_t)``, the noise scale of ``x_t`` (the text writes it out;
        DDPM's ``sigma_t`` is the reverse-process std, ``sigma_t^2 = beta_t`` or
        ``beta_tilde_t``, which no schedule attribute holds)."""
        return (1 - self.alpha_bar).clamp_min(0).sqrt()

    @property
    def beta_tilde(self) -> torch.Tensor:
        """Posterior variance ``beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
        beta_t`` (DDPM eq. 7), with ``beta_tilde_0 = 0``; note ``beta_tilde_1 = 0``."""
        ab = self.alpha_bar
        bt = (1 - ab[:-1]) / (1 - ab[1:]) * self.beta[1:]
        return torch.cat([ab.new_zeros(1), bt])

    @property
    def snr(self) -> torch.Tensor:
        """``snr_t = alpha_bar_t / (1 - alpha_bar_t)`` (``inf`` at ``t = 0``)."""
        return self.alpha_bar / (1 - self.alpha_bar)

    @property
    def log_snr(self) -> torch.Tensor:
        """``log snr_t = log alpha_bar_t - log(1 - alpha_bar_t)``, strictly decreasing."""
        return torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)

    def model_time(self, t: int | torch.Tensor) -> torch.Tensor:
        """The network's time input for step(s) ``t`` of this schedule:
        ``timesteps[t] / train_T`` in ``(0, 1]``, float64."""
        idx = torch.as_tensor(t, dtype=torch.long).cpu()
        return self.timesteps[idx].double() / self.train_T

    def __repr__(self) -> str:
        grid = "" if self.T == self.train_T else f", respaced from train_T={self.train_T}"
        return (
            f"DiscreteSchedule(T={self.T}, alpha_bar_1={float(self.alpha_bar[1]):.6g}, "
            f"alpha_bar_T={float(self.alpha_bar[-1]):.4g}{grid})"
        )


def linear_schedule(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> DiscreteSchedule:
    """DDPM's linear schedule (Ho et al. 2020, §4): ``beta_t`` rises linearly from
    ``beta_1`` to ``beta_T``; for ``T = 1000`` this gives ``alpha_bar_T ~ 4.0e-5``."""
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if not 0 < beta_1 <= beta_T < 1:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got {beta_1}, {beta_T}")
    return DiscreteSchedule.from_betas(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """The cosine schedule of Nichol & Dhariwal (2021), eq. 17:

    ``alpha_bar_t = f(t) / f(0)``,  ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``,

    with ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` clipped at ``max_beta`` (their
    §3.2: it prevents the singularity at ``t = T``, where ``f(T) = 0``) and
    ``alpha_bar`` rebuilt from the clipped betas. The offset ``s`` keeps ``beta_1``
    from being too small near ``t = 0``.
    """
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return DiscreteSchedule.from_betas(betas)


FAMILIES: tuple[str, ...] = ("linear", "cosine")


def by_name(name: str, T: int = 1000) -> DiscreteSchedule:
    """The schedule family ``name`` (:data:`FAMILIES`) with ``T`` steps and the papers'
    default parameters."""
    if name == "linear":
        return linear_schedule(T)
    if name == "cosine":
        return cosine_schedule(T)
    raise ValueError(f"Unknown schedule {name!r}; valid families are {', '.join(FAMILIES)}.")


def respace(
    schedule: DiscreteSchedule, timesteps: torch.Tensor | Sequence[int]
) -> DiscreteSchedule:
    """The sub-schedule on a strided grid ``tau_1 < ... < tau_S`` of ``schedule``'s steps.

    ``alpha_bar'_i = alpha_bar_{tau_i}`` (with ``alpha_bar'_0 = 1``) and the betas are
    recomputed from it, ``beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}``
    (improved DDPM, Nichol & Dhariwal 2021, §4). The marginals ``q(x_{tau_i} | x0)`` are
    unchanged, so a network trained on the full grid serves the sub-grid: step ``i`` is
    called at ``timesteps[tau_i] / train_T``. Used by DDIM and by fewer-step ancestral
    sampling.

    Args:
        schedule: the full (or an already respaced) schedule.
        timesteps: ``(S,)`` strictly increasing integers in ``[1, schedule.T]``, e.g.
            :func:`course_lib.ddim.timesteps`; include ``schedule.T`` to start from the
            same noise level.
    """
    tau = torch.as_tensor(timesteps).detach().cpu()
    if tau.is_floating_point():
        if not torch.equal(tau, tau.round()):
            raise ValueError("timesteps must be integers")
    tau = tau.long()
    if tau.ndim != 1 or tau.shape[0] < 1:
        raise ValueError(f"timesteps must have shape (S,), got {tuple(tau.shape)}")
    if not (tau[1:] > tau[:-1]).all():
        raise ValueError("timesteps must be strictly increasing")
    if tau[0] < 1 or tau[-1] > schedule.T:
        raise ValueError(f"timesteps must lie in [1, {schedule.T}], got {tau.tolist()}")
    idx = torch.cat([tau.new_zeros(1), tau])
    return DiscreteSchedule(
        schedule.alpha_bar[idx], timesteps=schedule.timesteps[idx], train_T=schedule.train_T
    )
