"""Exercises of chapter 5: SDEs, the probability-flow ODE, likelihoods and EDM."""

from __future__ import annotations

import math

import torch

from course_lib.exercises import Mistake, exercise, expect_close


def _tensor(got, what: str) -> torch.Tensor:
    if got is None:
        raise Mistake(f"return {what} instead of None.")
    return torch.as_tensor(got, dtype=torch.float64)


# --------------------------------------------------------------------------- PF-ODE drift
def _pf_drift(f: torch.Tensor, g: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    return f - 0.5 * g[:, None] ** 2 * score


def _wrong_pf_drift(f, g, score):
    return f - g[:, None] ** 2 * score  # Anderson's reverse-SDE drift (λ = 1)


@exercise(
    "ch05.pf_drift",
    solution=_pf_drift,
    wrong=_wrong_pf_drift,
    hint="u = f - ½ g² ∇log p_t: half of the reverse SDE's score term, and no noise.",
)
def check_pf_drift(fn) -> str:
    """``fn(f, g, score)`` returns the probability-flow drift ``u = f - ½ g² score`` for
    a batch: ``f`` and ``score`` of shape ``(B, D)``, ``g`` of shape ``(B,)``."""
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    g = torch.rand(16, generator=gen, dtype=torch.float64) * 3 + 0.1
    score = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    got = _tensor(fn(f.clone(), g.clone(), score.clone()), "the drift u")
    if got.shape == f.shape and torch.allclose(got, _wrong_pf_drift(f, g, score)):
        raise Mistake(
            "that is the drift of Anderson's reverse SDE, f - g² ∇log p, which needs the "
            "noise g dw̄ beside it. Without noise only half the score term is kept."
        )
    if got.shape == f.shape and torch.allclose(got, f + 0.5 * g[:, None] ** 2 * score):
        raise Mistake("the sign of the score term: the ODE moves *up* the density as t falls.")
    if got.shape == f.shape and torch.allclose(got, f - 0.5 * g[:, None] * score):
        raise Mistake("the diffusion enters squared: ½ g(t)², not ½ g(t).")
    expect_close(got, _pf_drift(f, g, score), "the drift u")
    return (
        "u = f − ½g²∇log p_t: the continuity equation ∂_t p = −∇·(u p) is the Fokker–Planck "
        "equation rewritten, so the ODE carries the same marginals p_t as the SDE."
    )


# ------------------------------------------------------------------------ bits per dim
def _bits_per_dim(log_p: torch.Tensor, dim: int) -> torch.Tensor:
    return -log_p / (dim * math.log(2)) + math.log2(128)


def _wrong_bits_per_dim(log_p, dim):
    return -log_p / (dim * math.log(2)) + math.log2(256)  # the offset of [0, 1]-scaled data


@exercise(
    "ch05.bits_per_dim",
    solution=_bits_per_dim,
    wrong=_wrong_bits_per_dim,
    hint="-log p / (D ln 2) turns nats into bits per dimension; the data were scaled "
    "from [0, 256) to [-1, 1], a factor 1/128 per dimension.",
)
def check_bits_per_dim(fn) -> str:
    """``fn(log_p, dim)`` returns bits/dim on the 8-bit scale for the log-density
    ``log_p`` (nats, shape ``(B,)``) of dequantised images scaled to ``[-1, 1]``."""
    log_p = torch.tensor([1500.0, -200.0, 0.0, 2710.5], dtype=torch.float64)
    dim = 784
    got = _tensor(fn(log_p.clone(), dim), "the bits/dim")
    want = _bits_per_dim(log_p, dim)
    if got.shape == want.shape:
        diff = (got - want).mean().item()
        if torch.allclose(got - want, torch.full_like(want, diff), atol=1e-9):
            for wrong_offset, why in [
                (
                    1.0,
                    "8 = log2(256) is the offset for data scaled to [0, 1]; ours are on "
                    "[-1, 1], so the offset is log2(128) = 7",
                ),
                (
                    -7.0,
                    "without an offset this is the density on [-1, 1]; on the 8-bit scale "
                    "every dimension is 128 times wider: add log2(128) = 7",
                ),
            ]:
                if abs(diff - wrong_offset) < 1e-6:
                    raise Mistake(f"{why}.")
        if torch.allclose(got, log_p / (dim * math.log(2)) + 7):
            raise Mistake("bits/dim is a *negative* log-likelihood: −log p.")
        if torch.allclose(got, -log_p / dim + 7):
            raise Mistake("−log p is in nats; divide by ln 2 for bits.")
    expect_close(got, want, "bits/dim")
    return (
        "bpd = −log p/(D ln 2) + log2(128): the density on [−1, 1] is 128^D times the "
        "density on the [0, 256) scale, where every 8-bit bin has volume one."
    )


# ------------------------------------------------------------------- EDM coefficients
def _edm_coefficients(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt()


def _wrong_edm_coefficients(sigma, sigma_data):
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma / total.sqrt(), 1 / total.sqrt()  # c_out without σ_data


@exercise(
    "ch05.edm_coefficients",
    solution=_edm_coefficients,
    wrong=_wrong_edm_coefficients,
    hint="c_in makes Var(c_in x̂) = 1; c_skip minimises the variance of the target "
    "(x0 - c_skip x̂); c_out is that target's standard deviation.",
)
def check_edm_coefficients(fn) -> str:
    """``fn(sigma, sigma_data)`` returns EDM's ``(c_skip, c_out, c_in)`` (Table 1) for a
    tensor of noise levels ``sigma`` and a float ``sigma_data``."""
    from course_lib import edm

    sigma = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)
    for sigma_data in (0.5, 1.0):
        got = fn(sigma.clone(), sigma_data)
        if got is None:
            raise Mistake("return the three coefficients (c_skip, c_out, c_in).")
        if len(got) != 3:
            raise Mistake(f"return three tensors (c_skip, c_out, c_in), got {len(got)}.")
        c_skip, c_out, c_in = (_tensor(c, "a coefficient") for c in got)
        p = edm.Preconditioning(sigma_data)
        if c_out.shape == sigma.shape and sigma_data != 1.0:
            if torch.allclose(c_out, sigma / torch.sqrt(sigma**2 + sigma_data**2)):
                raise Mistake("c_out = σ σ_data / √(σ² + σ_data²): the factor σ_data is missing.")
        if c_skip.shape == sigma.shape and torch.allclose(c_skip, 1 - p.c_skip(sigma)):
            raise Mistake("c_skip → 1 as σ → 0 (keep the input when it is nearly clean).")
        expect_close(c_skip, p.c_skip(sigma), f"c_skip at σ_data = {sigma_data}")
        expect_close(c_out, p.c_out(sigma), f"c_out at σ_data = {sigma_data}")
        expect_close(c_in, p.c_in(sigma), f"c_in at σ_data = {sigma_data}")
    return (
        "at small σ the denoiser passes x̂ through (c_skip → 1, c_out → σ: an ε-prediction); "
        "at large σ it predicts x0 directly (c_skip → 0, c_out → σ_data). The network's "
        "input and target have unit variance at every σ."
    )


# ---------------------------------------------------------------------- predict first
@exercise(
    "ch05.predict_heun_nfe",
    solution=35,
    wrong=36,
    hint="count the denoiser calls of each step; which step is different?",
)
def check_predict_heun_nfe(prediction) -> str:
    """The learner predicts the number of denoiser calls of EDM's Heun sampler with
    ``N = 18`` steps on ``edm.time_grid(18)`` (which ends at ``σ = 0``)."""
    if prediction is None:
        raise NotImplementedError
    try:
        number = float(prediction)
    except (TypeError, ValueError):
        raise Mistake("answer with a number of network calls, e.g. 20.") from None
    if not number.is_integer():
        raise Mistake("answer with a whole number of network calls.")
    value = int(number)
    if value == 36:
        raise Mistake(
            "2 N = 36 would be right if every step were a Heun step. The last step goes to "
            "σ = 0, where the drift (x̂ − D_θ(x̂; σ))/σ is undefined: it is an Euler step."
        )
    if value == 18:
        raise Mistake("each Heun step calls the denoiser twice: at the start and at the end.")
    if value == 19:
        raise Mistake("the grid has 19 levels, but the calls are made per step, twice per step.")
    if value != 35:
        raise Mistake(f"{value} is not it: count two calls per Heun step.")
    return (
        "2 N − 1 = 35: 17 Heun steps of two calls and one Euler step into σ = 0, the "
        "budget of EDM's CIFAR-10 results."
    )
