"""Chapter 1's figures: learned score fields beside the exact ones, the error by region,
and the plain function behind the chapter's widget.

Every toy has a Gaussian-mixture twin ``gm`` (:func:`course_lib.toys.twin`), so the exact
score of its law noised to level ``σ``, ``∇ log p_σ`` with ``p_σ = p * N(0, σ² I)``, is
``gm.noised_score(x, 1.0, σ)`` (:func:`exact_score`). The functions here train small
score models with the losses of :mod:`course_lib.score_matching` (:func:`score_loss`,
:func:`fit_score`) and put them next to that truth (:func:`score_panel`,
:func:`error_by_density`, :func:`compare_panel`). :func:`denoise_images` runs Tweedie's
denoiser on images for the chapter's MNIST section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from course_lib import plotting, toys, train
from course_lib import score_matching as sm
from course_lib.gaussian_mixture import GaussianMixture

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

# The losses the widget can pick, with the label its figures use.
LOSSES: dict[str, str] = {
    "explicit": "explicit SM (needs the true score)",
    "implicit": "implicit SM, exact trace",
    "implicit-hutchinson": "implicit SM, Hutchinson trace",
    "sliced": "sliced SM",
    "sliced-vr": "sliced SM, variance reduced",
    "denoising": "denoising SM",
}


# --------------------------------------------------------------------------- models
class ToyScoreNet(nn.Module):
    """A small MLP for 2D scores, called as ``net(x, c)``: ``MLP([x, c])``.

    The conditioning input ``c`` (a noise level's ``log(σ)/4``, see
    :class:`~course_lib.score_matching.NoiseConditionalScore`) is simply concatenated to
    ``x``. That is enough for a handful of noise levels in two dimensions and costs a
    third of :class:`course_lib.nets.MLP` with its time embedding, which matters when a
    widget trains a model while the learner waits.

    Args:
        dim: data dimension ``D``.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.f = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.f(torch.cat([x, c[:, None]], dim=1))  # (B, D)


class Unconditional(nn.Module):
    """A score of the clean data, ``s(x) = net(x, 0)``: no noise level, one field."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, x.new_zeros(x.shape[0]))


def exact_score(gm: GaussianMixture, sigma: float = 0.0) -> ScoreFn:
    """The exact ``∇ log p_σ`` of ``gm`` noised to ``σ`` (``σ = 0``: the clean score)."""
    return lambda x: gm.noised_score(x, 1.0, sigma)


def at_sigma(model: nn.Module, sigma: float) -> ScoreFn:
    """A noise-conditional ``s(x, σ)`` read at one level, as a plain ``s(x)``."""
    return lambda x: model(x, sigma)


# --------------------------------------------------------------------------- training
def score_loss(
    loss: str,
    gm: GaussianMixture,
    sigma: float,
    generator: torch.Generator | None = None,
) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """``loss_fn(model, x)`` for :func:`course_lib.train.train` that teaches a
    noise-conditional ``model(x, σ)`` the score of ``p_σ`` from clean samples ``x ~ gm``.

    Denoising SM noises ``x`` itself. Every other loss is given noisy samples
    ``x̃ = x + σ ε``, i.e. samples of ``p_σ``, and learns ``∇ log p_σ`` from them; explicit
    SM is also given the exact ``∇ log p_σ(x̃)``. So every loss has the same target and
    the widget compares like with like.

    Args:
        loss: a key of :data:`LOSSES`.
        gm: the data law.
        sigma: the noise level, ``> 0``.
        generator: for the noise and the random probes.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    target = exact_score(gm, sigma)

    def loss_fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if loss == "denoising":
            return sm.denoising_score_matching(model, x, sigma, generator)
        eps = torch.randn(x.shape, generator=generator).to(x)
        x_tilde = x + sigma * eps  # a sample of p_σ
        s = at_sigma(model, sigma)
        if loss == "explicit":
            return sm.explicit_score_matching(s, x_tilde, target)
        if loss in ("implicit", "implicit-hutchinson"):
            estimator = "exact" if loss == "implicit" else "hutchinson"
            return sm.implicit_score_matching(s, x_tilde, estimator, generator=generator)
        return sm.sliced_score_matching(
            s, x_tilde, variance_reduced=loss == "sliced-vr", generator=generator
        )

    return loss_fn


