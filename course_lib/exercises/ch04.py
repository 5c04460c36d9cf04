"""Exercises of chapter 4: DDIM."""

from __future__ import annotations

import math

import torch

from course_lib.exercises import Mistake, exercise, expect_close


# --------------------------------------------------------------------------- sigma(eta)
def _ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    return eta * math.sqrt(
        (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    )


def _wrong_ddim_sigma(alpha_bar_t, alpha_bar_prev, eta):
    return eta * math.sqrt(1 - alpha_bar_t / alpha_bar_prev)  # beta_t of the pair: DDPM's sigma_hat


_SIGMA_CASES = [(0.5, 0.6, 1.0), (0.02, 0.3, 0.5), (0.9, 0.999, 1.0), (0.3, 0.31, 0.0)]


@exercise(
    "ch04.ddim_sigma",
    solution=_ddim_sigma,
    wrong=_wrong_ddim_sigma,
    hint="eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev) (DDIM eq. 16).",
)
def check_ddim_sigma(fn) -> str:
    """``fn(alpha_bar_t, alpha_bar_prev, eta)`` returns DDIM's reverse-step std
    ``sigma_t(eta)`` for a step from ``t`` to ``t_prev < t``."""
    for ab_t, ab_prev, eta in _SIGMA_CASES:
        got = fn(ab_t, ab_prev, eta)
        if got is None:
            raise Mistake("return sigma_t (a number) instead of None.")
        got = float(got)
        want = _ddim_sigma(ab_t, ab_prev, eta)
        if eta > 0 and math.isclose(got, want**2, rel_tol=1e-6):
            raise Mistake("that is the variance sigma_t²; return the standard deviation sigma_t.")
        if eta > 0 and math.isclose(got, _wrong_ddim_sigma(ab_t, ab_prev, eta), rel_tol=1e-6):
            raise Mistake(
                "that is sqrt(beta) of the step, DDPM's larger choice sigma_hat; DDIM's sigma "
                "also carries the factor sqrt((1 - ab_prev) / (1 - ab_t)) < 1."
            )
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
            raise Mistake(
                f"for alpha_bar_t = {ab_t}, alpha_bar_prev = {ab_prev}, eta = {eta} expected "
                f"{want:.6f}, got {got:.6f}."
            )
    return (
        "σ_t(η) = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_prev): η = 1 is DDPM's posterior "
        "standard deviation √β̃_t, η = 0 makes the step deterministic."
    )


# --------------------------------------------------------------------------- one step
def _ddim_step(
    x_t: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float
) -> torch.Tensor:
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev) * eps_hat


def _wrong_ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_t) * eps_hat  # wrong level


