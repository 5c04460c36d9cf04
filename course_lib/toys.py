"""The 2D toy data sets of the course, each with a Gaussian-mixture twin.

``toys.sample(name, n)`` draws ``n`` points of a toy; every toy is scaled so that each
coordinate has a standard deviation of about one, the scale the diffusion schedules
assume. ``toys.twin(name)`` returns a :class:`GaussianMixture` close to that toy: built
exactly for ``gaussians8`` (the toy *is* a mixture) and fitted once with scikit-learn for
the others (:func:`fit_twin`), shipped as ``toy_twins.npz`` so that loading it is instant
and deterministic. With a twin, every toy has exact noised scores, denoisers and
log-likelihoods.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch

from course_lib.gaussian_mixture import GaussianMixture

TWIN_FILE = Path(__file__).with_name("toy_twins.npz")
TWIN_COMPONENTS = 48


def _randn(n: int, d: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, d, generator=g)


def _rand(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g)


def _moons(n: int, g: torch.Generator | None) -> torch.Tensor:
    upper = _rand(n, g) < 0.5
    theta = math.pi * _rand(n, g)
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], 1) + 0.06 * _randn(n, 2, g)
    return pts / 0.75


def _circles(n: int, g: torch.Generator | None) -> torch.Tensor:
    radius = torch.where(_rand(n, g) < 0.5, 1.0, 0.5)
    theta = 2 * math.pi * _rand(n, g)
    pts = radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    return (pts + 0.04 * _randn(n, 2, g)) / 0.56


def _swiss_roll(n: int, g: torch.Generator | None) -> torch.Tensor:
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 10
    return (pts + 0.04 * _randn(n, 2, g) - torch.tensor([0.2, 0.0])) / 0.7


def _gaussians8(n: int, g: torch.Generator | None) -> torch.Tensor:
    return _GAUSSIANS8.sample(n, g)


def _checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    x1 = 4 * _rand(n, g) - 2
    x2 = 2 * _rand(n, g) - 2 + 2 * (torch.floor(x1) % 2)  # FFJORD's checkerboard
    return torch.stack([x1, x2], 1) / 1.15


def _pinwheel(n: int, g: torch.Generator | None) -> torch.Tensor:
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25  # FFJORD's pinwheel
    k = torch.randint(arms, (n,), generator=g)
    feats = _randn(n, 2, g) * torch.tensor([radial_std, tangential_std]) + torch.tensor([1.0, 0.0])
    angle = 2 * math.pi * k / arms + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (n, 2, 2)
    return torch.einsum("nij,nj->ni", rot, feats) / 0.75


def _two_spirals(n: int, g: torch.Generator | None) -> torch.Tensor:
    r = torch.sqrt(_rand(n, g)) * 3 * math.pi
    sign = torch.where(_rand(n, g) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * torch.stack([-torch.cos(r) * r, torch.sin(r) * r], 1)
    return (pts + 0.3 * _randn(n, 2, g)) / 5.2


def _rings(n: int, g: torch.Generator | None) -> torch.Tensor:
    radius = (torch.randint(4, (n,), generator=g) + 1).float() / 4  # 0.25 .. 1
    theta = 2 * math.pi * _rand(n, g)
    pts = radius[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    return (pts + 0.02 * _randn(n, 2, g)) / 0.5


_GAUSSIANS8 = GaussianMixture.isotropic(
    torch.full((8,), 1 / 8),
    [[math.cos(2 * math.pi * k / 8) * 1.4, math.sin(2 * math.pi * k / 8) * 1.4] for k in range(8)],
    0.1,
)

_TOYS: dict[str, Callable[[int, torch.Generator | None], torch.Tensor]] = {
    "moons": _moons,
    "circles": _circles,
    "swiss_roll": _swiss_roll,
    "gaussians8": _gaussians8,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "two_spirals": _two_spirals,
    "rings": _rings,
}
NAMES: tuple[str, ...] = tuple(_TOYS)


def check_name(name: str) -> str:
    """Return ``name`` if it is a toy, else raise an error listing the toys."""
    if name not in _TOYS:
        raise ValueError(f"Unknown toy data set {name!r}. Valid names: {', '.join(NAMES)}.")
    return name


def sample(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of the toy ``name``, float32 of shape ``(n, 2)``."""
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    return _TOYS[check_name(name)](n, generator).float()


def fit_twin(
    name: str, n_components: int = TWIN_COMPONENTS, n: int = 100_000, seed: int = 0
) -> GaussianMixture:
    """Fit a full-covariance Gaussian mixture to ``n`` samples of a toy by EM
    (scikit-learn). Used once to build ``toy_twins.npz``; see :func:`twin`."""
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    x = sample(name, n, torch.Generator().manual_seed(seed)).double().numpy()
    gm = SkGaussianMixture(
        n_components, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=500
    ).fit(x)
    return GaussianMixture(
        torch.from_numpy(gm.weights_),
        torch.from_numpy(gm.means_),
        torch.from_numpy(gm.covariances_),
    )


def write_twins(path: Path = TWIN_FILE) -> None:
    """Fit every non-exact twin and save them (``python -m course_lib.toys``)."""
    arrays: dict[str, np.ndarray] = {}
    for name in NAMES:
        if name == "gaussians8":
            continue
        gm = fit_twin(name)
        arrays[f"{name}/weights"] = gm.weights.numpy()
        arrays[f"{name}/means"] = gm.means.numpy()
        arrays[f"{name}/covariances"] = gm.covariances.numpy()
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


@cache
def twin(name: str) -> GaussianMixture:
    """The Gaussian-mixture twin of a toy: exact for ``gaussians8``, a 48-component
    EM fit (shipped with the package) for the others."""
    if check_name(name) == "gaussians8":
        return _GAUSSIANS8
    with np.load(TWIN_FILE) as f:
        return GaussianMixture(
            *(torch.from_numpy(f[f"{name}/{k}"]) for k in ("weights", "means", "covariances"))
        )


if __name__ == "__main__":
    write_twins()
    print(f"wrote {TWIN_FILE}")
