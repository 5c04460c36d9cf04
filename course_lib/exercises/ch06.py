"""Exercises of chapter 6: flow matching."""

from __future__ import annotations

import torch

from course_lib.exercises import Mistake, exercise, expect_close


def _tensor(got, what: str) -> torch.Tensor:
    if got is None:
        raise Mistake(f"return {what} instead of None.")
    return torch.as_tensor(got, dtype=torch.float64)


# ------------------------------------------------------------- velocity from ε
def _velocity_from_eps(x, eps, alpha, sigma, d_alpha, d_sigma):
    x1 = (x - sigma * eps) / alpha
    return d_alpha * x1 + d_sigma * eps


def _wrong_velocity_from_eps(x, eps, alpha, sigma, d_alpha, d_sigma):
    return d_alpha * x + d_sigma * eps  # x_t taken for the data point x1


@exercise(
    "ch06.velocity_from_eps",
    solution=_velocity_from_eps,
    wrong=_wrong_velocity_from_eps,
    hint="solve x = α x1 + σ ε for x1, then differentiate the path: u = α̇ x1 + σ̇ ε.",
)
def check_velocity_from_eps(fn) -> str:
    """``fn(x, eps, alpha, sigma, d_alpha, d_sigma)`` returns the velocity ``u`` of the
    affine path ``x_t = α_t x1 + σ_t x0`` at ``x = x_t`` when the noise ``x0`` is
    (predicted to be) ``eps``; ``x``, ``eps`` of shape ``(B, D)``, the coefficients
    floats."""
    from course_lib import flow_matching as fm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    for path in (fm.linear_path(), fm.cosine_path(), fm.vp_path()):
        t = torch.tensor(0.3, dtype=torch.float64)
        coefs = [float(c(t)) for c in (path.alpha, path.sigma, path.d_alpha, path.d_sigma)]
        got = _tensor(fn(x.clone(), eps.clone(), *coefs), "the velocity u")
        want = fm.velocity_from_eps(path, x, eps, t.expand(16))
        if got.shape == want.shape and torch.allclose(
            got, _wrong_velocity_from_eps(x, eps, *coefs)
        ):
            raise Mistake(
                "α̇ x + σ̇ ε treats x_t as if it were the data point x1. The data point is "
                "hidden in x_t: x1 = (x_t − σ ε)/α."
            )
        expect_close(got, want, f"u on the {path.name} path at t = 0.3")
    return (
        "u = (α̇/α)(x − σ ε) + σ̇ ε: any noise predictor is a velocity on its own path (on "
        "the linear path u = (x − ε)/t); on another Gaussian path, after rescaling x and "
        "matching the signal-to-noise ratio."
    )


# ------------------------------------------------------ predict: one Euler step
ONE_STEP_CHOICES = {
    "a": "exactly on the data distribution",
    "b": "all at one point, the data mean E[x1]",
    "c": "each at the mode of the data nearest to its noise draw",
    "d": "nowhere: they do not move, the velocity at t = 0 is zero",
}


@exercise(
    "ch06.predict_one_step",
    solution="b",
    wrong="a",
    hint="at t = 0, x_t = x0 is the noise itself; what does the noise tell you about x1 "
    "when the pairs are independent?",
)
def check_predict_one_step(prediction) -> str:
    """The learner predicts where one Euler step ``x0 + 1·u_0(x0)`` of the *exact*
    marginal velocity of the linear path with independent pairs lands (a letter of
    :data:`ONE_STEP_CHOICES`)."""
    if prediction is None:
        raise NotImplementedError
    choice = str(prediction).strip().lower().strip("()")
    if choice not in ONE_STEP_CHOICES:
        raise Mistake(f"answer with one letter of {', '.join(ONE_STEP_CHOICES)}.")
    if choice == "a":
        raise Mistake(
            "one step would land on the data only if the paths were straight lines at constant "
            "speed. The marginal velocity at t = 0 is E[x1 − x0 | x_t = x0]: with independent "
            "pairs the noise says nothing about x1."
        )
    if choice == "c":
        raise Mistake(
            "that needs a coupling in which the noise determines its partner (OT, reflow), and "
            "even then one step lands on the partner, not on the nearest mode. With "
            "independent pairs every data point is equally likely to be the partner of any "
            "noise draw."
        )
    if choice == "d":
        raise Mistake("u_0(x) = E[x1 − x0 | x0 = x] = E[x1] − x, which is not zero.")
    return (
        "u_0(x) = E[x1] − x, so x0 + u_0(x0) = E[x1] for every sample: one step of the "
        "exact I-CFM field sends all the noise to the data mean. This collapse is why one "
        "Euler step of a trained 1-rectified flow scores so badly on CIFAR-10 (FID 378 "
        "reported by Liu et al.)."
    )
