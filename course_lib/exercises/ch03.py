"""Exercises of chapter 3: DDPM."""

from __future__ import annotations

import math

import torch

from course_lib import ddpm, schedules
from course_lib.exercises import Mistake, exercise, expect_close


# --------------------------------------------------------------------------- prediction
@exercise(
    "ch03.predict_snr_crossing",
    solution=260,
    wrong=500,
    hint="SNR < 1 means alpha_bar_t < 1/2, and -log alpha_bar_t ≈ the sum of the betas so far.",
)
def check_predict_snr_crossing(prediction) -> str:
    """The learner predicts the first step ``t`` at which the linear schedule (``T =
    1000``, ``beta`` from ``1e-4`` to ``0.02``) has ``SNR_t = alpha_bar_t / (1 -
    alpha_bar_t) < 1``."""
    if prediction is None:
        raise NotImplementedError
    value = float(prediction)
    if 0 < value < 1:
        raise Mistake("give a step t between 1 and 1000, not a fraction of T.")
    if abs(value - 500) <= 30:
        raise Mistake(
            "halfway is where the *cosine* schedule crosses; the linear betas add up faster "
            "than you think."
        )
    if not abs(value - 260) <= 40:  # also rejects NaN
        raise Mistake(f"t = {value:.0f} is not it: when does the sum of the betas reach ln 2?")
    return (
        "t = 260: alpha_bar_t ≈ exp(-Σβ) = 1/2 once 1e-4 t + 1e-5 t² ≈ ln 2. The last 740 "
        "steps all have more noise than signal."
    )


# --------------------------------------------------------------------------- q_sample
def _q_sample(x0: torch.Tensor, t: torch.Tensor, schedule, eps: torch.Tensor) -> torch.Tensor:
    ab = schedule.alpha_bar.to(x0.dtype)[t].reshape(-1, *[1] * (x0.ndim - 1))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def _wrong_q_sample(x0, t, schedule, eps):
    ab = schedule.alpha_bar.to(x0.dtype)[t].reshape(-1, *[1] * (x0.ndim - 1))
    return ab * x0 + (1 - ab) * eps  # variances used as scales


@exercise(
    "ch03.q_sample",
    solution=_q_sample,
    wrong=_wrong_q_sample,
    hint="x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps; reshape alpha_bar[t] to "
    "(B, 1, ..., 1) so it broadcasts.",
)
def check_q_sample(fn) -> str:
    """``fn(x0, t, schedule, eps)`` returns ``x_t`` for a batch ``x0`` ``(B, ...)``, integer
    steps ``t`` ``(B,)`` and noise ``eps`` of the shape of ``x0``."""
    sched = schedules.linear_schedule(1000)
    g = torch.Generator().manual_seed(0)
    for shape in [(6, 2), (4, 1, 5, 5)]:
        x0 = torch.randn(shape, generator=g, dtype=torch.float64)
        eps = torch.randn(shape, generator=g, dtype=torch.float64)
        t = torch.randint(1, 1001, (shape[0],), generator=g)
        got = fn(x0.clone(), t, sched, eps.clone())
        if got is None:
            raise Mistake("return x_t instead of None.")
        got = torch.as_tensor(got, dtype=torch.float64)
        want = ddpm.q_sample(x0, t, sched, eps)
        ab = sched.alpha_bar[t].reshape(-1, *[1] * (x0.ndim - 1))
        if got.shape == want.shape and torch.allclose(got, ab * x0 + (1 - ab) * eps):
            raise Mistake(
                "alpha_bar_t and 1 - alpha_bar_t are *variances*; the coefficients are their "
                "square roots."
            )
        if got.shape == want.shape and torch.allclose(got, ab.sqrt() * x0 + (1 - ab.sqrt()) * eps):
            raise Mistake("the noise scale is sqrt(1 - alpha_bar_t), not 1 - sqrt(alpha_bar_t).")
        expect_close(got, want, f"x_t for x0 of shape {shape}")
    return (
        "x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε: one Gaussian draw replaces t steps of the chain, and "
        "Var(x_t) stays 1 for unit-variance data."
    )


# --------------------------------------------------------------------------- one ancestral step
def _ancestral_step(xt: torch.Tensor, eps_hat: torch.Tensor, t: int, schedule, z: torch.Tensor):
    beta, alpha, ab = (
        float(schedule.beta[t]),
        float(schedule.alpha[t]),
        float(schedule.alpha_bar[t]),
    )
    mean = (xt - beta / (1 - ab) ** 0.5 * eps_hat) / alpha**0.5
    return mean + beta**0.5 * z if t > 1 else mean


