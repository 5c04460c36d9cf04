"""Ground-truth tests of chapter 2's samplers and rules (course_lib.langevin).

Tolerances come from the sampling error of the statistic checked (a few standard errors
of a variance or a proportion), so that each test fails when the sampler is wrong and
passes, up to a negligible false-alarm rate, when it is right.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from course_lib import metrics, toys
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.langevin import (
    annealed_langevin,
    geometric_sigmas,
    mala,
    n_levels_criterion,
    n_levels_rule,
    sigma_max_rule,
    step_size_rule,
    ula,
    variance_ratio,
)
from course_lib.nets import MLP
from course_lib.score_matching import NoiseConditionalScore, multi_noise_dsm
from course_lib.train import random_batches, train

N_SE = 5  # tolerance in standard errors


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def var_se(v: float, n: int) -> float:
    """Standard error of a sample variance of ``n`` Gaussian draws: ``v √(2/n)``."""
    return v * math.sqrt(2 / n)


def exact_noised_score(gm: GaussianMixture):
    """``∇ log p_σ`` of a mixture for the samplers. Every chain of a level shares one σ,
    so the scalar ``sigma[0]`` takes the mixture's fast path (one factorisation per
    component instead of one per sample)."""
    return lambda x, sigma: gm.noised_score(x, 1.0, sigma[0])


def std_normal_score(x: torch.Tensor) -> torch.Tensor:
    """``∇ log N(x; 0, I) = −x``."""
    return -x


def std_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """``log N(x; 0, I)`` up to a constant (all MALA needs)."""
    return -0.5 * (x**2).sum(1)


# --------------------------------------------------------------------------- ULA / MALA
@pytest.mark.parametrize("h", [0.5, 1.0])
def test_ula_stationary_variance_has_the_step_size_bias(h: float) -> None:
    # x <- (1 - h/2) x + √h z on N(0, 1): stationary variance 1 / (1 - h/4)
    n = 20_000
    x_init = 3 * torch.randn(n, 1, generator=gen(0))
    v = float(ula(std_normal_score, x_init, h, 150, gen(1)).x.var())
    v_h = 1 / (1 - h / 4)
    assert abs(v - v_h) < N_SE * var_se(v_h, n), (v, v_h)
    assert abs(v - 1.0) > N_SE * var_se(1.0, n), v  # visibly not the target's


def test_mala_removes_the_bias_and_acceptance_falls_with_the_step() -> None:
    n = 20_000
    x_init = 3 * torch.randn(n, 1, generator=gen(0))
    rates = []
    for h in (0.25, 1.0, 3.0):
        res = mala(std_normal_log_prob, std_normal_score, x_init, h, 150, gen(1))
        v = float(res.x.var())
        assert abs(v - 1.0) < N_SE * var_se(1.0, n), (h, v)
        rate = res.info["acceptance_rate"]
        assert 0 < rate < 1
        rates.append(rate)
    assert rates[0] > rates[1] > rates[2], rates


def test_mala_rejects_against_a_wrong_log_density() -> None:
    # MALA's correction uses log p: with a log p that disagrees with the score (twice the
    # variance), it samples the log p's law, N(0, 2), not the score's
    n = 20_000
    res = mala(
        lambda x: -0.25 * (x**2).sum(1),
        std_normal_score,
        torch.randn(n, 1, generator=gen(0)),
        1.0,
        300,
        gen(1),
    )
    assert abs(float(res.x.var()) - 2.0) < N_SE * var_se(2.0, n)


# --------------------------------------------------------------------------- mode weights
def test_annealing_recovers_mode_weights_that_langevin_cannot() -> None:
    """0.8 N(5, 1) + 0.2 N(−5, 1): the modes are 18 nats of barrier apart, so Langevin
    keeps the split of its initial points (about one half each); annealed Langevin moves
    the mass while the noised modes still overlap (Song & Ermon 2019, Sec. 3.2)."""
    gm = GaussianMixture.isotropic([0.8, 0.2], [[5.0], [-5.0]], 1.0)
    n = 10_000
    sigma_max = sigma_max_rule(gm.sample(5000, gen(0)), generator=gen(0))  # technique 1
    x_init = sigma_max * torch.randn(n, 1, generator=gen(1))
    frac_ula = float((ula(gm.score, x_init, 0.5, 200, gen(2)).x > 0).float().mean())
    sigmas = geometric_sigmas(sigma_max, 0.3, 25)
    res = annealed_langevin(exact_noised_score(gm), x_init, sigmas, 0.5 * 0.3**2, 20, gen(3))
    frac_annealed = float((res.x > 0).float().mean())
    assert abs(frac_ula - 0.8) > 0.15, frac_ula
    se = math.sqrt(0.8 * 0.2 / n)
    # annealing has a small bias of its own (mass still on the wrong side when the
    # noised modes stop exchanging chains): 0.03 = 0.02 of bias + 2.5 standard errors
    assert abs(frac_annealed - 0.8) < 0.02 + 2.5 * se, frac_annealed


# --------------------------------------------------------------------------- 2D toys
@pytest.mark.parametrize(
    ("name", "n_levels", "n_steps_each", "sigma_min"),
    [("gaussians8", 10, 20, 0.02), ("moons", 10, 15, 0.02)],
)
def test_annealed_langevin_with_exact_scores_matches_toys(
    name: str, n_levels: int, n_steps_each: int, sigma_min: float
) -> None:
    gm, n = toys.twin(name), 2000
    sigma_max = sigma_max_rule(gm.sample(5000, gen(0)), generator=gen(0))
    sigmas = geometric_sigmas(sigma_max, sigma_min, n_levels)
    x_init = sigma_max * torch.randn(n, 2, generator=gen(1))
    h = 1.0 * sigma_min**2  # h_i = σ_i²: a step of the size of the noise level
    x = annealed_langevin(exact_noised_score(gm), x_init, sigmas, h, n_steps_each, gen(2)).x
    g_floor = gen(4)  # a seeded floor: the test is deterministic
    floor = metrics.floor(lambda m: gm.sample(m, g_floor), n, repeats=5)["mmd"]
    mmd = metrics.mmd(x, gm.sample(n, gen(3)))
    assert mmd < 3 * floor, (mmd, floor)
    if name == "gaussians8":  # every mode, with its weight 1/8 (binomial error)
        counts = torch.bincount(gm.responsibilities(x).argmax(1), minlength=8).double()
        se = math.sqrt(n * (1 / 8) * (7 / 8))
        assert ((counts - n / 8).abs() < N_SE * se).all(), counts


# --------------------------------------------------------------------------- mechanics
def test_trajectory_nfe_and_reproducibility() -> None:
    gm = toys.twin("gaussians8")
    sigmas = geometric_sigmas(3.0, 0.1, 4)
    x_init = 3 * torch.randn(50, 2, generator=gen(0))
    score = exact_noised_score(gm)
    res = annealed_langevin(score, x_init, sigmas, 0.01, 5, gen(1), keep=1)
    assert res.nfe == 4 * 5 + 1
    # states: x_init, 20 Langevin steps, the denoised output
    assert res.trajectory.shape == (22, 50, 2)
    torch.testing.assert_close(res.trajectory[0], x_init)
    torch.testing.assert_close(res.trajectory[-1], res.x)
    expected_times = [3.0] + [s for s in sigmas.tolist() for _ in range(5)] + [0.0]
    torch.testing.assert_close(
        res.times.double(), torch.tensor(expected_times, dtype=torch.float64)
    )
    res_sparse = annealed_langevin(
        score, x_init, sigmas, 0.01, 5, gen(1), keep=4, denoise_last=False
    )
    assert res_sparse.nfe == 20
    assert res_sparse.trajectory.shape == (6, 50, 2)  # calls 0, 4, .., 20
    assert annealed_langevin(score, x_init, sigmas, 0.01, 5, gen(1)).trajectory is None
    # same generator seed, same samples; another seed, other samples
    torch.testing.assert_close(annealed_langevin(score, x_init, sigmas, 0.01, 5, gen(1)).x, res.x)
    assert not torch.equal(annealed_langevin(score, x_init, sigmas, 0.01, 5, gen(2)).x, res.x)
    torch.testing.assert_close(res_sparse.x, res.trajectory[-2])  # the same run, undenoised
    # ULA and MALA
    r_ula = ula(gm.score, x_init, 0.01, 7, gen(1), keep=3)
    assert r_ula.nfe == 7 and r_ula.trajectory.shape == (4, 50, 2)  # steps 0, 3, 6, 7
    torch.testing.assert_close(r_ula.times, torch.tensor([0.0, 0.03, 0.06, 0.07]))
    torch.testing.assert_close(ula(gm.score, x_init, 0.01, 7, gen(1)).x, r_ula.x)
    r_mala = mala(gm.log_prob, gm.score, x_init, 0.01, 7, gen(1), keep=1)
    assert r_mala.nfe == 8 and r_mala.trajectory.shape == (8, 50, 2)
    torch.testing.assert_close(mala(gm.log_prob, gm.score, x_init, 0.01, 7, gen(1)).x, r_mala.x)


def test_bad_inputs_raise_clear_errors() -> None:
    score = exact_noised_score(GaussianMixture.isotropic([1.0], [[0.0]], 1.0))
    x = torch.zeros(3, 1)
    with pytest.raises(ValueError, match="descending"):
        annealed_langevin(score, x, [0.1, 1.0], 0.01, 2)
    with pytest.raises(ValueError, match="descending"):
        annealed_langevin(score, x, [1.0, 1.0], 0.01, 2)
    with pytest.raises(ValueError, match="positive"):
        annealed_langevin(score, x, [1.0, -0.1], 0.01, 2)
    with pytest.raises(ValueError, match="step size"):
        annealed_langevin(score, x, [1.0, 0.1], 0.0, 2)
    with pytest.raises(ValueError, match="n_steps_each"):
        annealed_langevin(score, x, [1.0, 0.1], 0.01, 0)
    with pytest.raises(ValueError, match="step size"):
        ula(std_normal_score, x, -0.1, 5)
    with pytest.raises(ValueError, match="step size"):
        mala(std_normal_log_prob, std_normal_score, x, 0.0, 5)
    with pytest.raises(ValueError, match="n_steps"):
        ula(std_normal_score, x, 0.1, 0)
    with pytest.raises(ValueError, match="sigma_max > sigma_min"):
        geometric_sigmas(0.1, 1.0, 10)
    with pytest.raises(ValueError, match="gamma"):
        step_size_rule(0.01, 5, gamma=1.0)


# --------------------------------------------------------------------------- NCSN rules
def test_geometric_sigmas() -> None:
    sigmas = geometric_sigmas(50.0, 0.01, 232)
    assert sigmas.shape == (232,)
    assert sigmas[0] == pytest.approx(50.0) and sigmas[-1] == pytest.approx(0.01)
    ratios = sigmas[:-1] / sigmas[1:]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 5000 ** (1 / 231)))


def test_sigma_max_rule_is_the_largest_pairwise_distance() -> None:
    x = torch.randn(700, 3, generator=gen(0)) * torch.tensor([1.0, 2.0, 0.5])
    assert sigma_max_rule(x) == pytest.approx(pdist(x.double().numpy()).max(), rel=1e-12)
    sub = sigma_max_rule(x, max_points=200, generator=gen(1))  # a subset: a lower bound
    assert sub <= pdist(x.double().numpy()).max() + 1e-9
    assert sub > 0.5 * pdist(x.double().numpy()).max()


def test_n_levels_rule_meets_the_overlap_criterion() -> None:
    # CIFAR-10 in improved NCSN: D = 3072, σ from 50 to 0.01; the paper used L = 232
    assert n_levels_criterion(1.0, 3072) == pytest.approx(0.9973, abs=1e-4)  # Φ(3) − Φ(−3)
    for sigma_max, sigma_min, dim in [(50.0, 0.01, 3072), (1.0, 0.01, 784), (5.0, 0.05, 10)]:
        n = n_levels_rule(sigma_max, sigma_min, dim)
        gamma = (sigma_max / sigma_min) ** (1 / (n - 1))
        assert n_levels_criterion(gamma, dim) >= 0.5
        if n > 2:  # one level fewer would break it: the rule picks the fewest levels
            gamma_fewer = (sigma_max / sigma_min) ** (1 / (n - 2))
            assert n_levels_criterion(gamma_fewer, dim) < 0.5
    assert abs(n_levels_rule(50.0, 0.01, 3072) - 232) / 232 < 0.1
    assert n_levels_rule(5.0, 0.01, 2) == 2  # no constraint in low dimension


def test_step_size_rule_reproduces_improved_ncsn_cifar10() -> None:
    gamma = 5000 ** (1 / 231)  # CIFAR-10: 232 levels from 50 to 0.01, T = 5
    h = step_size_rule(0.01, 5, gamma)
    # the paper's step 6.2e-6 is for x + α s + √(2α) z, i.e. h = 2 × 6.2e-6 here
    assert h == pytest.approx(2 * 6.2e-6, rel=0.02)
    ratio = variance_ratio(h, 0.01, 5, gamma)
    assert 1 < ratio < 1.06  # close to one; exactly one is out of reach (a minimum)
    for factor in (0.9, 1.1):
        assert variance_ratio(h * factor, 0.01, 5, gamma) > ratio
    # the optimum depends on h/σ_L² only
    assert step_size_rule(0.1, 5, gamma) == pytest.approx(100 * h, rel=1e-6)
    # more steps per level: a smaller step gets closer to one
    h_100 = step_size_rule(0.01, 100, gamma)
    assert h_100 < h and variance_ratio(h_100, 0.01, 100, gamma) < ratio


def test_variance_ratio_matches_annealed_langevin_on_a_point_mass() -> None:
    """The data is a point at 0, so p_σ = N(0, σ²): start at level i − 1's law and run the
    module's sampler for K steps at level i; the variance ratio is Prop. 3 of improved
    NCSN in this module's step convention."""
    n, n_steps, gamma, sigma_min = 100_000, 3, 1.5, 0.1
    h = 0.3 * sigma_min**2  # large enough for the ratio to differ from 1 and from γ²
    sigmas = torch.tensor([gamma * sigma_min, sigma_min], dtype=torch.float64)
    x_init = gamma**2 * sigma_min * torch.randn(n, 1, generator=gen(0))  # σ_0 = γ σ_1

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return -x / sigma[:, None] ** 2

    res = annealed_langevin(score, x_init, sigmas, h, n_steps, gen(1), keep=1, denoise_last=False)
    expected = variance_ratio(h, sigma_min, n_steps, gamma)
    # after the K steps of the first level (not the last: h_1 = h σ_1² / σ_L² is tested)
    v = float(res.trajectory[n_steps].var()) / float(sigmas[0]) ** 2
    assert abs(v - expected) < N_SE * var_se(expected, n), (v, expected)
    assert abs(expected - 1) > 10 * var_se(expected, n) and abs(expected - gamma**2) > 0.5
    # the final step is Tweedie's denoiser E[x | x̃] = x̃ + σ_L² s(x̃, σ_L), here exactly 0
    res = annealed_langevin(score, x_init, sigmas, h, n_steps, gen(1))
    assert res.x.abs().max() < 1e-6


