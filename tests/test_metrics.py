import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from course_lib import metrics


def gaussians(n, delta, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y[:, 0] += delta
    return x, y


def test_mmd_unbiased_matches_closed_form():
    """Averaged over independent draws, the unbiased estimate equals the closed form."""
    h, delta = 1.5, 1.0
    est = [
        metrics.mmd(*gaussians(800, delta, seed=s), bandwidth=h, unbiased=True) for s in range(8)
    ]
    want = metrics.gaussian_mmd2(delta, 2, h)
    se = np.std(est) / math.sqrt(len(est))
    assert abs(np.mean(est) - want) < 4 * se + 1e-4


def test_mmd_identical_laws_near_zero_and_grows_with_shift():
    same = metrics.mmd(*gaussians(1000, 0.0), unbiased=True)
    assert abs(same) < 3e-3
    values = [metrics.mmd(*gaussians(1000, d)) for d in (0.25, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]


def test_energy_distance_equals_cdf_integral_in_1d():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, generator=g), torch.randn(200, 1, generator=g) + 0.7
    grid = torch.cat([x, y]).flatten().double().sort().values
    fx = (x.double().flatten()[None] <= grid[:, None]).double().mean(1)
    fy = (y.double().flatten()[None] <= grid[:, None]).double().mean(1)
    integral = 2 * ((fx - fy)[:-1] ** 2 * grid.diff()).sum()
    assert metrics.energy_distance(x, y) == pytest.approx(integral.item(), rel=1e-9)


def test_energy_distance_of_point_masses():
    assert metrics.energy_distance(torch.zeros(5, 2), torch.ones(5, 2)) == pytest.approx(
        2 * math.sqrt(2)
    )


def test_wasserstein_1d_matches_scipy():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(500, generator=g), torch.rand(500, generator=g) * 3
    assert metrics.wasserstein_1d(u, v, p=1).item() == pytest.approx(
        wasserstein_distance(u.numpy(), v.numpy()), rel=1e-5
    )


def test_sliced_wasserstein_closed_form_for_shifted_gaussians():
    """SW_2 between N(0, I) and N(delta, I) in D dims is ||delta|| / sqrt(D)."""
    x, y = gaussians(20_000, 2.0)
    assert metrics.sliced_wasserstein(x, y, n_projections=512) == pytest.approx(
        2 / math.sqrt(2), rel=0.03
    )


def test_compare_floor_and_errors():
    sample = lambda n: torch.randn(n, 2)  # noqa: E731
    fl = metrics.floor(sample, 500)
    assert set(fl) == {"mmd", "energy", "sliced_w2"} and all(v >= 0 for v in fl.values())
    with pytest.raises(ValueError, match="NaN"):
        metrics.mmd(torch.full((3, 2), float("nan")), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shapes"):
        metrics.energy_distance(torch.zeros(3, 2), torch.zeros(3, 3))