def _wrong_ancestral_step(xt, eps_hat, t, schedule, z):
    beta, alpha, ab = (
        float(schedule.beta[t]),
        float(schedule.alpha[t]),
        float(schedule.alpha_bar[t]),
    )
    mean = (xt - beta / (1 - ab) * eps_hat) / alpha**0.5  # forgot the square root
    return mean + beta**0.5 * z if t > 1 else mean


@exercise(
    "ch03.ancestral_step",
    solution=_ancestral_step,
    wrong=_wrong_ancestral_step,
    hint="x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) + "
    "sqrt(beta_t) z, and no noise at t = 1.",
)
def check_ancestral_step(fn) -> str:
    """``fn(xt, eps_hat, t, schedule, z)`` returns ``x_{t-1}`` of DDPM Algorithm 2 with
    ``sigma_t^2 = beta_t``, the given noise ``z`` and the predicted noise ``eps_hat``."""
    sched = schedules.linear_schedule(1000)
    g = torch.Generator().manual_seed(1)
    xt = torch.randn(8, 2, generator=g, dtype=torch.float64)
    eps_hat = torch.randn(8, 2, generator=g, dtype=torch.float64)
    z = torch.randn(8, 2, generator=g, dtype=torch.float64)
    for t in [1000, 400, 2, 1]:
        got = fn(xt.clone(), eps_hat.clone(), t, sched, z.clone())
        if got is None:
            raise Mistake("return x_{t-1} instead of None.")
        got = torch.as_tensor(got, dtype=torch.float64)
        # the reference: the posterior mean at the predicted x0 (eqs. 7 and 11)
        x0_hat = ddpm.x0_from_eps(xt, eps_hat, t, sched)
        mean = ddpm.q_posterior(x0_hat, xt, t, sched).mean
        want = mean + float(sched.beta[t]) ** 0.5 * z if t > 1 else mean
        if (
            t == 1
            and got.shape == want.shape
            and torch.allclose(got, mean + float(sched.beta[1]) ** 0.5 * z)
        ):
            raise Mistake("at t = 1 the step adds no noise: x_0 is the mean itself.")
        if t > 1 and got.shape == want.shape and torch.allclose(got, mean):
            raise Mistake(f"the noise sigma_t z is missing at t = {t}.")
        expect_close(got, want, f"x_(t-1) at t = {t}")
    return (
        "x_{t-1} = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t + √β_t z: the posterior mean at the predicted "
        "x0 (eq. 11), plus fresh noise except at the last step."
    )