@exercise(
    "ch04.ddim_step",
    solution=_ddim_step,
    wrong=_wrong_ddim_step,
    hint="predict x0 from x_t and eps_hat, then re-noise it to the level of t_prev "
    "with the same eps_hat: sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat.",
)
def check_ddim_step(fn) -> str:
    """``fn(x_t, eps_hat, alpha_bar_t, alpha_bar_prev)`` returns the deterministic
    (``eta = 0``) DDIM update ``x_{t_prev}`` for a given noise prediction."""
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(32, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(32, 2, generator=g, dtype=torch.float64)
    for ab_t, ab_prev in [(0.1, 0.4), (0.5, 0.9), (0.98, 1.0)]:
        got = fn(x_t.clone(), eps.clone(), ab_t, ab_prev)
        if got is None:
            raise Mistake("return x_{t_prev} instead of None.")
        got = torch.as_tensor(got, dtype=torch.float64)
        x0_hat = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        if ab_prev < 1 and got.shape == x_t.shape and torch.allclose(got, x0_hat):
            raise Mistake("that is x0_hat; the step goes to t_prev, which still carries noise.")
        if got.shape == x_t.shape and torch.allclose(
            got, _wrong_ddim_step(x_t, eps, ab_t, ab_prev)
        ):
            raise Mistake(
                "the noise direction must be scaled to the noise level of t_prev: "
                "sqrt(1 - alpha_bar_prev), not sqrt(1 - alpha_bar_t)."
            )
        expect_close(got, _ddim_step(x_t, eps, ab_t, ab_prev), f"the step {ab_t} -> {ab_prev}")
    return (
        "x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, then x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂: "
        "the same noise ε̂, re-scaled to the lower level. At ᾱ_prev = 1 it returns x̂₀."
    )


# --------------------------------------------------------------------------- slerp
def _slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    cos = (z0 * z1).sum(1, keepdim=True) / (
        z0.norm(dim=1, keepdim=True) * z1.norm(dim=1, keepdim=True)
    )
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    parallel = sin < 1e-6  # sin(theta) -> 0: the arc is the straight line
    w0 = torch.where(parallel, 1 - alpha, torch.sin((1 - alpha) * theta) / sin.clamp_min(1e-6))
    w1 = torch.where(parallel, alpha, torch.sin(alpha * theta) / sin.clamp_min(1e-6))
    return w0 * z0 + w1 * z1


def _wrong_slerp(z0, z1, alpha):
    return (1 - alpha) * z0 + alpha * z1  # the straight line


def _naive_slerp(z0, z1, alpha):
    cos = (z0 * z1).sum(1, keepdim=True) / (
        z0.norm(dim=1, keepdim=True) * z1.norm(dim=1, keepdim=True)
    )
    theta = torch.arccos(cos.clamp(-1, 1))
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


@exercise(
    "ch04.slerp",
    solution=_slerp,
    wrong=_wrong_slerp,
    hint="theta = arccos(<z0, z1> / (|z0| |z1|)) per row; weights sin((1 - a) theta) / "
    "sin(theta) and sin(a theta) / sin(theta).",
)
def check_slerp(fn) -> str:
    """``fn(z0, z1, alpha)`` returns the spherical interpolation between the rows of
    ``z0`` and ``z1`` (``(B, D)``) at a float ``alpha`` in ``[0, 1]``."""
    from course_lib import ddim

    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(16, 64, generator=g, dtype=torch.float64)
    z1 = torch.randn(16, 64, generator=g, dtype=torch.float64)
    # the last rows are nearly parallel and identical pairs: sin(theta) -> 0 there
    z1[-2] = z0[-2] + 1e-5 * torch.randn(64, generator=g, dtype=torch.float64)  # θ ≈ 1e-5
    z1[-1] = z0[-1]
    for alpha in (0.0, 0.3, 0.5, 1.0):
        got = fn(z0.clone(), z1.clone(), alpha)
        if got is None:
            raise Mistake("return the interpolated latents instead of None.")
        got = torch.as_tensor(got, dtype=torch.float64)
        if got.shape == z0.shape and not torch.isfinite(got).all():
            raise Mistake(
                "NaN or inf for (nearly) parallel latents: there sin(theta) -> 0 and 0/0 "
                "appears. Where sin(theta) is tiny, use the straight line (1 - a) z0 + a z1."
            )
        if alpha == 0.5 and got.shape == z0.shape and torch.allclose(got, 0.5 * (z0 + z1)):
            raise Mistake(
                "that is the straight line: its midpoint is too short, about 0.71 of the "
                "norm of the end points for independent latents. Follow the great circle."
            )
        expect_close(got, ddim.slerp(z0, z1, alpha), f"slerp at alpha = {alpha}")
    return (
        "the interpolant stays on the arc between the two latents, so its norm stays near "
        "√D, where Gaussian latents live."
    )


# --------------------------------------------------------------------------- eta = 1 is DDPM
def _ddim_coefficients(alpha_bar_t: float, alpha_bar_prev: float, eta: float):
    sigma = _ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    coef_xt = math.sqrt((1 - alpha_bar_prev - sigma**2) / (1 - alpha_bar_t))
    coef_x0 = math.sqrt(alpha_bar_prev) - coef_xt * math.sqrt(alpha_bar_t)
    return coef_x0, coef_xt, sigma


def _wrong_ddim_coefficients(alpha_bar_t, alpha_bar_prev, eta):
    sigma = _ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    coef_xt = math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t))  # sigma^2 left out
    return math.sqrt(alpha_bar_prev) - coef_xt * math.sqrt(alpha_bar_t), coef_xt, sigma


