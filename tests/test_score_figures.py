"""Chapter 1's figure helpers: models, the widget's losses, errors against exact scores."""

import matplotlib

matplotlib.use("Agg")
import math

import matplotlib.pyplot as plt
import pytest
import torch

from course_lib import score_figures as sf
from course_lib import score_matching as sm
from course_lib import toys
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.tensors import expand_like


def teardown_function():
    plt.close("all")


@pytest.fixture(scope="module")
def gm():
    return toys.twin("gaussians8")


def exact_model(gm):
    """A noise-conditional 'model' that is the exact score of ``gm`` noised to ``σ``."""
    return lambda x, sigma: gm.noised_score(x, 1.0, sigma)


def test_models_have_the_shape_of_the_data():
    net = sf.ToyScoreNet(2, hidden=16, depth=2)
    x = torch.randn(5, 2)
    assert net(x, torch.zeros(5)).shape == (5, 2)
    assert net(x, 0.3).shape == (5, 2)  # a number is broadcast over the batch
    assert sf.Unconditional(net)(x).shape == (5, 2)
    model = sm.NoiseConditionalScore(net)
    torch.testing.assert_close(sf.at_sigma(model, 0.5)(x), model(x, 0.5))


def test_exact_score_is_the_noised_score(gm):
    x = torch.randn(7, 2)
    torch.testing.assert_close(sf.exact_score(gm)(x), gm.score(x))
    torch.testing.assert_close(sf.exact_score(gm, 0.4)(x), gm.noised_score(x, 1.0, 0.4))


def test_relative_error_of_exact_and_zero_fields(gm):
    x = gm.sample(500, torch.Generator().manual_seed(0))
    assert sf.relative_error(gm.score, gm.score, x) == 0.0
    assert sf.relative_error(torch.zeros_like, gm.score, x) == pytest.approx(1.0)
    assert sf.relative_error(lambda y: 2 * gm.score(y), gm.score, x) == pytest.approx(1.0)


def test_score_scale_is_the_root_mean_square_score():
    # data N(0, I) in 2D noised to σ: p_σ = N(0, (1 + σ²) I), E‖∇log p_σ‖² = 2 / (1 + σ²)
    std_normal = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    for sigma in (0.0, 1.0):
        want = math.sqrt(2 / (1 + sigma**2))
        assert sf.score_scale(std_normal, sigma, n=20_000) == pytest.approx(want, rel=0.03)


def test_error_by_density_is_zero_for_the_exact_score(gm):
    log_p, err = sf.error_by_density(sf.exact_score(gm, 0.3), gm, 0.3, n=12)
    assert log_p.shape == err.shape == (144,)
    assert err.abs().max() < 1e-6
    pts = sf.plotting.grid_points(n=12)[0]
    torch.testing.assert_close(log_p.float(), gm.noised_log_prob(pts, 1.0, 0.3))
    _, err0 = sf.error_by_density(torch.zeros_like, gm, 0.3, n=12, scale=1.0)
    torch.testing.assert_close(err0, gm.noised_score(pts, 1.0, 0.3).double().norm(dim=1))


def test_binned_median():
    x = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0, 1.0])
    y = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    centres, medians = sf.binned_median(x, y, bins=2, min_count=1)
    assert centres.tolist() == pytest.approx([0.25, 0.75])
    assert medians.tolist() == [2.0, 20.0]
    centres, _ = sf.binned_median(x, y, bins=2, min_count=4)
    assert len(centres) == 0


def test_score_loss_rejects_bad_arguments(gm):
    with pytest.raises(ValueError, match="loss must be one of"):
        sf.score_loss("fisher", gm, 0.1)
    with pytest.raises(ValueError, match="sigma must be positive"):
        sf.score_loss("denoising", gm, 0.0)


def test_every_loss_is_finite_and_trains_a_model(gm):
    g = torch.Generator().manual_seed(0)
    model = sm.NoiseConditionalScore(sf.ToyScoreNet(2, hidden=16, depth=2))
    x = gm.sample(64, g)
    for loss in sf.LOSSES:
        value = sf.score_loss(loss, gm, 0.5, g)(model, x)
        assert value.ndim == 0 and torch.isfinite(value)
        grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True)
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads), loss


