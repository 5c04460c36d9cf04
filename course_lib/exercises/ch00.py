"""Exercises of chapter 0: the Gaussian-mixture ground truth."""

from __future__ import annotations

import torch

from course_lib.exercises import Mistake, exercise, expect_close
from course_lib.gaussian_mixture import GaussianMixture


def _noised_parameters(means: torch.Tensor, covariances: torch.Tensor, a: float, s: float):
    return a * means, a**2 * covariances + s**2 * torch.eye(means.shape[1])


def _wrong_noised_parameters(means, covariances, a, s):
    return a * means, a * covariances + s * torch.eye(means.shape[1])  # forgot the squares


@exercise(
    "ch00.noised_parameters",
    solution=_noised_parameters,
    wrong=_wrong_noised_parameters,
    hint="Var(a x + s eps) = a^2 Var(x) + s^2 I when x and eps are independent.",
)
def check_noised_parameters(fn) -> str:
    """``fn(means, covariances, a, s)`` returns the means and covariances of the
    components of the law of ``a x0 + s eps``."""
    gm = GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[1.0, -2.0], [0.5, 3.0]]),
        torch.tensor([[[1.0, 0.3], [0.3, 2.0]], [[0.5, 0.0], [0.0, 0.25]]]),
    )
    for a, s in [(1.0, 0.0), (0.8, 0.6), (0.3, 2.0)]:
        want = gm.noised(a, s)
        got = fn(gm.means.float(), gm.covariances.float(), a, s)
        if not isinstance(got, tuple) or len(got) != 2:
            raise Mistake("return a pair (means, covariances).")
        expect_close(got[0], want.means, f"the means for a={a}, s={s}")
        expect_close(got[1], want.covariances, f"the covariances for a={a}, s={s}")
    return "each component of a x0 + s eps is N(a mu_k, a^2 C_k + s^2 I)."


@exercise(
    "ch00.predict_std",
    solution=2**0.5,
    wrong=2.0,
    hint="variances add for independent terms; standard deviations do not.",
)
def check_predict_std(prediction) -> str:
    """The learner predicts the standard deviation of each coordinate of ``x0 + eps``
    for toy data with unit standard deviation."""
    if prediction is None:
        raise NotImplementedError
    value = float(prediction)
    if not abs(value - 2**0.5) <= 0.05:  # also rejects NaN
        raise Mistake(f"{value:.3f} is not it: the two noises are independent.")
    return "sqrt(1 + 1) ≈ 1.414: the noised cloud is wider, but only by √2."
