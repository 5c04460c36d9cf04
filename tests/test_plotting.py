import matplotlib

matplotlib.use("Agg")
import re

import matplotlib.pyplot as plt
import pytest
import torch

from course_lib import plotting, toys


def teardown_function():
    plt.close("all")


def test_scatter_density_field_trajectories_have_titles_and_labels():
    x = torch.randn(100, 2)
    gm = toys.twin("gaussians8")
    for ax in [
        plotting.scatter(x, data=x, title="s"),
        plotting.density(gm.log_prob, title="d", n=20),
        plotting.vector_field(gm.score, title="v", n=8),
        plotting.vector_field(gm.score, title="v", n=8, stream=True),
        plotting.trajectories(torch.randn(5, 10, 2), title="t"),
    ]:
        assert ax.get_title() and ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$"


def test_image_grid_layout():
    imgs = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    imgs[5] = 255
    ax = plotting.image_grid(imgs, nrow=3, padding=1)
    data = ax.images[0].get_array()
    assert data.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert data[1 + 5, 1 + 2 * 5] == 1.0 and data[1, 1] == 0.0  # last tile white
    with pytest.raises(ValueError, match="B, 1 or 3"):
        plotting.image_grid(torch.zeros(2, 2, 4, 4))


def test_animation_is_html_js_with_bounded_frames():
    html = plotting.animate(torch.randn(200, 30, 2), max_frames=12, title="a")
    assert "<script" in html and "video" not in html.split("<script")[0]
    assert len(set(re.findall(r"frames\[(\d+)\]", html))) == 12


def test_noised_panel_is_what_the_widget_shows():
    fig = plotting.noised_panel("moons", 0.4, n=200)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("s = 0.40" in t for t in titles) and any("score" in t for t in titles)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        plotting.noised_panel("moons", 1.0)
    with pytest.raises(ValueError, match="Valid names"):
        plotting.noised_panel("banana", 0.2)


def test_loss_curve():
    ax = plotting.loss_curve([1.0, 0.5, 0.25, 0.2], window=2)
    assert ax.get_yscale() == "log" and len(ax.lines) == 2