def fit_score(
    gm: GaussianMixture,
    loss: str,
    sigma: float,
    steps: int = 300,
    n_data: int = 4096,
    batch_size: int = 256,
    hidden: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> train.TrainResult:
    """Train a small ``NoiseConditionalScore(ToyScoreNet)`` on ``n_data`` samples of
    ``gm`` with :func:`score_loss` at one level ``σ``; the widget's quick fit."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the net's initial weights
    model = sm.NoiseConditionalScore(ToyScoreNet(gm.dim, hidden=hidden, depth=2))
    data = gm.sample(n_data, g)
    return train.train(
        model,
        score_loss(loss, gm, sigma, g),
        train.random_batches(data, batch_size=batch_size, generator=g),
        steps=steps,
        lr=lr,
        progress=progress,
        desc=loss,
    )


# --------------------------------------------------------------------------- errors
def relative_error(score_fn: ScoreFn, true_fn: ScoreFn, x: torch.Tensor) -> float:
    """``E‖s(x) − s*(x)‖² / E‖s*(x)‖²`` over the points ``x``: 0 for the exact score, 1
    for the zero field. Over samples of ``p`` the numerator is twice the Fisher
    divergence, so this is the explicit SM loss in units of the score's own size."""
    with torch.no_grad():
        s, s_true = score_fn(x).double(), true_fn(x).double()
    return float(((s - s_true) ** 2).sum(1).mean() / (s_true**2).sum(1).mean())


def score_scale(gm: GaussianMixture, sigma: float = 0.0, n: int = 4000, seed: int = 0) -> float:
    """The typical size of the exact score, ``sqrt(E_{p_σ} ‖∇log p_σ‖²)``, from ``n``
    exact samples of ``p_σ``: the unit the error maps are measured in."""
    x = gm.noised(1.0, sigma).sample(n, torch.Generator().manual_seed(seed))
    return float(gm.noised_score(x, 1.0, sigma).double().pow(2).sum(1).mean().sqrt())


def error_by_density(
    score_fn: ScoreFn,
    gm: GaussianMixture,
    sigma: float = 0.0,
    lim: tuple[float, float] = plotting.LIMITS,
    n: int = 60,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """On an ``n x n`` grid over ``lim²``: ``log p_σ(x)`` and the error
    ``‖s(x) − ∇log p_σ(x)‖ / scale``, each of shape ``(n²,)``.

    ``scale`` defaults to :func:`score_scale`, so an error of 1 is as large as a typical
    score on the data, and the mean of the squared error over samples of ``p_σ`` is
    :func:`relative_error`. (Dividing by ``‖∇log p_σ(x)‖`` point by point instead would
    blow up at the modes, where the exact score is zero.)
    """
    scale = score_scale(gm, sigma) if scale is None else scale
    pts, _, _ = plotting.grid_points(lim, n)
    with torch.no_grad():
        s = score_fn(pts).double()
    s_true = gm.noised_score(pts, 1.0, sigma).double()
    log_p = gm.noised_log_prob(pts, 1.0, sigma).double()
    return log_p, (s - s_true).norm(dim=1) / scale


def binned_median(
    x: torch.Tensor, y: torch.Tensor, bins: int = 12, min_count: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Medians of ``y`` in ``bins`` equal-width bins of ``x`` (bins with fewer than
    ``min_count`` points are dropped): the bin centres and the medians."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    edges = np.linspace(xs.min(), xs.max(), bins + 1)
    which = np.clip(np.digitize(xs, edges) - 1, 0, bins - 1)
    centres, medians = [], []
    for b in range(bins):
        sel = which == b
        if sel.sum() >= min_count:
            centres.append(0.5 * (edges[b] + edges[b + 1]))
            medians.append(float(np.median(ys[sel])))
    return np.array(centres), np.array(medians)


def plot_error_vs_density(
    curves: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ax: Axes | None = None,
    title: str = "score error by region",
    floor: float = -15.0,
) -> Axes:
    """One line per model: the median score error against the log density (from
    :func:`error_by_density`). Log densities below ``floor`` are clipped to it, so the
    leftmost bin holds every point far from the data."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.8))
    for label, (log_p, err) in curves.items():
        c, m = binned_median(log_p.clamp_min(floor), err)
        ax.plot(c, m, marker="o", ms=3, label=label)
    ax.axhline(1.0, color=plotting.COLORS["data"], ls="--", lw=1, label="size of a typical score")
    ax.set(
        title=title,
        xlabel=f"log density of the point (clipped at {floor:g})",
        ylabel="median ‖s − s*‖ / typical ‖s*‖",
        yscale="log",
    )
    ax.legend(fontsize=7)
    return ax


def score_panel(
    score_fn: ScoreFn,
    true_fn: ScoreFn,
    scale: float,
    ax: Axes | None = None,
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    title: str = "learned vs exact score",
    lim: tuple[float, float] = plotting.LIMITS,
    n_arrows: int = 15,
    n_grid: int = 80,
) -> Axes:
    """A learned score against the exact one in one panel.

    Background: the error ``log10 (‖s − s*‖ / scale)`` (white = right, dark red = as
    wrong as a typical score or worse; ``scale`` from :func:`score_scale`); grey lines:
    contours of ``log_prob`` (the density the data come from); arrows: unit-length
    directions of the exact (orange, wide) and learned (blue, thin) fields, so that
    orange shows only where the two disagree.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.4, 4))
    pts, xx, yy = plotting.grid_points(lim, n_grid)
    with torch.no_grad():
        err = (score_fn(pts).double() - true_fn(pts).double()).norm(dim=1) / scale
    mesh = ax.pcolormesh(
        xx,
        yy,
        np.log10(err.clamp_min(1e-6).numpy()).reshape(xx.shape),
        cmap="Reds",
        vmin=-2,
        vmax=0.5,
        shading="auto",
    )
    plt.colorbar(mesh, ax=ax, fraction=0.046, label="log10 error / typical score")
    if log_prob is not None:
        with torch.no_grad():
            lp = log_prob(pts).double().numpy().reshape(xx.shape)
        levels = np.linspace(lp.max() - 8, lp.max(), 5)
        ax.contour(xx, yy, lp, levels=levels, colors="grey", linestyles="solid", linewidths=0.8)
    arrows, ax_x, ax_y = plotting.grid_points(lim, n_arrows)
    with torch.no_grad():
        for fn, kind, width in ((true_fn, "truth", 0.011), (score_fn, "model", 0.005)):
            v = fn(arrows).double()
            v = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
            ax.quiver(
                ax_x,
                ax_y,
                v[:, 0].reshape(ax_x.shape),
                v[:, 1].reshape(ax_x.shape),
                color=plotting.COLORS[kind],
                pivot="mid",
                scale=n_arrows * 1.6,
                width=width,
                label="learned" if kind == "model" else "exact",
            )
    ax.legend(loc="lower right", fontsize=7)
    ax.set(xlim=lim, ylim=lim, title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    return ax


@dataclass(frozen=True)
class GradientNoise:
    """What :func:`gradient_noise` returns.

    Attributes:
        loss_mean: mean of the loss values over the draws.
        loss_std: their standard deviation.
        grad_mean: the mean gradient, flattened, ``(P,)``.
        grad_var: ``E‖g − ḡ‖²``, the total variance of the gradient over the draws.
    """

    loss_mean: float
    loss_std: float
    grad_mean: torch.Tensor
    grad_var: float


def gradient_noise(
    loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], repeats: int = 30
) -> GradientNoise:
    """Draw a random loss ``repeats`` times (same model, same batch, new random probes or
    noise inside ``loss_fn``) and measure how much its value and its gradient with respect
    to ``params`` vary: the noise that stochastic training has to average out."""
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats}")
    params = list(params)
    values, grads = [], []
    for _ in range(repeats):
        loss = loss_fn()
        g = torch.autograd.grad(loss, params, allow_unused=True)
        flat = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params, strict=True)]
        grads.append(torch.cat([gi.reshape(-1) for gi in flat]).double())
        values.append(float(loss.detach()))
    stacked = torch.stack(grads)  # (repeats, P)
    mean = stacked.mean(0)
    v = torch.tensor(values, dtype=torch.float64)
    return GradientNoise(
        loss_mean=float(v.mean()),
        loss_std=float(v.std()) if repeats > 1 else 0.0,
        grad_mean=mean,
        grad_var=float((stacked - mean).pow(2).sum(1).mean()),
    )


