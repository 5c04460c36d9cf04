"""Figures of the course, with one colour code in every chapter.

Data are grey, model samples blue, the exact truth orange (``COLORS``). Every function
draws into a given ``ax`` (or makes one), sets a title and axis labels, and returns the
``Axes`` so that a chapter can add to it. :func:`animate` returns an HTML/JavaScript
animation that plays in a notebook and in the book without a video codec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import animation
from matplotlib.axes import Axes
from matplotlib.figure import Figure

COLORS = {"data": "#7f7f7f", "model": "#1f77b4", "truth": "#ff7f0e", "init": "#2ca02c"}
LIMITS = (-3.0, 3.0)  # the toys are scaled to unit standard deviation


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _axes(ax: Axes | None, size: float = 4.0) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size))
    return ax


def _frame(ax: Axes, title: str, lim: tuple[float, float] = LIMITS) -> Axes:
    ax.set(xlim=lim, ylim=lim, title=title, xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
    return ax


def scatter(
    samples: torch.Tensor | np.ndarray,
    data: torch.Tensor | np.ndarray | None = None,
    ax: Axes | None = None,
    title: str = "samples",
    label: str = "model",
    kind: str = "model",
    lim: tuple[float, float] = LIMITS,
    s: float = 2.0,
) -> Axes:
    """Samples (``kind`` picks the colour) over the data in grey."""
    ax = _axes(ax)
    if data is not None:
        d = _np(data)
        ax.scatter(d[:, 0], d[:, 1], s=s, c=COLORS["data"], alpha=0.3, label="data")
    x = _np(samples)
    ax.scatter(x[:, 0], x[:, 1], s=s, c=COLORS[kind], alpha=0.6, label=label)
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    return _frame(ax, title, lim)


def grid_points(
    lim: tuple[float, float] = LIMITS, n: int = 100
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """An ``n x n`` grid over ``lim^2``: points ``(n*n, 2)`` and the mesh ``X, Y``."""
    g = np.linspace(*lim, n)
    xx, yy = np.meshgrid(g, g)
    pts = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1)).float()
    return pts, xx, yy


def density(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    ax: Axes | None = None,
    title: str = "density",
    lim: tuple[float, float] = LIMITS,
    n: int = 150,
    log: bool = False,
    cmap: str = "Oranges",
) -> Axes:
    """Heat map of ``exp(log_prob)`` (or of ``log_prob`` with ``log=True``) on a grid."""
    ax = _axes(ax)
    pts, xx, yy = grid_points(lim, n)
    with torch.no_grad():
        lp = _np(log_prob(pts)).reshape(xx.shape)
    z = lp if log else np.exp(lp)
    mesh = ax.pcolormesh(xx, yy, z, cmap=cmap, shading="auto")
    plt.colorbar(mesh, ax=ax, fraction=0.046, label="log density" if log else "density")
    return _frame(ax, title, lim)


def vector_field(
    field: Callable[[torch.Tensor], torch.Tensor],
    ax: Axes | None = None,
    title: str = "vector field",
    lim: tuple[float, float] = LIMITS,
    n: int = 20,
    kind: str = "model",
    stream: bool = False,
    normalize: bool = True,
) -> Axes:
    """A 2D vector field (a score or a velocity) as arrows (``quiver``) or streamlines.

    With ``normalize`` the arrows show direction only, coloured by magnitude: scores
    grow without bound far from the data and would otherwise hide everything else.
    """
    ax = _axes(ax)
    pts, xx, yy = grid_points(lim, n)
    with torch.no_grad():
        v = _np(field(pts)).reshape(n, n, 2)
    u, w = v[..., 0], v[..., 1]
    mag = np.hypot(u, w)
    if stream:
        ax.streamplot(xx, yy, u, w, color=np.log1p(mag), cmap="viridis", density=1.2)
    else:
        scale = np.where(mag > 0, mag, 1.0) if normalize else 1.0
        ax.quiver(xx, yy, u / scale, w / scale, np.log1p(mag), cmap="viridis", pivot="mid")
    ax.plot([], [], color=COLORS[kind], label=kind)
    return _frame(ax, title, lim)


def trajectories(
    path: torch.Tensor | np.ndarray,
    ax: Axes | None = None,
    title: str = "trajectories",
    n: int = 50,
    lim: tuple[float, float] = LIMITS,
) -> Axes:
    """Paths of ``n`` particles from a trajectory of shape ``(S, B, 2)``: start green,
    end blue."""
    ax = _axes(ax)
    p = _np(path)[:, :n]
    ax.plot(p[:, :, 0], p[:, :, 1], color="k", alpha=0.25, lw=0.7)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=6, c=COLORS["init"], label="start")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=6, c=COLORS["model"], label="end")
    ax.legend(loc="upper right", fontsize=8)
    return _frame(ax, title, lim)


def image_grid(
    images: torch.Tensor,
    nrow: int | None = None,
    ax: Axes | None = None,
    title: str = "",
    padding: int = 2,
) -> Axes:
    """A grid of images ``(B, C, H, W)``: floats in ``[-1, 1]`` or ``uint8``."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float().clamp(-1, 1) + 1) / 2
    b, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(b)))
    ncol = int(np.ceil(b / nrow))
    canvas = torch.ones(c, ncol * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(b):  # at most a few hundred tiles: a loop over tiles is clearer here
        r, q = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        canvas[:, top : top + h, left : left + w] = x[i]
    img = canvas.permute(1, 2, 0).numpy()
    ax = _axes(ax, size=max(3.0, nrow * 0.6))
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set(title=title, xticks=[], yticks=[])
    return ax


def loss_curve(
    losses: Sequence[float], ax: Axes | None = None, title: str = "training loss", window: int = 50
) -> Axes:
    """Loss per step and its moving average, log-scaled."""
    from course_lib.train import moving_average

    ax = _axes(ax)
    ax.plot(losses, color=COLORS["data"], alpha=0.4, lw=0.7, label="per step")
    ax.plot(moving_average(losses, window), color=COLORS["model"], label=f"mean of {window}")
    ax.set(title=title, xlabel="step", ylabel="loss", yscale="log")
    ax.legend(fontsize=8)
    return ax


def animate(
    frames: torch.Tensor | np.ndarray,
    data: torch.Tensor | np.ndarray | None = None,
    times: Sequence[float] | None = None,
    title: str = "",
    max_frames: int = 60,
    lim: tuple[float, float] = LIMITS,
    interval: int = 80,
) -> str:
    """An animation of 2D point clouds ``(S, B, 2)`` as self-contained HTML/JS
    (``FuncAnimation.to_jshtml``), at most ``max_frames`` frames so the book stays light.

    Display it with ``IPython.display.HTML(animate(...))``.
    """
    f = _np(frames)
    idx = np.unique(np.linspace(0, len(f) - 1, min(max_frames, len(f))).round().astype(int))
    fig, ax = plt.subplots(figsize=(4, 4))
    if data is not None:
        d = _np(data)
        ax.scatter(d[:, 0], d[:, 1], s=2, c=COLORS["data"], alpha=0.2)
    pts = ax.scatter(f[0, :, 0], f[0, :, 1], s=3, c=COLORS["model"])
    _frame(ax, title, lim)

    def update(k: int) -> tuple:
        pts.set_offsets(f[idx[k]])
        label = f"{title}  step {idx[k]}" if times is None else f"{title}  t = {times[idx[k]]:.3f}"
        ax.set_title(label)
        return (pts,)

    anim = animation.FuncAnimation(fig, update, frames=len(idx), interval=interval, blit=True)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return html


def figure_row(n: int, size: float = 3.6) -> tuple[Figure, np.ndarray]:
    """``n`` square panels side by side."""
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    return fig, axes[0]


def noised_panel(name: str, s: float, n: int = 2000, seed: int = 0) -> Figure:
    """Chapter 0's interactive view: the toy ``name`` noised to level ``s`` with
    ``a = sqrt(1 - s^2)`` (variance preserving), i.e. ``x_t = a x0 + s eps``.

    Left: noised samples over the exact noised density of the toy's Gaussian-mixture
    twin. Right: the exact noised score field ``grad log p_t``. This is the plain
    function behind the chapter's widget.
    """
    from course_lib import toys

    if not 0.0 <= s < 1.0:
        raise ValueError(f"noise level s must be in [0, 1) so that a = sqrt(1 - s^2) > 0, got {s}")
    a = (1.0 - s**2) ** 0.5
    g = torch.Generator().manual_seed(seed)
    x0 = toys.sample(name, n, g)
    xt = a * x0 + s * torch.randn(x0.shape, generator=g)
    noised = toys.twin(name).noised(a, s)
    fig, (left, right) = figure_row(2)
    density(noised.log_prob, ax=left, title=f"{name}: p_t and samples, s = {s:.2f}")
    left.scatter(xt[:, 0], xt[:, 1], s=1.5, c=COLORS["model"], alpha=0.5, label="a x0 + s eps")
    left.legend(loc="upper right", markerscale=4, fontsize=8)
    vector_field(noised.score, ax=right, title="exact score of p_t", kind="truth")
    fig.tight_layout()
    return fig