def test_exact_model_attains_the_known_values(gm):
    """Ground truth: the exact score of p_σ has explicit loss 0, implicit loss
    -½ E‖∇log p_σ‖², and denoising loss equal to dsm_minimum."""
    g = torch.Generator().manual_seed(1)
    sigma, n = 0.5, 20_000
    x = gm.sample(n, g).double()
    model = exact_model(gm)
    assert sf.score_loss("explicit", gm, sigma, g)(model, x).item() == pytest.approx(0, abs=1e-9)
    x_tilde = gm.noised(1.0, sigma).sample(n, g).double()
    c = 0.5 * gm.noised_score(x_tilde, 1.0, sigma).pow(2).sum(1).mean().item()
    ism = sf.score_loss("implicit", gm, sigma, g)(model, x).item()
    assert ism == pytest.approx(-c, rel=0.05)
    dsm = sf.score_loss("denoising", gm, sigma, g)(model, x).item()
    assert dsm == pytest.approx(sm.dsm_minimum(gm, sigma, generator=g), rel=0.03)


def test_fit_score_learns_a_smooth_field(gm):
    result = sf.fit_score(gm, "denoising", 1.0, steps=150, n_data=1024, seed=0)
    x = gm.noised(1.0, 1.0).sample(1000, torch.Generator().manual_seed(3))
    learned = sf.at_sigma(result.model, 1.0)
    assert sf.relative_error(learned, sf.exact_score(gm, 1.0), x) < 0.2
    assert len(result.losses) == 150


def test_panels_have_titles_and_labels(gm):
    ax = sf.score_panel(gm.score, gm.score, 1.0, log_prob=gm.log_prob, title="t", n_grid=20)
    assert ax.get_title() == "t" and ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$"
    curves = {"exact": sf.error_by_density(lambda y: 0.9 * gm.score(y), gm, n=12)}
    ax = sf.plot_error_vs_density(curves, title="e")
    assert ax.get_title() == "e" and "log density" in ax.get_xlabel()


def test_compare_panel_with_a_pretrained_and_a_trained_model(gm):
    pretrained = {"exact": ("gaussians8", exact_model(gm))}
    fig = sf.compare_panel("gaussians8", "exact", 0.5, pretrained=pretrained)
    assert len(fig.axes) >= 3 and "= 0.000" in fig.get_suptitle()
    with pytest.raises(ValueError, match="trained on 'gaussians8'"):
        sf.compare_panel("moons", "exact", 0.5, pretrained=pretrained)
    fig = sf.compare_panel("gaussians8", "sliced-vr", 0.5, steps=5)
    assert all(ax.get_title() for ax in fig.axes[:3] if ax.get_label() != "<colorbar>")


def test_denoise_images_on_gaussian_pixels():
    """Pixels N(0, 1): the posterior mean is x̃ / (1 + σ²), its error σ² / (1 + σ²)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 2, 2, generator=g)

    def score(x_tilde, sigma):
        return -x_tilde / (1 + expand_like(sigma, x_tilde) ** 2)

    result = sf.denoise_images(score, x, [0.5, 2.0], generator=g, batch_size=1000)
    assert result.noisy.shape == result.denoised.shape == (2, 4000, 1, 2, 2)
    for i, sigma in enumerate((0.5, 2.0)):
        assert result.mse_noisy[i].item() == pytest.approx(sigma**2, rel=0.05)
        assert result.mse_denoised[i].item() == pytest.approx(sigma**2 / (1 + sigma**2), rel=0.05)
    assert result.psnr(torch.tensor(4.0)).item() == pytest.approx(0.0)
    fig = sf.plot_denoised(result, x, n=4, title="d")
    assert len(fig.axes) == 1 + 2 * 2


def test_gradient_noise_is_zero_for_a_deterministic_loss_and_not_for_a_random_one(gm):
    torch.manual_seed(0)
    model = sf.Unconditional(sf.ToyScoreNet(2, hidden=16, depth=2))
    x = gm.sample(32, torch.Generator().manual_seed(0))
    params = list(model.parameters())
    exact = sf.gradient_noise(lambda: sm.implicit_score_matching(model, x), params, repeats=3)
    assert exact.loss_std == pytest.approx(0, abs=1e-6) and exact.grad_var < 1e-10
    direct = torch.autograd.grad(sm.implicit_score_matching(model, x), params)
    torch.testing.assert_close(exact.grad_mean, torch.cat([g.reshape(-1) for g in direct]).double())
    g = torch.Generator().manual_seed(1)
    noisy = sf.gradient_noise(lambda: sm.sliced_score_matching(model, x, generator=g), params, 5)
    assert noisy.loss_std > 0 and noisy.grad_var > 0
    with pytest.raises(ValueError, match="repeats"):
        sf.gradient_noise(lambda: sm.implicit_score_matching(model, x), params, repeats=0)
