"""Exercises of chapter 7: continuous normalizing flows."""

from __future__ import annotations

import math

import torch

from course_lib.exercises import Mistake, exercise, expect_close


# ------------------------------------------------------- affine change of variables
def _affine_log_prob(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    z = (x - b) / a
    return -0.5 * (z**2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi) - a.abs().log().sum()


def _wrong_affine_log_prob(x, a, b):
    z = (x - b) / a
    return -0.5 * (z**2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi) + a.abs().log().sum()


@exercise(
    "ch07.affine_log_prob",
    solution=_affine_log_prob,
    wrong=_wrong_affine_log_prob,
    hint="invert the map, z = (x − b)/a, evaluate log N(z; 0, I), and correct for the "
    "volume: x = a ⊙ z + b stretches volumes by Π|a_j|.",
)
def check_affine_log_prob(fn) -> str:
    """``fn(x, a, b)`` returns ``log p_X(x)`` per sample for ``x = a ⊙ z + b``,
    ``z ~ N(0, I)``; ``x`` of shape ``(B, D)``, ``a`` (nonzero) and ``b`` of shape ``(D,)``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64) * 2
    a = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    got = fn(x.clone(), a.clone(), b.clone())
    if got is None:
        raise Mistake("return log p_X(x) instead of None.")
    got = torch.as_tensor(got, dtype=torch.float64)
    want = _affine_log_prob(x, a, b)
    if got.shape == want.shape:
        if torch.allclose(got, _wrong_affine_log_prob(x, a, b)):
            raise Mistake(
                "the sign of the log-determinant: the map stretches volumes by Π|a_j|, so "
                "densities *divide* by it — subtract Σ log|a_j|."
            )
        z = (x - b) / a
        if torch.allclose(got, -0.5 * (z**2).sum(1) - 0.5 * 3 * math.log(2 * math.pi)):
            raise Mistake("log N(z) alone forgets the volume change: subtract Σ log|a_j|.")
        if torch.isnan(got).any():
            raise Mistake(
                "NaN: the log of a negative scale. Use log|a_j| (a_j < 0 is a reflection)."
            )
    expect_close(got, want, "log p_X(x)")
    return (
        "log p_X(x) = log N((x − b)/a) − Σ_j log|a_j|: the change of variables with the "
        "Jacobian diag(a). A coupling layer does the same with a that depends on x_A."
    )


# ----------------------------------------------------- predict: Rademacher variance
@exercise(
    "ch07.predict_rademacher_variance",
    solution=0,
    wrong=2 * (1 + 4 + 9 + 16),
    hint="write εᵀAε for a diagonal A and use ε_i² = 1.",
)
def check_predict_rademacher_variance(prediction) -> str:
    """The learner predicts the variance of ``εᵀ A ε`` for ``A = diag(1, 2, 3, 4)`` and
    one Rademacher probe ``ε``."""
    if prediction is None:
        raise NotImplementedError
    try:
        value = float(prediction)
    except (TypeError, ValueError):
        raise Mistake("answer with a number, e.g. 3.5.") from None
    if value == 60:
        raise Mistake(
            "2 Σ A_ii² = 60 is the variance with a *Gaussian* probe. A Rademacher probe has "
            "ε_i² = 1 exactly."
        )
    if value == 10:
        raise Mistake("10 = tr A is the mean of the estimate, not its variance.")
    if value != 0:
        raise Mistake(f"{value:g} is not it: expand εᵀAε = Σ_i A_ii ε_i² for a diagonal A.")
    return (
        "0: εᵀAε = Σ_i A_ii ε_i² = tr A for every Rademacher probe. Only the off-diagonal "
        "entries cost variance (2 Σ_{i≠j} S_ij²), which is why Rademacher probes are the usual "
        "choice."
    )
