"""The shared trained models: recipes, checkpoints that let chapter 4 reuse chapter 3's
model, and the errors a learner meets when a recipe or checkpoint is wrong."""

import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from course_lib import config, data, image_diffusion, recipes, toy_diffusion, train
from course_lib.unet import UNet


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A fresh data root that sees the real MNIST files (so checkpoints land in tmp)."""
    real = os.environ.get("COURSE_DATA")
    if real and (Path(real) / "mnist").is_dir():
        (tmp_path / "mnist").symlink_to(Path(real, "mnist").resolve())
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    return tmp_path


def smoke():
    return config.get_config("smoke")


def test_every_image_recipe_builds_a_unet_for_its_images():
    sizes = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}
    for (name, profile), r in image_diffusion.RECIPES.items():
        channels, side = sizes[name]
        net = image_diffusion.make_unet(r, channels)
        assert isinstance(net, UNet)
        if profile == "smoke":  # a forward pass on the small ones keeps the test fast
            x = torch.zeros(2, channels, side, side)
            assert net(x, torch.rand(2)).shape == x.shape
        assert r.T == 1000 and r.steps > 0 and 0 < r.ema_decay < 1


def test_recipes_reject_unknown_names_and_fields():
    cfg = smoke()
    with pytest.raises(ValueError, match="No image recipe for 'svhn'"):
        image_diffusion.recipe(cfg, "svhn")
    with pytest.raises(ValueError, match="Unknown recipe fields"):
        image_diffusion.recipe(cfg, "mnist", learning_rate=1e-3)
    with pytest.raises(ValueError, match="Unknown toy 'banana'"):
        toy_diffusion.recipe(cfg, "banana")
    with pytest.raises(ValueError, match="Unknown recipe fields"):
        toy_diffusion.recipe(cfg, "moons", width=3)


def test_recipe_key_changes_with_every_field():
    """A changed recipe must never load another recipe's checkpoint."""
    base = toy_diffusion.recipe(smoke(), "moons")
    changes = {"n_points": 7, "hidden": 8, "depth": 1, "schedule": "cosine", "T": 10,
               "parameterization": "v", "steps": 3, "batch_size": 4, "lr": 0.5,
               "ema_decay": 0.5, "seed": 9}  # fmt: skip
    assert set(changes) == set(asdict(base)) - {"toy"}
    changed = [toy_diffusion.recipe(smoke(), "moons", **{k: v}) for k, v in changes.items()]
    keys = {recipes.key(r) for r in changed}
    assert recipes.key(base) not in keys and len(keys) == len(changes)
    assert recipes.key(image_diffusion.recipe(smoke(), "mnist")) != recipes.key(
        image_diffusion.recipe(smoke(), "mnist", steps=7)
    )


def test_toy_model_is_trained_once_then_loaded(data_root):
    cfg = smoke()
    first = toy_diffusion.train_toy_diffusion(cfg, "moons", progress=False)
    assert first.resumed_at == 0 and first.checkpoint.exists()
    assert first.checkpoint.parent == data_root / "checkpoints"
    assert len(first.result.losses) == first.recipe.steps
    second = toy_diffusion.train_toy_diffusion(cfg, "moons", progress=False)
    assert second.resumed_at == first.recipe.steps
    for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    x = torch.randn(5, 2)
    assert second.model(x, torch.full((5,), 0.5)).shape == (5, 2)


def test_toy_training_lowers_the_loss(data_root):
    """Eps-prediction starts near E||eps||^2 / D = 1 for a net that outputs ~0; a trained
    net must do clearly better (the optimum for moons at small t is far below 1)."""
    cfg = smoke()
    r = toy_diffusion.recipe(cfg, "moons", steps=300)
    run = toy_diffusion.train_toy_diffusion(cfg, "moons", r, progress=False)
    first, last = run.result.losses[:20], run.result.losses[-50:]
    assert sum(last) / len(last) < 0.8 * sum(first) / len(first)


def test_checkpoint_of_another_model_gets_a_clear_error(tmp_path):
    path = tmp_path / "run.pt"
    x = torch.randn(64, 3)

    def fit(model):
        return train.train(
            model, lambda m, b: m(b).pow(2).mean(), lambda s: x, steps=2,
            checkpoint=path, progress=False,
        )  # fmt: skip

    fit(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"(?s)written for a different model.*Delete it"):
        fit(torch.nn.Linear(3, 2))


@pytest.mark.skipif(
    not (Path(os.environ.get("COURSE_DATA", "data")) / "mnist").is_dir(),
    reason="MNIST files not found (see data/README.md)",
)
def test_image_model_trains_checkpoints_and_reloads(data_root):
    cfg = smoke()
    first = image_diffusion.train_image_diffusion(cfg, "mnist", progress=False)
    r = first.recipe
    assert first.trained_now and first.checkpoint.exists()
    assert first.checkpoint.name == f"ddpm-mnist-{cfg.train_split}-{recipes.key(r)}.pt"
    assert first.images.shape == (r.n_images, 1, 28, 28)
    assert -1.0 <= float(first.images.min()) and float(first.images.max()) <= 1.0
    assert first.labels.shape == (r.n_images,)
    assert all(torch.isfinite(torch.tensor(first.result.losses)))
    second = image_diffusion.train_image_diffusion(cfg, "mnist", progress=False)
    assert not second.trained_now and second.resumed_at == r.steps
    x = torch.randn(3, 1, 28, 28)
    t = torch.full((3,), 0.3)
    with torch.no_grad():
        assert torch.equal(first.model(x, t), second.model(x, t))
    with pytest.raises(ValueError, match="recipe is for 'mnist', not 'cifar10'"):
        image_diffusion.train_image_diffusion(cfg, "cifar10", r, progress=False)
    assert data.data_root() == data_root