@exercise(
    "ch04.ddim_coefficients",
    solution=_ddim_coefficients,
    wrong=_wrong_ddim_coefficients,
    hint="expand eq. 7's mean: the noise direction (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t) "
    "carries x_t and x0; collect the two coefficients.",
)
def check_ddim_coefficients(fn) -> str:
    """``fn(alpha_bar_t, alpha_bar_prev, eta)`` returns ``(coef_x0, coef_xt, sigma)``:
    DDIM's ``q_sigma(x_prev | x_t, x0) = N(coef_x0 x0 + coef_xt x_t, sigma^2 I)`` (eq. 7)
    with ``sigma = sigma_t(eta)`` (eq. 16)."""
    for ab_t, ab_prev, eta in [
        (0.5, 0.6, 1.0),
        (0.02, 0.3, 0.5),
        (0.9, 0.999, 1.0),
        (0.3, 0.7, 0.0),
    ]:
        got = fn(ab_t, ab_prev, eta)
        if got is None or len(got) != 3:
            raise Mistake("return the three numbers (coef_x0, coef_xt, sigma).")
        got = tuple(float(v) for v in got)
        want = _ddim_coefficients(ab_t, ab_prev, eta)
        for name, g_v, w_v in zip(("coef_x0", "coef_xt", "sigma"), got, want, strict=True):
            if not math.isclose(g_v, w_v, rel_tol=1e-6, abs_tol=1e-12):  # also rejects NaN
                raise Mistake(
                    f"{name} for alpha_bar_t = {ab_t}, alpha_bar_prev = {ab_prev}, eta = {eta} "
                    f"should be {w_v:.6f}, got {g_v:.6f}."
                    + (
                        " Did you keep the fresh noise sigma^2 out of the x_t coefficient? The "
                        "noise direction carries 1 - alpha_bar_prev - sigma^2 of the variance."
                        if name != "sigma" and eta > 0
                        else ""
                    )
                )
    return (
        "coef_xt = √((1−ᾱ_prev−σ²)/(1−ᾱ_t)), coef_x0 = √ᾱ_prev − coef_xt √ᾱ_t; at η = 1 these "
        "are DDPM's c0 and c_t and σ² = β̃: the posterior of chapter 3, for any stride."
    )


# --------------------------------------------------------------------------- one inversion step
def _invert_step(
    x: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: float, alpha_bar_next: float
) -> torch.Tensor:
    x_bar = x / math.sqrt(alpha_bar_t)
    sig, sig_next = (math.sqrt((1 - a) / a) for a in (alpha_bar_t, alpha_bar_next))
    return math.sqrt(alpha_bar_next) * (x_bar + (sig_next - sig) * eps_hat)


def _wrong_invert_step(x, eps_hat, alpha_bar_t, alpha_bar_next):
    sig, sig_next = (math.sqrt((1 - a) / a) for a in (alpha_bar_t, alpha_bar_next))
    return x + (sig_next - sig) * eps_hat  # the Euler step applied to x, not to x_bar


