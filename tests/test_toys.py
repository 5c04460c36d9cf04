import pytest
import torch

from course_lib import metrics, toys


@pytest.mark.parametrize("name", toys.NAMES)
def test_toy_shape_scale_and_reproducibility(name):
    x = toys.sample(name, 5000, torch.Generator().manual_seed(0))
    assert x.shape == (5000, 2) and x.dtype == torch.float32
    assert (x.std(0) > 0.6).all() and (x.std(0) < 1.3).all()
    assert x.mean(0).abs().max() < 0.15
    y = toys.sample(name, 5000, torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


@pytest.mark.parametrize("name", toys.NAMES)
def test_twin_is_close_to_its_toy(name):
    """A twin's samples are as close to the toy as the toy's own second sample is, up
    to a small factor (EM with 48 components does not reach the thin structures
    exactly)."""
    n = 1500
    g = torch.Generator().manual_seed(1)
    data = toys.sample(name, n, g)
    floor = sum(metrics.mmd(toys.sample(name, n, g), data) for _ in range(3)) / 3
    twin = metrics.mmd(toys.twin(name).sample(n, g), data)
    assert twin < 4 * floor, (twin, floor)
    # the test has power: the same toy stretched by 30% is clearly told apart
    assert metrics.mmd(1.3 * toys.sample(name, n, g), data) > 4 * floor


def test_gaussians8_twin_is_exact():
    gm = toys.twin("gaussians8")
    assert gm.n_components == 8
    assert torch.allclose(gm.weights, torch.full((8,), 1 / 8, dtype=torch.float64))


def test_unknown_toy_lists_names():
    with pytest.raises(ValueError, match="moons"):
        toys.sample("banana", 10)
    with pytest.raises(ValueError, match="positive"):
        toys.sample("moons", 0)
