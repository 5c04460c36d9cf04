"""Ground-truth tests of chapter 1's losses (course_lib.score_matching).

Every check compares with a fact known in closed form (a trace, Hyvärinen's theorem, the
minimum of the DSM loss, Tweedie's formula) with a tolerance of a few Monte-Carlo
standard errors, estimated from the samples themselves (the spread of independent batch
means), never a tuned number.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib import toys
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.nets import MLP
from course_lib.score_matching import (
    NoiseConditionalScore,
    denoising_score_matching,
    divergence,
    dsm_minimum,
    explicit_score_matching,
    implicit_score_matching,
    multi_noise_dsm,
    sigma_weighted_dsm_minimum,
    sliced_score_matching,
    tweedie_denoiser,
)
from course_lib.train import random_batches, train

N_SE = 5  # tolerance in standard errors: a false alarm has probability < 1e-6


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean of independent replicates and its standard error."""
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


@pytest.fixture(scope="module")
def gm() -> GaussianMixture:
    """A 2D mixture with unequal weights and anisotropic covariances."""
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]]),
        torch.tensor(
            [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.5]], [[0.4, -0.2], [-0.2, 0.3]]]
        ),
    )


def differentiable_score(gm: GaussianMixture):
    """``∇ log p`` of a mixture by autograd through ``torch.distributions`` (the course's
    :class:`GaussianMixture` computes on detached float64 copies, so it cannot be
    differentiated), to get a model whose Jacobian is that of the true score."""
    law = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.MultivariateNormal(gm.means, covariance_matrix=gm.covariances),
    )

    def score(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_ = x if x.requires_grad else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(law.log_prob(x_).sum(), x_, create_graph=True)
        return g

    return score


def random_mlp(dim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, dim)
    ).double()


# --------------------------------------------------------------------------- divergence
def test_exact_divergence_of_linear_map_is_trace() -> None:
    a = torch.randn(5, 5, generator=gen(0), dtype=torch.float64)
    x = torch.randn(7, 5, generator=gen(1), dtype=torch.float64)
    div = divergence(lambda x: x @ a.T + 1.0, x)
    assert div.shape == (7,)
    torch.testing.assert_close(div, torch.full((7,), float(a.trace()), dtype=torch.float64))


def test_exact_divergence_of_image_shaped_map() -> None:
    # (B, C, H, W) inputs: the map x -> c * x has divergence c * C * H * W
    x = torch.randn(3, 2, 4, 4, generator=gen(0))
    torch.testing.assert_close(divergence(lambda x: 0.5 * x, x), torch.full((3,), 0.5 * 32))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased(probe: str) -> None:
    net = random_mlp(3, seed=0)
    x = torch.randn(6, 3, generator=gen(1), dtype=torch.float64)
    exact = divergence(net, x)
    n_rep = 20_000  # one probe per copy: n_rep independent estimates per sample
    est = divergence(net, x.repeat(n_rep, 1), "hutchinson", probe=probe, generator=gen(2))
    est = est.detach().reshape(n_rep, 6)
    mean, se = est.mean(0), est.std(0) / math.sqrt(n_rep)
    assert (se > 0).all()  # it is an estimator, not the exact trace in disguise
    assert ((mean - exact.detach()).abs() < N_SE * se).all(), (mean, exact, se)
    # n_probes averages the same estimator: the spread shrinks like 1/sqrt(n_probes)
    avg = divergence(
        net, x.repeat(400, 1), "hutchinson", n_probes=25, probe=probe, generator=gen(3)
    )
    ratio = avg.detach().reshape(400, 6).std(0) / est.std(0)
    assert ((ratio - 0.2).abs() < 0.05).all(), ratio


def test_divergence_is_differentiable_when_training() -> None:
    # d/dA sum_b tr(A) = B * I: the gradient of the trace reaches the map's parameters
    a = torch.randn(4, 4, generator=gen(0), dtype=torch.float64, requires_grad=True)
    x = torch.randn(10, 4, generator=gen(1), dtype=torch.float64)
    divergence(lambda x: x @ a.T, x).sum().backward()
    torch.testing.assert_close(a.grad, 10 * torch.eye(4, dtype=torch.float64))
    with torch.no_grad():
        assert not divergence(lambda x: x @ a.T, x).requires_grad