@exercise(
    "ch04.invert_step",
    solution=_invert_step,
    wrong=_wrong_invert_step,
    hint="go to x_bar = x / sqrt(alpha_bar), take the Euler step up in sigma_bar, come back "
    "with sqrt(alpha_bar_next).",
)
def check_invert_step(fn) -> str:
    """``fn(x, eps_hat, alpha_bar_t, alpha_bar_next)`` returns the deterministic step *up*
    from level ``t`` to a noisier level (``alpha_bar_next < alpha_bar_t``) with the noise
    prediction ``eps_hat``: one Euler step of the probability-flow ODE (DDIM eq. 14)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(32, 2, generator=g, dtype=torch.float64)
    for ab_t, ab_next in [(1.0, 0.98), (0.9, 0.4), (0.3, 0.01)]:
        got = fn(x.clone(), eps.clone(), ab_t, ab_next)
        if got is None:
            raise Mistake("return the noisier point instead of None.")
        got = torch.as_tensor(got, dtype=torch.float64)
        if got.shape == x.shape and torch.allclose(got, _wrong_invert_step(x, eps, ab_t, ab_next)):
            raise Mistake(
                "the Euler step is exact in x_bar = x / sqrt(alpha_bar), not in x: rescale "
                "before the step and after it."
            )
        expect_close(got, _invert_step(x, eps, ab_t, ab_next), f"the step {ab_t} -> {ab_next}")
        # with the same eps_hat, the DDIM step down undoes it exactly
        back = _ddim_step(got, eps, ab_next, ab_t)
        expect_close(back, x, f"DDIM's step back from {ab_next} to {ab_t}")
    return (
        "x_next = √ᾱ_next (x/√ᾱ_t + (σ̄_next − σ̄_t) ε̂) = √ᾱ_next x̂0 + √(1−ᾱ_next) ε̂: the DDIM "
        "step with the levels swapped, so decoding undoes it exactly when ε̂ is the same."
    )


# --------------------------------------------------------------------------- predictions
@exercise(
    "ch04.predict_lerp_norm",
    solution=0.71,
    wrong=1.0,
    hint="the variance of (z0 + z1) / 2 per coordinate, for independent z0, z1 ~ N(0, 1).",
)
def check_predict_lerp_norm(prediction) -> str:
    """The learner predicts ``||(z0 + z1) / 2|| / sqrt(D)`` for independent
    ``z0, z1 ~ N(0, I_D)`` with ``D = 784``."""
    if prediction is None:
        raise NotImplementedError
    value = float(prediction)
    if abs(value - 1.0) < 0.05:
        raise Mistake(
            "1 is the norm ratio of each end point (||z|| ≈ √D); the average of two "
            "independent vectors is shorter."
        )
    if abs(value - 0.5) < 0.05:
        raise Mistake("averaging halves the vectors, but the two halves are not aligned.")
    if not abs(value - math.sqrt(0.5)) <= 0.04:  # also rejects NaN
        raise Mistake(f"{value:.2f} is not it: compute Var((z0 + z1) / 2) per coordinate.")
    return (
        "√(1/2) ≈ 0.71: each coordinate of (z0 + z1)/2 has variance 1/4 + 1/4 = 1/2, so the "
        "midpoint has norm √(D/2), a place where N(0, I) latents almost never are."
    )


@exercise(
    "ch04.predict_consistency",
    solution="same",
    wrong="different",
    hint="with eta = 0 the sample is a deterministic function of x_T; what do the two "
    "grids approximate?",
)
def check_predict_consistency(prediction) -> str:
    """The learner predicts whether DDIM (``eta = 0``) from the same ``x_T`` with 10 and
    with 50 steps gives the ``"same"`` or a ``"different"`` digit."""
    if prediction is None:
        raise NotImplementedError
    answer = str(prediction).strip().lower()
    if answer not in ("same", "different"):
        raise Mistake('answer "same" or "different".')
    if answer == "different":
        raise Mistake(
            "with eta = 0 there is no fresh noise: both runs integrate the same ODE from the "
            "same start, with a coarser or finer grid. Only the details can differ."
        )
    return (
        "the same digit, mostly: both are discretisations of one ODE from one x_T, so x_T "
        "decides the sample's content and the number of steps only its sharpness."
    )
