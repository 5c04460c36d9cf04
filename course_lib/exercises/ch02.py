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
def _annealed_step_sizes(sigmas: torch.Tensor, eps: float) -> torch.Tensor:
    return eps * sigmas**2 / sigmas[-1] ** 2


def _wrong_annealed_step_sizes(sigmas, eps):
    return eps * sigmas / sigmas[-1]  # linear in sigma


@exercise(
    "ch02.annealed_step_sizes",
    solution=_annealed_step_sizes,
    wrong=_wrong_annealed_step_sizes,
    hint="alpha_i = eps * sigma_i^2 / sigma_L^2, with sigma_L the smallest (last) level.",
)
def check_annealed_step_sizes(fn) -> str:
    """``fn(sigmas, eps)`` returns the step size ``α_i`` of every level of annealed
    Langevin dynamics (NCSN, Algorithm 1)."""
    sigmas = torch.logspace(1, -2, 10, dtype=torch.float64)
    eps = 2e-5
    got = fn(sigmas, eps)
    if got is None:
        raise Mistake("return the step sizes, one per level.")
    got = torch.as_tensor(got, dtype=torch.float64)
    want = _annealed_step_sizes(sigmas, eps)
    if got.shape == want.shape and torch.allclose(got, eps * sigmas**2 / sigmas[0] ** 2):
        raise Mistake("divide by the smallest level sigma_L (the last), not the largest.")
    if got.shape == want.shape and torch.allclose(got.flip(0), want):
        raise Mistake("the steps come out in reverse: level i goes with sigma_i.")
    expect_close(got, want, "the list of step sizes", rtol=1e-6, atol=0.0)
    return "α_i ∝ σ_i²: the step shrinks with the noise, and α_L = ε at the last level."


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