def test_bad_estimator_and_probe_raise() -> None:
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="estimator"):
        divergence(lambda x: x, x, estimator="approx")
    with pytest.raises(ValueError, match="probe"):
        divergence(lambda x: x, x, estimator="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        divergence(lambda x: x, x, estimator="hutchinson", n_probes=0)


# --------------------------------------------------------------------------- ESM / ISM
def test_explicit_score_matching_is_half_squared_error(gm: GaussianMixture) -> None:
    x = gm.sample(1000, gen(0)).double()
    assert explicit_score_matching(gm.score, x, gm.score) == 0
    delta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    loss = explicit_score_matching(lambda x: gm.score(x) + delta, x, gm.score(x))
    torch.testing.assert_close(loss, 0.5 * (delta**2).sum())


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_ism_of_gaussian_true_score_is_minus_half_trace_precision(estimator: str) -> None:
    # s(x) = -P (x - m) with P = Σ⁻¹: tr ∇s = -tr P, E‖s‖² = tr P, so J_ISM = -½ tr P
    d = 3
    l_ = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=torch.float64)
    cov, m = l_ @ l_.T, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    g = gen(0)
    losses = []
    for _ in range(20):
        x = m + torch.randn(2000, d, generator=g, dtype=torch.float64) @ l_.T
        with torch.no_grad():
            loss = implicit_score_matching(lambda x: -(x - m) @ prec, x, estimator, generator=g)
        losses.append(loss)
    mean, se = mean_and_se(torch.stack(losses))
    assert abs(mean - (-0.5 * float(prec.trace()))) < N_SE * se, (mean, se)


def test_hyvarinen_theorem_esm_minus_ism_is_model_independent(gm: GaussianMixture) -> None:
    """ESM(s) − ISM(s) = ½ E‖∇ log p‖² for every model s (Hyvärinen 2005, Thm 1)."""
    true_score = differentiable_score(gm)
    x_check = gm.sample(100, gen(9)).double()
    torch.testing.assert_close(true_score(x_check), gm.score(x_check))
    a = torch.tensor([[-1.0, 0.4], [0.2, -2.0]], dtype=torch.float64)
    models = {
        "true score": true_score,
        "random MLP": random_mlp(2, seed=1),
        "linear": lambda x: x @ a.T + torch.tensor([0.5, -0.3], dtype=torch.float64),
    }
    g = gen(0)
    gaps: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    for _ in range(20):  # 20 independent chunks of 2,000 samples
        x = gm.sample(2000, g).double()
        score = gm.score(x)
        const = 0.5 * (score**2).sum(1).mean()  # ½ E‖∇ log p‖², on the same samples
        with torch.no_grad():
            for name, s in models.items():
                esm = explicit_score_matching(s, x, score)
                gaps[name].append(esm - implicit_score_matching(s, x) - const)
    for name in models:  # each model's ESM − ISM is the constant...
        mean, se = mean_and_se(torch.stack(gaps[name]))
        assert abs(mean) < N_SE * se, (name, mean, se)
    # ... hence the same for every pair of models (a sharper check: shared samples)
    names = list(models)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            diff = torch.stack(gaps[names[i]]) - torch.stack(gaps[names[j]])
            mean, se = mean_and_se(diff)
            assert abs(mean) < N_SE * se, (names[i], names[j], mean, se)
    # and the constant is not a trivial zero: ESM and ISM differ a lot
    assert float(const) > 1.0


# --------------------------------------------------------------------------- SSM
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduced", [False, True])
def test_sliced_score_matching_matches_ism(
    gm: GaussianMixture, probe: str, variance_reduced: bool
) -> None:
    model = random_mlp(2, seed=3)
    x = gm.sample(256, gen(0)).double()
    with torch.no_grad():
        ism = float(implicit_score_matching(model, x))  # exact trace: deterministic
        g = gen(1)
        ssm = torch.stack(
            [
                sliced_score_matching(model, x, 64, variance_reduced, generator=g, probe=probe)
                for _ in range(16)
            ]
        )
    mean, se = mean_and_se(ssm)
    assert se > 0
    assert abs(mean - ism) < N_SE * se, (mean, ism, se)


def test_ssm_vr_equals_hutchinson_ism_with_same_probes(gm: GaussianMixture) -> None:
    model = random_mlp(2, seed=4)
    x = gm.sample(128, gen(0)).double()
    ssm_vr = sliced_score_matching(model, x, 3, variance_reduced=True, generator=gen(5))
    ism = implicit_score_matching(
        model, x, "hutchinson", n_probes=3, generator=gen(5), probe="gaussian"
    )
    torch.testing.assert_close(ssm_vr, ism)


