"""Chapter 3's measurements and figures: the plain, tested functions behind its plots.

* :func:`snr_crossing`: the first step at which a schedule's signal-to-noise ratio
  falls below a level (the chapter's "predict before you run" exercise);
* :func:`schedule_curves`: ``alpha_bar_t`` and ``log SNR_t`` of several schedules side by
  side;
* :func:`forward_panel`: the forward process ``q(x_t | x0)`` at step ``t`` on a few
  digits and on a 2D toy (the widget's update function);
* :func:`posterior_by_regression`: a Monte Carlo check of the posterior
  ``q(x_{t-1} | x_t, x0)``, found by linear regression of ``x_{t-1}`` on ``x_t``;
* :func:`loss_weight_figure`: the weight of eq. 12 that the simple loss drops, over ``t``;
* :func:`reverse_kernel_figure`: the exact reverse kernel ``q(x_s | x_t)`` of a
  Gaussian-mixture twin for a short and a long stride (why Gaussian steps must be small);
* :func:`predicted_x0_along` and :func:`reverse_strip`: the reverse process of an image
  model, ``x_t`` beside the network's guess of ``x0`` at several steps;
* :func:`bound_breakdown` and :func:`bits_per_step`: the variational bound of
  :func:`course_lib.ddpm.elbo_terms` in bits per dimension, term by term;
* :func:`nearest_figure`: samples beside their nearest training images.

The mathematics lives in :mod:`course_lib.ddpm` and :mod:`course_lib.schedules`; this
module only runs it and draws what it gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from course_lib import ddpm, evaluate, plotting, schedules, toys
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import SampleResult
from course_lib.schedules import DiscreteSchedule


# ------------------------------------------------------------------ schedules
def snr_crossing(schedule: DiscreteSchedule, level: float = 1.0) -> int:
    """The first step ``t`` with ``snr_t = alpha_bar_t / (1 - alpha_bar_t) < level``.

    For ``level = 1`` it is the step where noise starts to outweigh signal
    (``alpha_bar_t < 1/2``). Raises if the schedule never gets there.
    """
    below = (schedule.snr < level).nonzero()
    if below.numel() == 0:
        raise ValueError(f"the SNR of {schedule!r} never falls below {level}")
    return int(below[0])


def schedule_curves(named: dict[str, DiscreteSchedule], t_mark: int | None = None) -> Figure:
    """Two panels: ``alpha_bar_t`` (the fraction of signal *variance* left) and
    ``log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t))`` against ``t / T`` for each
    schedule in ``named``; an optional vertical line at step ``t_mark / T``."""
    fig, (left, right) = plotting.figure_row(2, size=4.2)
    for name, sched in named.items():
        tt = torch.arange(sched.T + 1, dtype=torch.float64) / sched.T
        left.plot(tt, sched.alpha_bar, label=f"{name} (T = {sched.T})")
        right.plot(tt[1:], sched.log_snr[1:], label=name)
    for ax in (left, right):
        if t_mark is not None:
            ax.axvline(t_mark / max(s.T for s in named.values()), color="k", ls=":", lw=0.8)
        ax.set_xlabel("t / T")
        ax.legend(fontsize=8)
    left.set(title=r"$\bar\alpha_t$: signal variance left", ylabel=r"$\bar\alpha_t$")
    right.axhline(0.0, color=plotting.COLORS["data"], ls="--", lw=0.8)
    right.set(title=r"log-SNR $\log\,\bar\alpha_t/(1-\bar\alpha_t)$", ylabel="log SNR")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ forward process
def forward_panel(
    t: int,
    schedule_name: str = "linear",
    digits: torch.Tensor | None = None,
    toy: str = "moons",
    n: int = 1000,
    T: int = 1000,
    seed: int = 0,
) -> Figure:
    """The widget of chapter 3: ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``
    at step ``t`` of the schedule family ``schedule_name`` (``T`` steps).

    Left: the ``digits`` (``(B, 1, H, W)`` in ``[-1, 1]``; omitted if ``None``), noised.
    Middle: ``n`` points of the 2D ``toy`` (grey) and the same points noised (blue).
    Right: ``alpha_bar`` of the schedule with the current step marked. The noise is the
    same for every ``t`` (fixed ``seed``), so moving the slider shows one path per point.
    """
    sched = schedules.by_name(schedule_name, T)
    if not 0 <= t <= sched.T:
        raise ValueError(f"t must lie in [0, {sched.T}], got {t}")
    g = torch.Generator().manual_seed(seed)
    x0 = toys.sample(toy, n, g)
    xt = ddpm.q_sample(x0, t, sched, torch.randn(x0.shape, generator=g))
    a, s = float(sched.sqrt_alpha_bar[t]), float(sched.sigma[t])
    panels = 3 if digits is not None else 2
    fig, axes = plotting.figure_row(panels, size=3.6)
    k = 0
    if digits is not None:
        eps = torch.randn(digits.shape, generator=g)
        noisy = ddpm.q_sample(digits.float().cpu(), t, sched, eps)
        plotting.image_grid(
            noisy, ax=axes[0], title=f"digits at t = {t}\n√ᾱ = {a:.3f}, √(1-ᾱ) = {s:.3f}"
        )
        k = 1
    plotting.scatter(
        xt,
        data=x0,
        ax=axes[k],
        title=f"{toy} at t = {t} ({schedule_name})",
        label="x_t",
        lim=(-3.5, 3.5),
    )
    tt = torch.arange(sched.T + 1)
    axes[k + 1].plot(tt, sched.alpha_bar, color=plotting.COLORS["model"], label=r"$\bar\alpha_t$")
    axes[k + 1].plot(
        tt, 1 - sched.alpha_bar, color=plotting.COLORS["truth"], label=r"$1-\bar\alpha_t$"
    )
    axes[k + 1].axvline(t, color="k", ls=":", lw=1)
    snr = float(sched.snr[t]) if t > 0 else math.inf
    axes[k + 1].set(
        title=f"{schedule_name} schedule, SNR_t = {snr:.3g}",
        xlabel="step t",
        ylabel="variance share",
        ylim=(-0.02, 1.02),
    )
    axes[k + 1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ posterior
@dataclass(frozen=True)
class PosteriorFit:
    """Least-squares fit ``x_{t-1} ≈ slope * x_t + intercept`` over joint draws, and the
    variance of the residual: for jointly Gaussian ``(x_{t-1}, x_t)`` given ``x0`` the
    conditional mean is exactly linear, so these estimate ``c_t``, ``c_0 x0`` and
    ``beta_tilde_t`` of the posterior."""

    slope: float
    intercept: float
    residual_var: float


def posterior_by_regression(
    x0: float,
    t: int,
    schedule: DiscreteSchedule,
    n: int = 200_000,
    generator: torch.Generator | None = None,
) -> PosteriorFit:
    """Simulate the forward chain from a scalar ``x0`` to ``x_{t-1}`` (in closed form,
    ``q(x_{t-1} | x0)``) and one step further (``x_t = sqrt(alpha_t) x_{t-1} +
    sqrt(beta_t) z``), then regress ``x_{t-1}`` on ``x_t``. No posterior formula is used:
    the result is an independent estimate to hold against :func:`ddpm.q_posterior`."""
    if not 1 <= t <= schedule.T:
        raise ValueError(f"t must lie in [1, {schedule.T}], got {t}")
    ab_prev = float(schedule.alpha_bar[t - 1])
    e1 = torch.randn(n, generator=generator, dtype=torch.float64)
    e2 = torch.randn(n, generator=generator, dtype=torch.float64)
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * e1
    x_t = math.sqrt(float(schedule.alpha[t])) * x_prev + math.sqrt(float(schedule.beta[t])) * e2
    xc, yc = x_t - x_t.mean(), x_prev - x_prev.mean()
    slope = float((xc * yc).sum() / (xc * xc).sum())
    intercept = float(x_prev.mean() - slope * x_t.mean())
    resid = x_prev - (slope * x_t + intercept)
    return PosteriorFit(slope, intercept, float(resid.var()))


# ------------------------------------------------------------ the dropped weight
def loss_weight_figure(schedule: DiscreteSchedule) -> Figure:
    """The weight ``lambda_t`` of eq. 12 (:func:`course_lib.ddpm.loss_weight`) for both
    reverse variances on a log scale, with ``1/(2t)`` for comparison; the simple loss
    replaces it by 1."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    t = torch.arange(1, schedule.T + 1)
    w_beta = ddpm.loss_weight(schedule, "beta")[1:]
    w_tilde = ddpm.loss_weight(schedule, "beta_tilde")[2:]
    ax.plot(t, w_beta, color=plotting.COLORS["model"], label="σ_t² = β_t")
    ax.plot(t[1:], w_tilde, color=plotting.COLORS["truth"], ls="--", label="σ_t² = β̃_t")
    ax.plot(t, 1 / (2 * t.double()), color=plotting.COLORS["data"], ls=":", label="1/(2t)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step t",
        ylabel="weight λ_t",
        title="the weight of eq. 12 that the simple loss drops",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ the exact reverse kernel
@dataclass(frozen=True)
class KernelPanel:
    """One panel of :func:`reverse_kernel_figure`: the kernel ``q(x_s | x_t)``, the
    variance ``beta_stride = 1 - alpha_bar_t / alpha_bar_s`` of DDPM's Gaussian step over
    the stride, and ``mean_density_ratio``: the kernel's density at its own mean over its
    largest density on the panel's grid (near 1 for one bump, near 0 when the mean falls
    between modes)."""

    s: int
    kernel: GaussianMixture
    beta_stride: float
    mean_density_ratio: float


def reverse_kernel_figure(
    gm: GaussianMixture,
    schedule: DiscreteSchedule,
    x_t: torch.Tensor,
    t: int,
    strides: tuple[int, ...] = (1, 200),
    n_grid: int = 150,
) -> tuple[Figure, list[KernelPanel]]:
    """The exact reverse kernel ``q(x_{t-k} | x_t)`` of a 2D Gaussian-mixture twin at one
    point ``x_t``, for each stride ``k`` (:func:`course_lib.ddpm.reverse_kernel`), as a
    heat map around the kernel. On each panel: the kernel's mean (a cross) and the circle
    of radius ``2 sqrt(beta_stride)`` around it, the two-standard-deviation circle of a
    Gaussian step with the exact mean and DDPM's variance for that stride."""
    if gm.dim != 2:
        raise ValueError(f"the figure draws 2D mixtures, got dimension {gm.dim}")
    fig, axes = plotting.figure_row(len(strides), size=4.2)
    panels = []
    for ax, k in zip(axes, strides, strict=True):
        s = t - k
        kernel = ddpm.reverse_kernel(gm, schedule, t, s, x_t)
        mean = kernel.mean()
        half = 4 * float(torch.linalg.eigvalsh(kernel.covariance()).max().sqrt())
        lim_x = (float(mean[0]) - half, float(mean[0]) + half)
        lim_y = (float(mean[1]) - half, float(mean[1]) + half)
        gx = torch.linspace(*lim_x, n_grid, dtype=torch.float64)
        gy = torch.linspace(*lim_y, n_grid, dtype=torch.float64)
        xx, yy = torch.meshgrid(gx, gy, indexing="xy")
        dens = kernel.log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp().reshape(xx.shape)
        ratio = float(kernel.log_prob(mean[None]).exp()[0] / dens.max())
        beta_stride = 1 - float(schedule.alpha_bar[t] / schedule.alpha_bar[s])
        ax.pcolormesh(xx.numpy(), yy.numpy(), dens.numpy(), cmap="Oranges", shading="auto")
        ax.plot(float(mean[0]), float(mean[1]), "x", color=plotting.COLORS["model"], ms=9)
        ax.add_patch(
            plt.Circle(
                (float(mean[0]), float(mean[1])),
                2 * math.sqrt(beta_stride),
                fill=False,
                color=plotting.COLORS["model"],
                ls="--",
            )
        )
        ax.set(
            xlim=lim_x,
            ylim=lim_y,
            aspect="equal",
            title=f"q(x_{s} | x_{t}): {k}-step stride",
        )
        panels.append(KernelPanel(s, kernel, beta_stride, ratio))
    fig.tight_layout()
    return fig, panels


# ------------------------------------------------------------ reverse process
@torch.no_grad()
def predicted_x0_along(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    result: SampleResult,
    schedule: DiscreteSchedule,
    clip_x0: float | None = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The network's estimate ``x0_hat(x_t)`` at every recorded state of an ancestral
    run (``result.trajectory`` ``(S, B, ...)`` with training-grid steps ``result.times``);
    at ``t = 0`` the state itself. Shape ``(S, B, ...)``, on the CPU."""
    if result.trajectory is None or result.times is None:
        raise ValueError("the run kept no trajectory: sample with keep=...")
    out = []
    for x, t in zip(result.trajectory, result.times.tolist(), strict=True):
        t = round(t)
        if t == 0:
            out.append(x.clone())
            continue
        pred = ddpm.predict(model, x.to(device or x.device), t, schedule, clip_x0=clip_x0)
        out.append(pred.x0.cpu())
    return torch.stack(out)


def reverse_strip(
    trajectory: torch.Tensor, x0_hat: torch.Tensor, times: torch.Tensor, n: int = 4
) -> Figure:
    """For ``n`` samples, two rows each: the state ``x_t`` and the predicted ``x0_hat``
    at every recorded step (columns, from ``t = T`` on the left to ``t = 0``)."""
    if trajectory.shape != x0_hat.shape:
        raise ValueError("trajectory and x0_hat must have the same shape (S, B, C, H, W)")
    n = min(n, trajectory.shape[1])
    rows = []
    for i in range(n):
        rows += [trajectory[:, i], x0_hat[:, i]]
    tiles = torch.cat(rows)  # (2 n S, C, H, W), row-major: S tiles per row
    steps = trajectory.shape[0]
    fig, ax = plt.subplots(figsize=(0.75 * steps + 1, 0.8 * 2 * n + 0.8))
    plotting.image_grid(tiles, nrow=steps, ax=ax)
    ticks = [str(round(float(t))) for t in times]
    w = trajectory.shape[-1] + 2
    ax.set_xticks([2 + w * j + w // 2 - 1 for j in range(steps)], ticks, fontsize=8)
    ax.set_yticks(
        [2 + w * r + w // 2 - 1 for r in range(2 * n)],
        ["x_t" if r % 2 == 0 else "x̂0" for r in range(2 * n)],
        fontsize=8,
    )
    ax.set(xlabel="step t", title="reverse process: the state x_t and the predicted x̂0")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------- the bound in bits
def _mean_and_error(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    err = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), err


def bound_breakdown(
    terms: ddpm.ELBOTerms, offset_bits: float = 0.0
) -> dict[str, tuple[float, float]]:
    """The terms of the bound in bits per dimension, each ``(mean, standard error)`` over
    the batch: ``"L_T"`` (prior), ``"sum L_t-1"`` (the ``T - 1`` diffusion terms),
    ``"L_0"`` (decoder) and ``"total"`` (``+ offset_bits``, which the total alone
    carries; see :func:`course_lib.ddpm.nll_bound_bits_per_dim`)."""
    scale = 1.0 / (terms.dim * math.log(2))
    return {
        "L_T": _mean_and_error(terms.prior * scale),
        "sum L_t-1": _mean_and_error(terms.diffusion.sum(1) * scale),
        "L_0": _mean_and_error(terms.decoder * scale),
        "total": _mean_and_error(terms.bits_per_dim(offset_bits)),
    }


def bits_per_step(terms: ddpm.ELBOTerms) -> torch.Tensor:
    """The batch mean of each diffusion term ``L_{t-1}``, ``t = 2 .. T``, in bits per
    dimension: shape ``(T - 1,)``, entry ``j`` is ``t = j + 2``."""
    return terms.diffusion.mean(0) / (terms.dim * math.log(2))


# ---------------------------------------------------------------- memorisation
def nearest_figure(
    samples: torch.Tensor, train_images: torch.Tensor, n: int = 8
) -> tuple[Figure, torch.Tensor]:
    """The first ``n`` samples (top row) above their nearest training images in pixel
    space (bottom row, :func:`course_lib.evaluate.nearest_training_images`). Returns
    the figure and the ``n`` L2 distances."""
    s = samples[:n].detach().float().cpu()
    idx, dist = evaluate.nearest_training_images(s, train_images.detach().cpu())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * s.shape[0] + 1), 2.8))
    plotting.image_grid(
        torch.cat([s, train_images[idx].detach().float().cpu()]),
        nrow=s.shape[0],
        ax=ax,
        title="samples (top) and their nearest training images (bottom)",
    )
    w = s.shape[-1] + 2
    ax.set_xticks(
        [2 + w * j + w // 2 - 1 for j in range(s.shape[0])],
        [f"{float(d):.1f}" for d in dist],
        fontsize=8,
    )
    ax.set_xlabel("L2 distance to the nearest training image (pixels in [-1, 1])")
    fig.tight_layout()
    return fig, dist