# --------------------------------------------------------------------------- widget
@lru_cache(maxsize=64)
def _cached_fit(name: str, loss: str, sigma: float, steps: int, seed: int) -> nn.Module:
    return fit_score(toys.twin(name), loss, sigma, steps=steps, seed=seed).model


def compare_panel(
    name: str = "moons",
    loss: str = "denoising",
    sigma: float = 0.2,
    steps: int = 300,
    seed: int = 0,
    pretrained: Mapping[str, tuple[str, nn.Module]] | None = None,
    n_eval: int = 2000,
    n_grid: int = 80,
) -> Figure:
    """The chapter's widget: learn ``∇ log p_σ`` of toy ``name`` with one loss and draw
    it against the exact field.

    ``loss`` is a key of :data:`LOSSES`, trained here with :func:`fit_score` (cached, so
    a setting seen before redraws at once), or a key of ``pretrained``, whose value is
    ``(toy, model)``: a noise-conditional ``model(x, σ)`` trained elsewhere on that toy
    (e.g. the chapter's multi-noise model), read at ``σ``.

    Left: the exact field of ``p_σ`` over its density. Middle: :func:`score_panel`.
    Right: :func:`plot_error_vs_density`. The title gives the relative error on
    ``n_eval`` samples of ``p_σ``; ``n_grid`` is the resolution of the error map.
    """
    gm = toys.twin(name)
    if pretrained is not None and loss in pretrained:
        toy, model = pretrained[loss]
        if toy != name:
            raise ValueError(f"{loss!r} was trained on {toy!r}: pick that data set to see it")
        label = loss
    else:
        model, label = _cached_fit(name, loss, float(sigma), int(steps), int(seed)), LOSSES[loss]
    learned, truth = at_sigma(model, sigma), exact_score(gm, sigma)
    noised = gm.noised(1.0, sigma)
    x_eval = noised.sample(n_eval, torch.Generator().manual_seed(seed + 1))
    rel = relative_error(learned, truth, x_eval)
    scale = score_scale(gm, sigma)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    plotting.density(noised.log_prob, ax=axes[0], title=f"exact ∇log p_σ, σ = {sigma:g}")
    plotting.vector_field(truth, ax=axes[0], title=f"exact ∇log p_σ, σ = {sigma:g}", n=16)
    score_panel(
        learned, truth, scale, ax=axes[1], log_prob=noised.log_prob, title=label, n_grid=n_grid
    )
    plot_error_vs_density(
        {label: error_by_density(learned, gm, sigma, n=max(10, n_grid // 2), scale=scale)},
        ax=axes[2],
        title="error by region",
    )
    fig.suptitle(f"{name}: relative error on samples of p_σ = {rel:.3f}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Denoised:
    """What :func:`denoise_images` returns, per noise level ``sigmas[i]``.

    Attributes:
        sigmas: the levels, ``(L,)``.
        noisy: ``x̃ = x + σ ε``, ``(L, B, C, H, W)``.
        denoised: Tweedie's ``x̃ + σ² s(x̃, σ)``, same shape.
        mse_noisy: mean squared error per pixel of ``x̃`` (about ``σ²``), ``(L,)``.
        mse_denoised: the same for the denoised images, ``(L,)``.
    """

    sigmas: torch.Tensor
    noisy: torch.Tensor
    denoised: torch.Tensor
    mse_noisy: torch.Tensor
    mse_denoised: torch.Tensor

    def psnr(self, mse: torch.Tensor) -> torch.Tensor:
        """Peak signal-to-noise ratio in dB for images in ``[-1, 1]`` (peak-to-peak 2)."""
        return 10 * torch.log10(4.0 / mse)


def denoise_images(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Denoised:
    """Noise the clean images ``x`` at every level and denoise them with
    :func:`course_lib.score_matching.tweedie_denoiser` (one noise draw per level)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    noisy, denoised = [], []
    with torch.no_grad():
        for sigma in sigmas.tolist():
            eps = torch.randn(x.shape, generator=generator).to(x)
            x_tilde = x + sigma * eps
            out = [
                sm.tweedie_denoiser(score_fn, chunk, sigma) for chunk in x_tilde.split(batch_size)
            ]
            noisy.append(x_tilde)
            denoised.append(torch.cat(out))
    noisy_t, denoised_t = torch.stack(noisy), torch.stack(denoised)
    dims = tuple(range(1, noisy_t.ndim))
    return Denoised(
        sigmas=sigmas,
        noisy=noisy_t,
        denoised=denoised_t,
        mse_noisy=((noisy_t - x) ** 2).mean(dims).cpu(),
        mse_denoised=((denoised_t - x) ** 2).mean(dims).cpu(),
    )


def plot_denoised(result: Denoised, clean: torch.Tensor, n: int = 8, title: str = "") -> Figure:
    """One row of clean images, then for each level a row of noisy and a row of
    Tweedie-denoised images, with the MSE of each row in its label."""
    rows = [("clean", clean[:n])]
    for i, sigma in enumerate(result.sigmas.tolist()):
        rows.append((f"noisy σ={sigma:g}\nMSE {result.mse_noisy[i]:.3f}", result.noisy[i, :n]))
        rows.append(
            (f"Tweedie σ={sigma:g}\nMSE {result.mse_denoised[i]:.3f}", result.denoised[i, :n])
        )
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.9, len(rows) * 1.0))
    for ax, (label, images) in zip(np.atleast_1d(axes), rows, strict=True):
        plotting.image_grid(images.clamp(-1, 1), nrow=n, ax=ax)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = [
    "LOSSES",
    "Denoised",
    "GradientNoise",
    "ToyScoreNet",
    "Unconditional",
    "at_sigma",
    "binned_median",
    "compare_panel",
    "denoise_images",
    "error_by_density",
    "exact_score",
    "fit_score",
    "gradient_noise",
    "plot_denoised",
    "plot_error_vs_density",
    "relative_error",
    "score_loss",
    "score_panel",
    "score_scale",
]
