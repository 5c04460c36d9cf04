"""The image flow shares chapter 3's recipe and set-up and differs only in its loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from course_lib import config, image_diffusion, image_flow, recipes
from course_lib import flow_matching as fm


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    real = os.environ.get("COURSE_DATA")
    if real and (Path(real) / "mnist").is_dir():
        (tmp_path / "mnist").symlink_to(Path(real, "mnist").resolve())
    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    return tmp_path


@pytest.mark.skipif(
    not (Path(os.environ.get("COURSE_DATA", "data")) / "mnist").is_dir(),
    reason="MNIST files not found (see data/README.md)",
)
def test_image_flow_trains_beside_the_diffusion_model_and_reloads(data_root):
    cfg = config.get_config("smoke")
    flow = image_flow.train_image_flow(cfg, "mnist", progress=False)
    r = flow.recipe
    assert r == image_diffusion.recipe(cfg, "mnist")  # the same budget as chapter 3
    assert flow.checkpoint.name == f"flow-linear-mnist-{cfg.train_split}-{recipes.key(r)}.pt"
    assert all(torch.isfinite(torch.tensor(flow.result.losses)))
    again = image_flow.train_image_flow(cfg, "mnist", progress=False)
    assert again.resumed_at == r.steps
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(flow.velocity(x, torch.tensor(0.4)), again.velocity(x, 0.4))
        samples = fm.sample(flow.velocity, x, 3, "euler")
    assert samples.nfe == 3 and samples.x.shape == x.shape
    # the diffusion model keeps its own checkpoint: the two never overwrite each other
    ddpm = image_diffusion.train_image_diffusion(cfg, "mnist", progress=False)
    assert ddpm.checkpoint != flow.checkpoint and ddpm.checkpoint.exists()
    with pytest.raises(ValueError, match="Unknown path"):
        image_flow.train_image_flow(cfg, "mnist", path="bent", progress=False)


@pytest.mark.skipif(
    not (Path(os.environ.get("COURSE_DATA", "data")) / "mnist").is_dir(),
    reason="MNIST files not found (see data/README.md)",
)
def test_conditional_image_flow_takes_labels_and_guides(data_root):
    """The conditional U-Net sees its labels (predictions differ by label), the null label
    is its unconditional branch, and the guided velocity is (1 + w) v_y − w v_∅."""
    cfg = config.get_config("smoke")
    flow = image_flow.train_conditional_image_flow(cfg, "mnist", progress=False)
    assert flow.num_classes == 10 and "cond0.2" in flow.checkpoint.name
    assert flow.checkpoint != image_flow.train_image_flow(cfg, "mnist", progress=False).checkpoint
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        v = {y: flow.model(x, t, torch.full((3,), y)) for y in (0, 7, 10)}
        assert not torch.allclose(v[0], v[7])
        torch.testing.assert_close(flow.velocity(x, t), v[10])  # no label = the null label
        torch.testing.assert_close(flow.guided(7, 2.0)(x, t), 3 * v[7] - 2 * v[10])
        assert fm.sample(flow.guided(3, 1.0), x, 2, "euler").x.shape == x.shape
    with pytest.raises(ValueError, match="p_uncond"):
        image_flow.train_conditional_image_flow(cfg, "mnist", p_uncond=1.0, progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        image_flow.train_image_flow(cfg, "mnist", progress=False).guided(1, 1.0)