# --------------------------------------------------------------------------- NCSN
@pytest.mark.slow
def test_ncsn_end_to_end_on_moons() -> None:
    """Train a noise-conditional score with the NCSN loss and sample it with annealed
    Langevin: the MMD to the data is within a factor 5 of what the exact score achieves
    with the same sampler and noise (or of the floor, whichever is larger). The EMA of
    the weights (improved NCSN, technique 5) matters: the raw weights are ~10x worse."""
    gm, n, sigma_min = toys.twin("moons"), 2000, 0.02
    data = gm.sample(20_000, gen(0))
    sigma_max = sigma_max_rule(data, generator=gen(0))
    sigmas = geometric_sigmas(sigma_max, sigma_min, 10)
    torch.manual_seed(0)
    g = gen(1)
    result = train(
        NoiseConditionalScore(MLP(dim=2, hidden=64, depth=2)),
        lambda m, x: multi_noise_dsm(m, x, sigmas, generator=g),
        random_batches(data, batch_size=256, generator=gen(2)),
        steps=1000,
        lr=3e-3,
        ema_decay=0.99,
        progress=False,
    )
    x_init = sigma_max * torch.randn(n, 2, generator=gen(3))
    h = sigma_min**2
    learned = annealed_langevin(result.best, x_init, sigmas, h, 10, gen(4)).x
    exact = annealed_langevin(exact_noised_score(gm), x_init, sigmas, h, 10, gen(4)).x
    ref = gm.sample(n, gen(5))
    g_floor = gen(4)  # a seeded floor: the test is deterministic
    floor = metrics.floor(lambda m: gm.sample(m, g_floor), n, repeats=5)["mmd"]
    mmd_learned, mmd_exact = metrics.mmd(learned, ref), metrics.mmd(exact, ref)
    assert mmd_learned < 5 * max(mmd_exact, floor), (mmd_learned, mmd_exact, floor)


def test_rules_return_plain_floats() -> None:
    assert isinstance(step_size_rule(0.01, 5, 1.1), float)
    assert np.isfinite(step_size_rule(0.01, 5, 1.1))
