import math
from pathlib import Path

import pytest
import torch

from course_lib import config, data, evaluate


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    """For commuting covariances FD = ||dmu||^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([2.0, 1.0, 0.25])
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, -2.0, 0.5])
    want = 1 + 4 + 0.25 + sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a, b, strict=True))
    got = evaluate.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_distance_non_commuting_matches_scipy():
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(4, 4, generator=g, dtype=torch.float64),
        torch.randn(4, 4, generator=g, dtype=torch.float64),
    )
    c1, c2 = m1 @ m1.T + 0.1 * torch.eye(4), m2 @ m2.T + 0.1 * torch.eye(4)
    want = torch.trace(c1 + c2).item() - 2 * sqrtm((c1 @ c2).numpy()).real.trace()
    assert evaluate.frechet_distance(torch.zeros(4), c1, torch.zeros(4), c2) == pytest.approx(
        want, rel=1e-6
    )


def test_fd_of_samples_is_small_for_same_law_and_grows_with_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20_000, 3, generator=g), torch.randn(20_000, 3, generator=g)
    same = evaluate.frechet_distance(*evaluate.gaussian_stats(x), *evaluate.gaussian_stats(y))
    shifted = evaluate.frechet_distance(
        *evaluate.gaussian_stats(x), *evaluate.gaussian_stats(y + 0.5)
    )
    assert same < 0.01 and shifted == pytest.approx(0.75, abs=0.03)


def test_nearest_training_images_finds_copies():
    g = torch.Generator().manual_seed(2)
    train = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    samples = train[[5, 123, 299]] + 0.01
    idx, dist = evaluate.nearest_training_images(samples, train, batch_size=64)
    assert idx.tolist() == [5, 123, 299] and (dist < 0.1).all()


def test_inception_fid_without_torch_fidelity_says_what_to_do(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch_fidelity":
            raise ImportError("no")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match="classifier-feature FID"):
        evaluate.inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"


@pytest.mark.slow
def test_mnist_evaluator_learns_and_separates_real_from_noise(tmp_path, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip(f"the MNIST test split is not at {SHARED}")
    (tmp_path / "mnist").mkdir()
    for f in SHARED.glob("*.gz"):
        (tmp_path / "mnist" / f.name).symlink_to(f)
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    ev = evaluate.load_evaluator(
        "mnist", "test", steps=250, max_images=2000, batch_size=64, progress=False
    )
    assert ev.accuracy > 0.75  # held-out images; chance is 0.1
    assert (tmp_path / "classifiers" / "mnist-test-250steps-2000.pt").exists()
    real = data.load("mnist", "test").subset(500, torch.Generator().manual_seed(5)).to_float()
    noise = torch.rand(500, 1, 28, 28) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    fid_real, fid_blur, fid_noise = ev.fid(real), ev.fid(blurred), ev.fid(noise)
    assert fid_real < fid_blur < fid_noise
    cached = evaluate.load_evaluator(  # from the cache
        "mnist", "test", steps=250, max_images=2000, progress=False
    )
    assert cached.fid(real) == pytest.approx(fid_real, rel=1e-5)
    assert len(list((tmp_path / "classifiers").iterdir())) == 1


def test_course_evaluator_caches_one_classifier_per_budget(tmp_path, monkeypatch):
    if not SHARED.is_dir():
        pytest.skip(f"the MNIST test split is not at {SHARED}")
    (tmp_path / "mnist").mkdir()
    for f in SHARED.glob("*.gz"):
        (tmp_path / "mnist" / f.name).symlink_to(f)
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    monkeypatch.setenv("COURSE_TRAIN_SPLIT", "test")
    cfg = config.get_config("smoke")
    first = evaluate.course_evaluator(cfg, "mnist")
    assert [p.name for p in (tmp_path / "classifiers").iterdir()] == ["mnist-test-40steps-1000.pt"]
    again = evaluate.course_evaluator(cfg, "mnist")
    x = torch.zeros(4, 1, 28, 28)
    assert torch.equal(first.features(x), again.features(x))
