"""Exercises of chapter 3: DDPM."""

from __future__ import annotations

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
