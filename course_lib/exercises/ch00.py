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


# --------------------------------------------------------------------------- mixture score
def _mixture_score(x: torch.Tensor, weights, means, stds) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    mu = torch.as_tensor(means, dtype=torch.float64)
    var = torch.as_tensor(stds, dtype=torch.float64) ** 2
    diff = mu[None] - x[:, None]  # (B, K, D): mu_k - x
    # log w_k N(x; mu_k, tau_k^2 I), normalised by the softmax into r_k(x)
    logits = torch.log(w) - 0.5 * diff.pow(2).sum(-1) / var - 0.5 * x.shape[1] * torch.log(var)
    r = torch.softmax(logits, dim=1)
    return (r[..., None] * diff / var[None, :, None]).sum(1)


def _wrong_mixture_score(x, weights, means, stds):
    x = torch.as_tensor(x, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    mu = torch.as_tensor(means, dtype=torch.float64)
    var = torch.as_tensor(stds, dtype=torch.float64) ** 2
    # the weights w_k in place of the responsibilities r_k(x)
    return (w[None, :, None] * (mu[None] - x[:, None]) / var[None, :, None]).sum(1)


@exercise(
    "ch00.mixture_score",
    solution=_mixture_score,
    wrong=_wrong_mixture_score,
    hint=(
        "differentiate log Σ_k w_k N(x; μ_k, τ_k² I): the chain rule through the log gives "
        "Σ_k [w_k N_k(x) / p(x)] ∇log N_k(x), and the bracket depends on x."
    ),
)
def check_mixture_score(fn) -> str:
    """``fn(x, weights, means, stds)`` returns ``∇ log p(x)`` for the isotropic mixture
    ``p = Σ_k w_k N(μ_k, τ_k² I)``, ``x`` of shape ``(B, D)``, ``means`` ``(K, D)``,
    ``weights`` and ``stds`` ``(K,)``."""
    weights = torch.tensor([0.8, 0.2], dtype=torch.float64)
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    stds = torch.tensor([0.6, 0.4], dtype=torch.float64)
    gm = GaussianMixture.isotropic(weights.tolist(), means.tolist(), stds.tolist())
    g = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    got = fn(x.clone(), weights.clone(), means.clone(), stds.clone())
    if got is None:
        raise Mistake("return the scores, one row per point.")
    got = torch.as_tensor(got, dtype=torch.float64)
    if got.shape == x.shape and torch.allclose(got, _wrong_mixture_score(x, weights, means, stds)):
        raise Mistake(
            "you averaged the component scores with the weights w_k; the average uses the "
            "responsibilities r_k(x) = w_k N_k(x) / p(x), which change from point to point."
        )
    expect_close(got, gm.score(x), "the score at 40 points", atol=1e-6)
    # the midpoint between the modes: where the weights show up in the score
    mid = means.mean(0, keepdim=True)
    expect_close(fn(mid, weights, means, stds), gm.score(mid), "the score at the midpoint")
    return (
        "Σ_k r_k(x) (μ_k − x)/τ_k²: inside a mode r_k ≈ 1 and the weight drops out; between "
        "the modes the weights tilt the field through the responsibilities."
    )