def test_ism_loss_trains() -> None:
    model = random_mlp(2, seed=0)
    x = torch.randn(64, 2, generator=gen(0), dtype=torch.float64)
    loss = sliced_score_matching(model, x, generator=gen(1))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------- DSM
SIGMA = 0.5


def exact_noised(gm: GaussianMixture):
    return lambda x, sigma: gm.noised_score(x, 1.0, sigma)


def test_exact_noised_score_attains_dsm_minimum(gm: GaussianMixture) -> None:
    g = gen(0)
    x = gm.sample(100_000, g)
    exact, delta = exact_noised(gm), torch.tensor([0.3, 0.3])
    losses, excess = [], []
    for i in range(20):
        batch = x[5000 * i : 5000 * (i + 1)]
        seed = 100 + i  # the same noise for both models: the excess has a small variance
        loss = denoising_score_matching(exact, batch, SIGMA, gen(seed))
        worse = denoising_score_matching(lambda x, s: exact(x, s) + delta, batch, SIGMA, gen(seed))
        losses.append(loss)
        excess.append(worse - loss)
    minima = torch.tensor([dsm_minimum(gm, SIGMA, 20_000, gen(200 + i)) for i in range(10)])
    (m_loss, se_loss), (m_min, se_min) = mean_and_se(torch.stack(losses)), mean_and_se(minima)
    assert abs(m_loss - m_min) < N_SE * math.hypot(se_loss, se_min), (m_loss, m_min)
    # J_DSM(s* + δ) = J_DSM(s*) + ½‖δ‖²
    m_ex, se_ex = mean_and_se(torch.stack(excess))
    assert m_ex > 0
    assert abs(m_ex - 0.5 * float((delta**2).sum())) < N_SE * se_ex, (m_ex, se_ex)


def test_dsm_minimum_against_closed_form_gaussian() -> None:
    # one Gaussian N(0, c² I): p_σ = N(0, (c² + σ²) I), E‖∇ log p_σ‖² = D / (c² + σ²)
    c, d = 0.7, 2
    gauss = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], c)
    exact = 0.5 * (d / SIGMA**2 - d / (c**2 + SIGMA**2))
    estimates = torch.tensor([dsm_minimum(gauss, SIGMA, 20_000, gen(i)) for i in range(10)])
    mean, se = mean_and_se(estimates)
    assert abs(mean - exact) < N_SE * se, (mean, exact, se)


def test_multi_noise_dsm_minimum(gm: GaussianMixture) -> None:
    sigmas = torch.tensor([1.0, 0.3, 0.1])
    exact = exact_noised(gm)
    g = gen(0)
    losses = torch.stack(
        [multi_noise_dsm(exact, gm.sample(5000, g), sigmas, generator=g) for _ in range(20)]
    )
    minima = torch.tensor(
        [sigma_weighted_dsm_minimum(gm, sigmas, 20_000, gen(100 + i)) for i in range(5)]
    )
    (m_loss, se_loss), (m_min, se_min) = mean_and_se(losses), mean_and_se(minima)
    assert abs(m_loss - m_min) < N_SE * math.hypot(se_loss, se_min), (m_loss, m_min)
    # the uniform level choice is really random: a single level gives another value
    one = multi_noise_dsm(exact, gm.sample(5000, g), sigmas[:1], generator=g)
    assert abs(float(one) - m_min) > 10 * se_loss


