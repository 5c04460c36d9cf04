"""Guidance on a labelled mixture: Bayes' rule for the noised classifier, classifier
guidance at s = 1 is the conditional score, CFG's ends, the conventions, label dropout,
and the tilted density."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import multivariate_normal

from course_lib import guidance, toys


@pytest.fixture(scope="module")
def lm() -> guidance.LabelledMixture:
    """gaussians8 with two classes of four modes each (alternating around the circle)."""
    gm = toys.twin("gaussians8")
    return guidance.LabelledMixture(gm, torch.arange(8) % 2)


def test_prior_and_conditionals(lm) -> None:
    torch.testing.assert_close(lm.prior(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    c0 = lm.conditional(0)
    assert c0.n_components == 4
    torch.testing.assert_close(c0.means, lm.mixture.means[::2])
    x, y = lm.sample(4000, torch.Generator().manual_seed(0))
    assert abs(float(y.double().mean()) - 0.5) < 4 * math.sqrt(0.25 / 4000)
    # each sample carries the label of the component it came from: class 0 sits on the
    # modes at angles 0, 90, 180, 270 degrees, so its points lie near the axes
    near_axis = (x[y == 0].abs().min(1).values < 0.5).double().mean()
    assert float(near_axis) > 0.99


def test_noised_classifier_is_bayes_rule(lm) -> None:
    """``p_t(y | x_t) = p(y) p_t(x_t | y) / p_t(x_t)`` with each density evaluated
    independently by scipy on the noised components ``N(a μ_k, a² C_k + s² I)``."""
    a, s = 0.6, 0.8
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = lm.mixture
    comp = (
        torch.stack(
            [
                torch.as_tensor(
                    multivariate_normal(
                        (a * m.means[k]).numpy(),
                        (a**2 * m.covariances[k] + s**2 * torch.eye(2)).numpy(),
                    ).pdf(x.numpy())
                )
                for k in range(m.n_components)
            ],
            1,
        )
        * m.weights
    )  # (B, K): w_k N(x; a μ_k, S_k)
    joint = torch.stack([comp[:, lm.labels == c].sum(1) for c in range(2)], 1)
    want = torch.log(joint / joint.sum(1, keepdim=True))
    # scipy's pdf is accurate to ~1e-8 relative (eigendecomposition): compare at 1e-6
    torch.testing.assert_close(lm.class_log_prob(x, a, s), want, rtol=1e-6, atol=1e-8)


def test_classifier_guidance_at_scale_one_is_the_conditional_score(lm) -> None:
    a, s = 0.7, 0.5
    x = torch.randn(15, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(lm.class_log_prob(xr, a, s)[:, 1].sum(), xr)[0]
    torch.testing.assert_close(grad, lm.classifier_grad(x, a, s, 1))  # autograd = Bayes
    uncond = lm.mixture.noised_score(x, a, s)
    torch.testing.assert_close(uncond + 1.0 * grad, lm.conditional_score(x, a, s, 1))
    # and CFG with w equals classifier guidance with s = 1 + w
    w = 2.5
    s_cls = guidance.convert_guidance(w, "w", "classifier")
    torch.testing.assert_close(lm.guided_score(x, a, s, 1, w), uncond + s_cls * grad)


def test_cfg_ends_and_conventions() -> None:
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5])
    torch.testing.assert_close(guidance.guided(c, u, 0.0), c)
    torch.testing.assert_close(guidance.guided(c, u, -1.0), u)
    for w in (-1.0, 0.0, 0.3, 4.0):
        for name in guidance.CONVENTIONS:
            there = guidance.convert_guidance(w, "w", name)
            assert guidance.convert_guidance(there, name, "w") == pytest.approx(w)
    assert guidance.convert_guidance(0.0, "w", "scale") == 1.0
    assert guidance.convert_guidance(7.5, "scale", "w") == 6.5
    # the "scale" form (1 - s) u + s c is the same prediction as (1 + w) c - w u
    s = guidance.convert_guidance(2.0, "w", "scale")
    torch.testing.assert_close((1 - s) * u + s * c, guidance.guided(c, u, 2.0))
    with pytest.raises(ValueError, match="Unknown guidance convention"):
        guidance.convert_guidance(1.0, "w", "gamma")


def test_label_dropout_is_per_sample() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 10, (2000,), generator=g)
    p = 0.1
    counts = []
    for _ in range(20):
        dropped = guidance.drop_labels(y, p, null_label=10, generator=g)
        n = int((dropped == 10).sum())
        counts.append(n)
        kept = dropped != 10
        assert torch.equal(dropped[kept], y[kept])  # the others are untouched
    se = math.sqrt(p * (1 - p) * 2000)
    for n in counts:  # every batch has about p of its labels dropped, never 0 or all
        assert abs(n - p * 2000) < 5 * se
    # over all batches the fraction matches p within its binomial error
    total = sum(counts) / (20 * 2000)
    assert abs(total - p) < 4 * math.sqrt(p * (1 - p) / (20 * 2000))
    with pytest.raises(ValueError, match="p_uncond"):
        guidance.drop_labels(y, 1.5, 10)


def test_tilted_density(lm) -> None:
    n = 300
    g = torch.linspace(-3, 3, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    area = float((g[1] - g[0]) ** 2)
    at_zero = guidance.normalise_on_grid(lm.tilted_log_density(grid, 0, 0.0), area)
    assert float(at_zero.exp().sum() * area) == pytest.approx(1.0)
    # w = 0 is p(x | y) itself (which puts almost all its mass inside the grid)
    torch.testing.assert_close(at_zero, lm.conditional(0).log_prob(grid), rtol=0, atol=1e-6)
    # w > 0 sharpens: less entropy than p(x | y)
    sharp = guidance.normalise_on_grid(lm.tilted_log_density(grid, 0, 3.0), area)
    h0 = float(-(at_zero.exp() * at_zero).sum() * area)
    h3 = float(-(sharp.exp() * sharp).sum() * area)
    assert h3 < h0


def test_mlp_label_conditioning() -> None:
    from course_lib.nets import MLP

    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, num_classes=3)
    for p in net.label_embed.parameters():
        p.data.normal_()
    x, t = torch.randn(5, 2), torch.rand(5)
    null = torch.full((5,), 3)
    torch.testing.assert_close(net(x, t), net(x, t, null))  # y = None is the null label
    assert not torch.allclose(net(x, t, torch.zeros(5, dtype=torch.long)), net(x, t))
    with pytest.raises(ValueError, match="without num_classes"):
        MLP(dim=2, hidden=16, depth=1)(x, t, null)


def test_guided_model_combines_one_batched_call() -> None:
    calls = []

    def model(x, t, y):  # a "network" whose prediction is its label, per sample
        calls.append(x.shape[0])
        return y[:, None].double().expand(-1, 2) + 0 * x

    x, t = torch.zeros(4, 2, dtype=torch.float64), torch.tensor(0.5)
    for w in (-1.0, 0.0, 2.0):
        calls.clear()
        out = guidance.guided_model(model, 1, w, null_label=9)(x, t)
        torch.testing.assert_close(
            out, torch.full((4, 2), (1 + w) * 1 - w * 9, dtype=torch.float64)
        )
        assert calls == ([4] if w == 0 else [8])  # one network call, 2B rows when guided


def test_exact_guided_predictions_agree_with_the_guided_score(lm) -> None:
    """ε̃ = −√(1 − ᾱ) s̃ and ũ = velocity_from_score(s̃) for the guided score s̃: guidance is
    one operation on the score, whatever the parameterisation."""
    from course_lib import flow_matching as fm
    from course_lib import schedules

    sched = schedules.linear_schedule(1000)
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t_idx, w, y = 400, 1.5, 0
    a, s = float(sched.sqrt_alpha_bar[t_idx]), float(sched.sigma[t_idx])
    eps = guidance.exact_guided_eps(lm, sched, y, w)(x, torch.full((12,), t_idx / 1000))
    torch.testing.assert_close(eps, -s * lm.guided_score(x, a, s, y, w))
    path = fm.linear_path()
    tt = torch.full((12,), 0.6, dtype=torch.float64)
    u = guidance.exact_guided_velocity(lm, path, y, w)(x, tt)
    a_t, s_t = float(path.alpha(tt[0])), float(path.sigma(tt[0]))
    want = fm.velocity_from_score(path, x, lm.guided_score(x, a_t, s_t, y, w), tt)
    torch.testing.assert_close(u, want)


def test_guided_flow_at_w_zero_samples_the_class(lm) -> None:
    from course_lib import flow_matching as fm

    path = fm.linear_path()
    z = torch.randn(400, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = fm.sample(guidance.exact_guided_velocity(lm, path, 1, 0.0), z, 100, "rk4").x
    right = (lm.class_log_prob(x, 1.0, 0.0).argmax(1) == 1).double().mean()
    assert float(right) > 0.99
    # and the unconditional flow (w = -1) splits about evenly between the classes
    x_u = fm.sample(guidance.exact_guided_velocity(lm, path, 1, -1.0), z, 100, "rk4").x
    frac = float((lm.class_log_prob(x_u, 1.0, 0.0).argmax(1) == 1).double().mean())
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / 400)


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_trained_conditional_model_follows_its_labels(tmp_path, monkeypatch, objective) -> None:
    """Trained with label dropout, the network is a conditional model (w = 0: samples in
    the right class) and an unconditional one (w = −1, the null label: both classes),
    and guidance (w = 3) keeps or raises the fraction in the right class. Measured with
    this seed: flow 0.53 / 0.97 / 1.00, ddpm 0.49 / 0.90 / 1.00 for w = −1 / 0 / 3."""
    from course_lib import config, ddim, toy_guidance
    from course_lib import flow_matching as fm

    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    cfg = config.get_config("smoke")
    r = toy_guidance.recipe(cfg, objective=objective, steps=800, hidden=64, n_points=4000)
    m = toy_guidance.train_conditional(cfg, "gaussians8", r, progress=False)
    lm = m.twin
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(7))

    def draw(w: float) -> torch.Tensor:
        f = m.guided(1, w)
        if objective == "flow":
            return fm.sample(f, z, 50, "heun").x
        return ddim.ddim_sample(f, z, m.schedule, 50).x

    def right(x: torch.Tensor) -> float:
        return float((lm.class_log_prob(x.double(), 1.0, 0.0).argmax(1) == 1).double().mean())

    cond, uncond, strong = right(draw(0.0)), right(draw(-1.0)), right(draw(3.0))
    assert cond > 0.8, cond
    assert abs(uncond - 0.5) < 0.15, uncond
    assert strong >= cond - 0.02, (strong, cond)
    again = toy_guidance.train_conditional(cfg, "gaussians8", r, progress=False)
    assert again.result.resumed_at == r.base.steps
    with pytest.raises(ValueError, match="p_uncond"):
        toy_guidance.recipe(cfg, p_uncond=0.0)


def test_guidance_study_on_the_exact_flow(lm) -> None:
    """With the exact guided flow: at w = 0 the tilted density is p(x|y) (the two KLs
    agree) and the samples are in class; at w = −1 the samples follow p(x) (about half in
    class, and close to the tilted density, which is p(x)); as w grows the entropy falls.
    For well-separated classes the tilted *data* density barely differs from p(x|y), yet
    the guided ODE sharpens its samples: it does not sample the tilted density (measured
    KL to it 0.02 / 0.32 / 1.26 at w = 0 / 1 / 3, 2000 samples)."""
    from course_lib import flow_matching as fm
    from course_lib import guidance_figures as gf

    path = fm.linear_path()
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def draw(w: float) -> torch.Tensor:
        return fm.sample(guidance.exact_guided_velocity(lm, path, 1, w), z, 50, "rk4").x

    rows = gf.guidance_study(lm, 1, draw, [-1.0, 0.0, 1.0, 3.0])
    by_w = {r.w: r for r in rows}
    assert by_w[0.0].kl_tilted == pytest.approx(by_w[0.0].kl_conditional, abs=1e-3)
    assert by_w[0.0].in_class > 0.99 and by_w[0.0].kl_conditional < 0.15
    assert abs(by_w[-1.0].in_class - 0.5) < 4 * math.sqrt(0.25 / 1000)
    assert by_w[-1.0].kl_tilted < 0.15 and by_w[-1.0].kl_conditional > 5
    assert by_w[0.0].entropy > by_w[1.0].entropy > by_w[3.0].entropy
    assert by_w[3.0].kl_tilted > by_w[0.0].kl_tilted + 0.5  # guidance overshoots the tilt
    assert "KL to tilted" in gf.format_guidance_rows(rows)


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_model(lm) -> None:
    """ε − √(1 − ᾱ) ∇log p_t(y | x_t) = ε(x_t | y) at s = 1 (Bayes' rule, as a noise
    prediction), and s = 1 + w reproduces classifier-free guidance with w."""
    from course_lib import ddpm, schedules

    sched = schedules.linear_schedule(1000)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    tau = torch.full((10,), 250 / 1000)
    eps_u = ddpm.exact_model(lm.mixture, sched)
    log_cls = guidance.exact_log_classifier(lm, sched)
    got = guidance.classifier_guided_eps(eps_u, log_cls, sched, 0, 1.0)(x, tau)
    torch.testing.assert_close(got, ddpm.exact_model(lm.conditional(0), sched)(x, tau))
    got_w = guidance.classifier_guided_eps(eps_u, log_cls, sched, 0, 3.0)(x, tau)
    torch.testing.assert_close(got_w, guidance.exact_guided_eps(lm, sched, 0, 2.0)(x, tau))


def test_noisy_classifier_nears_the_bayes_classifier(tmp_path, monkeypatch) -> None:
    """The trained noise-aware classifier's cross-entropy on fresh noisy points comes
    within 0.05 nats of the exact Bayes classifier's (which no classifier can beat), at a
    low noise level where the classes are separable and at one where they overlap
    (measured: 0.035 vs 0.017 at t = 50, 0.594 vs 0.561 at t = 150; ln 2 = 0.693 is chance)."""
    from course_lib import config, ddpm, toy_guidance

    monkeypatch.setenv("COURSE_DATA", str(tmp_path))
    cfg = config.get_config("smoke")
    net, sched, _ = toy_guidance.train_noisy_classifier(
        cfg, steps=800, hidden=64, n_points=4000, lr=1e-3, progress=False
    )
    lm = toy_guidance.labelled_twin("gaussians8", 2)
    exact = guidance.exact_log_classifier(lm, sched)
    g = torch.Generator().manual_seed(10)
    x0, y = lm.sample(3000, g)
    for t in (50, 150):
        xt = ddpm.q_sample(x0, t, sched, torch.randn(x0.shape, generator=g))
        tau = torch.full((3000,), t / sched.T)
        with torch.no_grad():
            learned = torch.nn.functional.cross_entropy(net(xt, tau), y)
        bayes = -exact(xt.double(), tau)[torch.arange(3000), y].mean()
        assert float(learned) > float(bayes) - 0.03  # the Bayes classifier is optimal
        assert float(learned) < float(bayes) + 0.05, (t, float(learned), float(bayes))


def test_observation_posterior_is_bayes_rule(lm) -> None:
    """log p(x | y) = log p(x) + log N(y; A x, σ²I) − log p(y) at arbitrary points."""
    gm = lm.mixture
    a_obs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # inpainting: see x[0] only
    y_obs, sd = torch.tensor([0.9], dtype=torch.float64), 0.1
    post = guidance.observation_posterior(gm, a_obs, y_obs, sd)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    lik = torch.distributions.Normal(x @ a_obs.T, sd).log_prob(y_obs).sum(1)
    unnorm = gm.log_prob(x) + lik
    diff = post.log_prob(x) - unnorm  # must be the constant -log p(y)
    # log-densities of up to ~100 nats through two float64 code paths: agreement ~1e-6
    torch.testing.assert_close(diff, diff.median().expand(30), rtol=0, atol=1e-5)
    # and a wrong noise level in the likelihood breaks it by far more
    wrong = torch.distributions.Normal(x @ a_obs.T, 2 * sd).log_prob(y_obs).sum(1)
    assert float((post.log_prob(x) - gm.log_prob(x) - wrong).std()) > 1.0
    # the posterior concentrates near x[0] = 0.9 and keeps only the modes that allow it
    samples = post.sample(2000, torch.Generator().manual_seed(12))
    assert abs(float(samples[:, 0].mean()) - 0.9) < 0.1
    with pytest.raises(ValueError, match="noise_std"):
        guidance.observation_posterior(gm, a_obs, y_obs, 0.0)


def test_inverse_problem_score_identity(lm) -> None:
    """∇log p_t(x_t | y) = ∇log p_t(x_t) + ∇log p_t(y | x_t): the noised score of the exact
    posterior equals the prior's noised score plus the gradient of the closed-form noised
    likelihood, at several noise levels — the identity behind guidance and inpainting."""
    gm = lm.mixture
    a_obs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y_obs, sd = torch.tensor([0.9], dtype=torch.float64), 0.1
    post = guidance.observation_posterior(gm, a_obs, y_obs, sd)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    for a, s in [(0.95, 0.3), (0.6, 0.8), (0.2, 0.98)]:
        xr = x.clone().requires_grad_(True)
        ll = guidance.noised_observation_log_likelihood(gm, a_obs, y_obs, sd, xr, a, s)
        (grad,) = torch.autograd.grad(ll.sum(), xr)
        want = post.noised_score(x, a, s)
        torch.testing.assert_close(gm.noised_score(x, a, s) + grad, want, rtol=1e-6, atol=1e-8)


def test_classifier_guidance_rejects_a_time_off_the_schedule(lm) -> None:
    from course_lib import ddpm, schedules

    sched = schedules.linear_schedule(1000)
    f = guidance.classifier_guided_eps(
        ddpm.exact_model(lm.mixture, sched), guidance.exact_log_classifier(lm, sched), sched, 0, 1.0
    )
    with pytest.raises(ValueError, match="step t >= 1"):
        f(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2))


def test_inpainting_by_replacement(lm) -> None:
    """The observed coordinates end exactly at the observation; with nothing observed it
    is plain Euler sampling; with x[0] observed the other coordinate moves towards the
    exact posterior's modes (an approximation, not an exact sampler: measured mean |x[1]|
    0.80 against the posterior's 0.99 — some samples stop between the modes)."""
    from course_lib import flow_matching as fm

    gm, path = lm.mixture, fm.linear_path()
    u = fm.exact_velocity(gm, path)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    obs = torch.tensor([0.99, 0.0], dtype=torch.float64)  # x[0] of the mode at 45 degrees
    mask = torch.tensor([True, False])
    x = guidance.inpaint_flow(u, z, obs, mask, path, 50)
    torch.testing.assert_close(x[:, 0], torch.full((2000,), 0.99, dtype=torch.float64))
    plain = guidance.inpaint_flow(u, z, obs, torch.tensor([False, False]), path, 50)
    torch.testing.assert_close(plain, fm.sample(u, z, 50, "euler").x)
    post = guidance.observation_posterior(gm, torch.tensor([[1.0, 0.0]]), obs[:1], 0.05)
    # the posterior puts x[1] near ±0.99 (two modes at x[0] = 0.99); so must the samples
    assert float(x[:, 1].abs().mean()) == pytest.approx(
        float(post.sample(4000, torch.Generator().manual_seed(15))[:, 1].abs().mean()), abs=0.3
    )


def test_exercise_messages_name_the_mistake() -> None:
    """The tailored messages of exercise 8.1 fire (the check looks at w = 3 first)."""
    from course_lib.exercises import ch08

    def scale_form(c, u, w):
        return w * c + (1 - w) * u

    def swapped(c, u, w):
        return (1 + w) * u - w * c

    assert "other convention" in ch08.check_cfg_combine.run(scale_form).message
    assert "swapped" in ch08.check_cfg_combine.run(swapped).message
