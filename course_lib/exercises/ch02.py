"""Exercises of chapter 2: Langevin dynamics."""

from __future__ import annotations

import math

import torch

from course_lib.exercises import Mistake, exercise, expect_close


# --------------------------------------------------------------------------- one ULA step
def _ula_step(x: torch.Tensor, score_fn, step_size: float, z: torch.Tensor) -> torch.Tensor:
    return x + 0.5 * step_size * score_fn(x) + math.sqrt(step_size) * z


def _wrong_ula_step(x, score_fn, step_size, z):
    return x + 0.5 * step_size * score_fn(x) + step_size * z  # h instead of sqrt(h)


@exercise(
    "ch02.ula_step",
    solution=_ula_step,
    wrong=_wrong_ula_step,
    hint="x + (h/2) score(x) + sqrt(h) z: the noise scales with the square root of the step.",
)
def check_ula_step(fn) -> str:
    """``fn(x, score_fn, step_size, z)`` returns one ULA step driven by the given noise
    ``z``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def score(y):
        return -(y - mu) / 0.5  # N(mu, 0.5 I)

    for h in [0.01, 0.3]:
        got = fn(x.clone(), score, h, z)
        if got is None:
            raise Mistake("return the new points instead of None.")
        drift_only = x + 0.5 * h * score(x)
        if torch.allclose(torch.as_tensor(got, dtype=torch.float64), drift_only):
            raise Mistake("the noise term is missing: without it ULA is gradient ascent.")
        if torch.allclose(torch.as_tensor(got, dtype=torch.float64), x + h * score(x) + h**0.5 * z):
            raise Mistake("the drift is (h/2) times the score, not h times it.")
        expect_close(got, _ula_step(x, score, h, z), f"the step for h = {h}")
    return "x + (h/2)∇log p(x) + √h z: drift of order h, noise of order √h."


# --------------------------------------------------------------------------- annealed steps
def _annealed_step_sizes(sigmas: torch.Tensor, h: float) -> torch.Tensor:
    return h * sigmas**2 / sigmas[-1] ** 2


def _wrong_annealed_step_sizes(sigmas, h):
    return h * sigmas / sigmas[-1]  # linear in sigma


@exercise(
    "ch02.annealed_step_sizes",
    solution=_annealed_step_sizes,
    wrong=_wrong_annealed_step_sizes,
    hint="h_i = h * sigma_i^2 / sigma_L^2, with sigma_L the smallest (last) level.",
)
def check_annealed_step_sizes(fn) -> str:
    """``fn(sigmas, h)`` returns the step size ``h_i = h σ_i²/σ_L²`` of every level of
    annealed Langevin dynamics (NCSN, Algorithm 1, where it is ``α_i = ε σ_i²/σ_L²``)."""
    sigmas = torch.logspace(1, -2, 10, dtype=torch.float64)
    h = 4e-5
    got = fn(sigmas, h)
    if got is None:
        raise Mistake("return the step sizes, one per level.")
    got = torch.as_tensor(got, dtype=torch.float64)
    want = _annealed_step_sizes(sigmas, h)
    if got.shape == want.shape and torch.allclose(got, h * sigmas**2 / sigmas[0] ** 2):
        raise Mistake("divide by the smallest level sigma_L (the last), not the largest.")
    if got.shape == want.shape and torch.allclose(got.flip(0), want):
        raise Mistake("the steps come out in reverse: level i goes with sigma_i.")
    expect_close(got, want, "the list of step sizes", rtol=1e-6, atol=0.0)
    return "h_i ∝ σ_i²: the step shrinks with the noise, and h_L = h at the last level."


# --------------------------------------------------------------------------- prediction
@exercise(
    "ch02.predict_mode_fraction",
    solution=0.5,
    wrong=0.8,
    hint="inside a mode's basin the score does not depend on the mode's weight.",
)
def check_predict_mode_fraction(prediction) -> str:
    """The learner predicts the fraction of ULA chains (exact score, uniform start on
    the square) that end in the heavy mode of weight 0.8."""
    if prediction is None:
        raise NotImplementedError
    value = float(prediction)
    if abs(value - 0.8) < 0.05:
        raise Mistake(
            "0.8 is the true weight, but ULA does not find it: a chain stays in the basin "
            "where it starts."
        )
    if not abs(value - 0.5) <= 0.1:  # also rejects NaN
        raise Mistake(f"{value:.2f} is not it: where do the chains start?")
    return (
        "about one half: the start puts half of the chains in each basin, and the score "
        "inside a basin ignores the weight, so nothing moves them across."
    )


# --------------------------------------------------------------------------- MALA
def _mala_log_accept(x, y, log_prob_fn, score_fn, h: float) -> torch.Tensor:
    def log_q(to, frm):  # log N(to; frm + (h/2) ∇log p(frm), h I), constant dropped
        return -(to - frm - 0.5 * h * score_fn(frm)).pow(2).sum(1) / (2 * h)

    return log_prob_fn(y) - log_prob_fn(x) + log_q(x, y) - log_q(y, x)


def _wrong_mala_log_accept(x, y, log_prob_fn, score_fn, h):
    return log_prob_fn(y) - log_prob_fn(x)  # random-walk Metropolis: q taken as symmetric


def _double_well(x: torch.Tensor) -> torch.Tensor:
    """``log p(x) = −(x_1² − 1)² − x_2²/2`` up to a constant: two modes at ``x_1 = ±1``."""
    return -((x[:, 0] ** 2 - 1) ** 2) - 0.5 * x[:, 1] ** 2


def _double_well_score(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([-4 * x[:, 0] * (x[:, 0] ** 2 - 1), -x[:, 1]], dim=1)


@exercise(
    "ch02.mala_log_accept",
    solution=_mala_log_accept,
    wrong=_wrong_mala_log_accept,
    hint=(
        "log a = log p(y) − log p(x) + log q(x | y) − log q(y | x), with "
        "log q(y | x) = −‖y − x − (h/2)∇log p(x)‖² / (2h) + const; the Langevin proposal "
        "is not symmetric."
    ),
)
def check_mala_log_accept(fn) -> str:
    """``fn(x, y, log_prob_fn, score_fn, h)`` returns, per chain, the log of MALA's
    Metropolis–Hastings ratio ``p(y) q(x | y) / (p(x) q(y | x))`` for the move ``x → y``
    (before the ``min(1, ·)``), shape ``(B,)``."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    for h in (0.05, 0.5):
        y = (
            x
            + 0.5 * h * _double_well_score(x)
            + math.sqrt(h) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        )
        got = fn(x.clone(), y.clone(), _double_well, _double_well_score, h)
        if got is None:
            raise Mistake("return the log ratio, one number per chain.")
        got = torch.as_tensor(got, dtype=torch.float64)
        want = _mala_log_accept(x, y, _double_well, _double_well_score, h)
        if got.shape == want.shape:
            if torch.allclose(got, _wrong_mala_log_accept(x, y, _double_well, None, h)):
                raise Mistake(
                    "that is random-walk Metropolis: the Langevin proposal is not symmetric, "
                    "so the ratio q(x | y) / q(y | x) stays."
                )
            if torch.allclose(got, -want):
                raise Mistake("the ratio is upside down: the move goes from x to y.")
            if torch.allclose(got, want.clamp(max=0.0)) and not torch.allclose(got, want):
                raise Mistake("return the log ratio itself, before taking min(0, ·).")
        expect_close(got, want, f"the log ratio for h = {h}", atol=1e-8)
    return (
        "log p(y) − log p(x) − ‖x − y − (h/2)∇log p(y)‖²/(2h) + ‖y − x − (h/2)∇log p(x)‖²/(2h): "
        "the normalising constants of p and q cancel, so log p up to a constant suffices."
    )