# --------------------------------------------------------------------------- derive the posterior
def _posterior(x0, xt, alpha_bar_t: float, alpha_bar_prev: float):
    beta = 1 - alpha_bar_t / alpha_bar_prev
    c0 = alpha_bar_prev**0.5 * beta / (1 - alpha_bar_t)
    ct = (1 - beta) ** 0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    return c0 * x0 + ct * xt, (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta


def _wrong_posterior(x0, xt, alpha_bar_t, alpha_bar_prev):
    mean, _ = _posterior(x0, xt, alpha_bar_t, alpha_bar_prev)
    return mean, 1 - alpha_bar_t / alpha_bar_prev  # the forward step's variance beta_t


# pairs (alpha_bar_t, alpha_bar_prev): one step of the linear schedule near the data and
# far from it, and long strides (the same formulas hold for any alpha_bar_prev > alpha_bar_t)
_POSTERIOR_CASES = [(0.9999 * 0.9998, 0.9999), (0.3, 0.306), (0.2, 0.7), (0.01, 0.5)]


@exercise(
    "ch03.posterior",
    solution=_posterior,
    wrong=_wrong_posterior,
    hint="collect the exponent's terms in x_{t-1}: precision alpha_t / beta_t + 1 / (1 - "
    "alpha_bar_{t-1}); the mean is the linear coefficient over the precision.",
)
def check_posterior(fn) -> str:
    """``fn(x0, xt, alpha_bar_t, alpha_bar_prev)`` returns ``(mean, variance)`` of
    ``q(x_{t-1} | x_t, x0)`` (DDPM eqs. 6-7) with ``beta_t = 1 - alpha_bar_t /
    alpha_bar_prev``; the variance a number, the mean of the shape of ``x0``."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    xt = torch.randn(5, 2, generator=g, dtype=torch.float64)
    for ab_t, ab_prev in _POSTERIOR_CASES:
        got = fn(x0.clone(), xt.clone(), ab_t, ab_prev)
        if got is None or len(got) != 2:
            raise Mistake("return a pair (mean, variance).")
        mean, var = torch.as_tensor(got[0], dtype=torch.float64), float(got[1])
        # the reference: the course's q_posterior on the two-level schedule (prev, t)
        pair = schedules.DiscreteSchedule(torch.tensor([1.0, ab_prev, ab_t], dtype=torch.float64))
        want = ddpm.q_posterior(x0, xt, 2, pair)
        beta = 1 - ab_t / ab_prev
        if abs(var - beta) < 1e-12 * max(1.0, beta) and beta != float(want.variance):
            raise Mistake(
                "that is the forward step's variance beta_t; knowing x0 makes the step back "
                "more certain: beta_tilde_t = (1 - alpha_bar_prev) / (1 - alpha_bar_t) beta_t."
            )
        if not abs(var - float(want.variance)) <= 1e-9 + 1e-6 * float(want.variance):
            raise Mistake(
                f"the variance for alpha_bar_t = {ab_t:.6g}, alpha_bar_prev = {ab_prev:.6g} "
                f"should be {float(want.variance):.6g}, got {var:.6g}."
            )
        expect_close(mean, want.mean, f"the mean at alpha_bar_t = {ab_t:.6g}", atol=1e-9, rtol=1e-7)
    return (
        "β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) β_t and μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) x0 "
        "+ √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) x_t: Bayes with two Gaussians, for one step or a stride."
    )


# --------------------------------------------------------------------------- one term of the bound
def _kl_term(x0, x0_hat, xt, alpha_bar_t: float, alpha_bar_prev: float, sigma2: float):
    mean, var = _posterior(x0, xt, alpha_bar_t, alpha_bar_prev)
    mean_hat, _ = _posterior(x0_hat, xt, alpha_bar_t, alpha_bar_prev)
    d = x0.numel()
    r = var / sigma2
    return float(((mean - mean_hat) ** 2).sum() / (2 * sigma2) + d / 2 * (r - 1 - math.log(r)))


def _wrong_kl_term(x0, x0_hat, xt, alpha_bar_t, alpha_bar_prev, sigma2):
    mean, _ = _posterior(x0, xt, alpha_bar_t, alpha_bar_prev)
    mean_hat, _ = _posterior(x0_hat, xt, alpha_bar_t, alpha_bar_prev)
    return float(((mean - mean_hat) ** 2).sum() / (2 * sigma2))  # the variance part dropped


@exercise(
    "ch03.kl_term",
    solution=_kl_term,
    wrong=_wrong_kl_term,
    hint="KL(N(m1, v1 I) || N(m2, v2 I)) in D dimensions = |m1 - m2|^2 / (2 v2) + D/2 (v1/v2 "
    "- 1 - log(v1/v2)); both means are mu_tilde, one at x0 and one at x0_hat.",
)
def check_kl_term(fn) -> str:
    """``fn(x0, x0_hat, xt, alpha_bar_t, alpha_bar_prev, sigma2)`` returns one term of the
    bound, ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` in nats, for
    one sample ``(D,)`` and the model ``N(mu_tilde(x_t, x0_hat), sigma2 I)``."""
    g = torch.Generator().manual_seed(4)
    d = 6
    x0 = torch.randn(d, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    xt = torch.randn(d, generator=g, dtype=torch.float64)
    for ab_t, ab_prev in _POSTERIOR_CASES[1:]:
        beta = 1 - ab_t / ab_prev
        beta_tilde = (1 - ab_prev) / (1 - ab_t) * beta
        for sigma2 in (beta_tilde, beta):
            got = fn(x0.clone(), x0_hat.clone(), xt.clone(), ab_t, ab_prev, sigma2)
            if got is None:
                raise Mistake("return the KL divergence, a number in nats.")
            got = float(got)
            want = _kl_term(x0, x0_hat, xt, ab_t, ab_prev, sigma2)
            mean_only = _wrong_kl_term(x0, x0_hat, xt, ab_t, ab_prev, sigma2)
            if sigma2 != beta_tilde and math.isclose(got, mean_only, rel_tol=1e-6):
                raise Mistake(
                    "with sigma_t^2 = beta_t the two variances differ, and the KL has a "
                    "second part, D/2 (r - 1 - log r) with r = beta_tilde / sigma^2."
                )
            if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):  # also rejects NaN
                raise Mistake(
                    f"for alpha_bar_t = {ab_t}, alpha_bar_prev = {ab_prev}, sigma^2 = "
                    f"{sigma2:.4g} the KL is {want:.6g} nats, got {got:.6g}."
                )
    return (
        "L_{t−1} = |μ̃(x0) − μ̃(x̂0)|²/(2σ_t²) + D/2 (β̃/σ_t² − 1 − log β̃/σ_t²): a weighted squared "
        "error c0² |x0 − x̂0|²/(2σ_t²) plus a constant that vanishes when σ_t² = β̃_t."
    )
