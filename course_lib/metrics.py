"""Sample-quality measures for low-dimensional samples (the 2D toys).

All three compare two sets of samples ``x`` (B1, D) and ``y`` (B2, D) and are zero
when the two laws are equal:

* :func:`mmd`: maximum mean discrepancy with a Gaussian (RBF) kernel (Gretton et al.
  2012), bandwidth by the median heuristic;
* :func:`energy_distance` (Székely & Rizzo 2013);
* :func:`sliced_wasserstein`: the 2-Wasserstein distance averaged over random 1D
  projections (Rabin et al. 2011; Bonneel et al. 2015).

Even two independent samples of the *same* law give a positive value (the "floor"),
which shrinks like ``1/n``; :func:`floor` measures it, so a result can be read as "close
to what two samples of the truth give". Image metrics (Fréchet distances on classifier
features) live in :mod:`course_lib.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"expected samples of shapes (B1, D) and (B2, D), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("samples contain NaN or inf: the sampler diverged")
    return x.detach().double().cpu(), y.detach().double().cpu()


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median heuristic: the median pairwise distance in the pooled sample."""
    z = torch.cat(_pair(x, y))
    if z.shape[0] > 2000:  # the median of a random subset is as good and far cheaper
        z = z[torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[:2000]]
    d = torch.cdist(z, z)
    return float(d[torch.triu_indices(*d.shape, offset=1).unbind()].median())


def mmd(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None, unbiased: bool = False
) -> float:
    """Squared MMD with the kernel ``k(a, b) = exp(-||a - b||^2 / (2 h^2))``:

    ``MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)``.

    The default (biased, V-statistic) estimate is always >= 0 and has a positive floor
    for two samples of one law; ``unbiased=True`` drops the diagonal terms, so its mean
    is exactly ``MMD^2`` (it can be slightly negative).

    Args:
        x, y: samples (B1, D), (B2, D); keep B below ~10,000 (the kernel matrix is B^2).
        bandwidth: ``h``; default :func:`median_bandwidth`.
        unbiased: U-statistic instead of V-statistic.
    """
    x, y = _pair(x, y)
    h = bandwidth if bandwidth is not None else median_bandwidth(x, y)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor, same: bool) -> torch.Tensor:
        k = torch.exp(-(torch.cdist(a, b) ** 2) / (2 * h**2))
        if same and unbiased:
            n = a.shape[0]
            return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
        return k.mean()

    return float(kernel_mean(x, x, True) + kernel_mean(y, y, True) - 2 * kernel_mean(x, y, False))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """``E(X, Y) = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` (V-statistic).

    In 1D it equals ``2 * integral (F_x - F_y)^2 dt`` for the empirical CDFs, which
    the tests use as an independent check.
    """
    x, y = _pair(x, y)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, p: int = 2) -> torch.Tensor:
    """``W_p`` between 1D empirical laws along the last axis, by matching quantiles.

    For equal sizes this is ``(mean |sort(u) - sort(v)|^p)^(1/p)``; otherwise both
    quantile functions are evaluated on a common grid.
    """
    u, v = u.sort(-1).values, v.sort(-1).values
    if u.shape[-1] != v.shape[-1]:
        n = max(u.shape[-1], v.shape[-1])
        q = (torch.arange(n, dtype=u.dtype) + 0.5) / n
        u = torch.quantile(u, q, dim=-1, interpolation="lower").movedim(0, -1)
        v = torch.quantile(v, q, dim=-1, interpolation="lower").movedim(0, -1)
    return ((u - v).abs() ** p).mean(-1) ** (1 / p)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """``SW_2(x, y) = sqrt(E_theta W_2^2(theta . x, theta . y))`` over directions
    ``theta`` uniform on the unit sphere. For ``N(0, I)`` vs ``N(delta, I)`` in ``D``
    dimensions it is ``||delta|| / sqrt(D)``."""
    x, y = _pair(x, y)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=x.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    w = wasserstein_1d((x @ theta).T, (y @ theta).T, p=2)  # (n_projections,)
    return float(torch.sqrt((w**2).mean()))


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "mmd": mmd,
    "energy": energy_distance,
    "sliced_w2": sliced_wasserstein,
}


def compare(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """All three measures between samples ``x`` and reference samples ``y``."""
    return {name: fn(x, y) for name, fn in METRICS.items()}


def floor(sample: Callable[[int], torch.Tensor], n: int, repeats: int = 3) -> dict[str, float]:
    """The value each measure takes between two independent samples of size ``n`` of the
    same law (averaged over ``repeats``): what a perfect sampler would score."""
    runs = [compare(sample(n), sample(n)) for _ in range(repeats)]
    return {k: sum(r[k] for r in runs) / repeats for k in runs[0]}


def gaussian_mmd2(delta: float, dim: int, bandwidth: float) -> float:
    """Closed-form RBF ``MMD^2`` between ``N(0, I)`` and ``N(delta e_1, I)`` in ``dim``
    dimensions: ``2 (h^2/(h^2+2))^(D/2) (1 - exp(-delta^2 / (2 (h^2 + 2))))``."""
    h2 = bandwidth**2
    return 2 * (h2 / (h2 + 2)) ** (dim / 2) * (1 - math.exp(-(delta**2) / (2 * (h2 + 2))))