def test_dsm_noises_at_the_levels_it_passes_to_the_score(gm: GaussianMixture) -> None:
    """A spy score records what the losses feed it: x̃ − x must be σ ε with the σ the
    score is told, the levels must be drawn uniformly, and the loss must be
    ½ mean ‖σ s + ε‖² of exactly those draws."""
    sigmas = torch.tensor([1.0, 0.3, 0.1], dtype=torch.float64)
    n, calls = 30_000, []

    def spy(x_tilde: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append((x_tilde, sigma))
        return -x_tilde

    x = gm.sample(n, gen(0)).double()
    loss = multi_noise_dsm(spy, x, sigmas, generator=gen(1))
    x_tilde, sigma = calls[-1]
    assert sigma.shape == (n,)
    assert torch.isin(sigma, sigmas).all()
    eps = (x_tilde - x) / sigma[:, None]
    torch.testing.assert_close(loss, 0.5 * ((sigma[:, None] * -x_tilde + eps) ** 2).sum(1).mean())
    for level in sigmas:
        pick = sigma == level
        p = 1 / len(sigmas)
        assert abs(int(pick.sum()) - n * p) < N_SE * math.sqrt(n * p * (1 - p))
        m = int(pick.sum())  # ε at this level is N(0, I): mean 0, variance 1
        assert (eps[pick].mean(0).abs() < N_SE / math.sqrt(m)).all()
        assert ((eps[pick].var(0) - 1).abs() < N_SE * math.sqrt(2 / m)).all()
    calls.clear()
    loss = denoising_score_matching(spy, x, 0.3, gen(2))
    x_tilde, sigma = calls[-1]
    assert (sigma == 0.3).all()
    eps = (x_tilde - x) / 0.3
    assert ((eps.var(0) - 1).abs() < N_SE * math.sqrt(2 / n)).all()
    torch.testing.assert_close(loss, 0.5 * ((-x_tilde + eps / 0.3) ** 2).sum(1).mean())


def test_dsm_per_sample_sigma_and_reproducibility(gm: GaussianMixture) -> None:
    x = gm.sample(300, gen(0))
    exact = exact_noised(gm)
    a = denoising_score_matching(exact, x, torch.full((300,), SIGMA), gen(1))
    b = denoising_score_matching(exact, x, SIGMA, gen(1))
    torch.testing.assert_close(a, b)
    c = multi_noise_dsm(exact, x, [0.2, 0.5], gen(2))
    torch.testing.assert_close(c, multi_noise_dsm(exact, x, [0.2, 0.5], gen(2)))


# --------------------------------------------------------------------------- Tweedie
def test_tweedie_denoiser_is_the_optimal_denoiser(gm: GaussianMixture) -> None:
    x_tilde = gm.noised(1.0, SIGMA).sample(500, gen(0)).double()
    torch.testing.assert_close(
        tweedie_denoiser(exact_noised(gm), x_tilde, SIGMA), gm.optimal_denoiser(x_tilde, 1, SIGMA)
    )
    sigma = torch.linspace(0.05, 2.0, 500, dtype=torch.float64)  # one level per sample
    torch.testing.assert_close(
        tweedie_denoiser(exact_noised(gm), x_tilde, sigma), gm.optimal_denoiser(x_tilde, 1, sigma)
    )


# --------------------------------------------------------------------------- the model
def test_noise_conditional_score_scales_by_one_over_sigma() -> None:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1)
    model = NoiseConditionalScore(net)
    x = torch.randn(5, 2, generator=gen(0))
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0])
    out = model(x, sigma)
    torch.testing.assert_close(out * sigma[:, None], net(x, torch.log(sigma) / 4))
    torch.testing.assert_close(model(x, 0.5), model(x, torch.full((5,), 0.5)))


def score_error(model: nn.Module, gm: GaussianMixture, sigma: float) -> float:
    """``E_{p_σ} ‖s_θ(x̃, σ) − ∇ log p_σ(x̃)‖²`` on fixed samples."""
    x_tilde = gm.noised(1.0, sigma).sample(4000, gen(123))
    with torch.no_grad():
        err = model(x_tilde, sigma) - gm.noised_score(x_tilde, 1.0, sigma)
    return float((err**2).sum(1).mean())


def test_ncsn_training_learns_the_noised_score() -> None:
    """NCSN loss + the course's training loop: the EMA weights' score error at σ = 0.5 falls
    below a tenth of its initial value and of the size of the score itself (measured:
    2.84 -> 0.12, E‖∇ log p_σ‖² = 3.2)."""
    gm = toys.twin("moons")
    torch.manual_seed(0)
    model = NoiseConditionalScore(MLP(dim=2, hidden=64, depth=2))
    sigmas = torch.logspace(math.log10(2.0), math.log10(0.05), 10)
    before = score_error(model, gm, SIGMA)
    data = gm.sample(20_000, gen(0))
    g = gen(1)
    result = train(
        model,
        lambda m, x: multi_noise_dsm(m, x, sigmas, generator=g),
        random_batches(data, batch_size=256, generator=gen(2)),
        steps=800,
        lr=2e-3,
        ema_decay=0.99,
        progress=False,
    )
    after = score_error(result.best, gm, SIGMA)
    x_tilde = gm.noised(1, SIGMA).sample(4000, gen(123))
    exact_size = float((gm.noised_score(x_tilde, 1, SIGMA) ** 2).sum(1).mean())
    assert after < 0.1 * before, (before, after)
    assert after < 0.1 * exact_size, (after, exact_size)  # small relative to the score itself
