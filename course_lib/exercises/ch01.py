"""Exercises of chapter 1: score matching."""

from __future__ import annotations

import torch

from course_lib.exercises import Mistake, exercise, expect_close
from course_lib.gaussian_mixture import GaussianMixture


# --------------------------------------------------------------------------- Hutchinson
@exercise(
    "ch01.predict_rademacher_variance",
    solution=0.0,
    wrong=34.0,
    hint="write v^T J v = sum_i J_ii v_i^2 + sum_{i != j} J_ij v_i v_j and use v_i^2 = 1.",
)
def check_predict_rademacher_variance(prediction) -> str:
    """The learner predicts the variance of Hutchinson's estimate ``vᵀ J v`` with
    Rademacher probes for the diagonal Jacobian ``J = diag(-1, -4)``."""
    if prediction is None:
        raise NotImplementedError
    value = float(prediction)
    if not abs(value) <= 0.01:  # also rejects NaN
        if abs(value - 34.0) < 0.5:
            raise Mistake(
                f"{value:g} is the variance with Gaussian probes (2 Σ J_ii² = 34); "
                "Rademacher probes behave differently."
            )
        raise Mistake(f"{value:g} is not it: what is v_i² when v_i is ±1?")
    return (
        "vᵀJv = Σ J_ii v_i² = tr J exactly, since v_i² = 1: with a diagonal Jacobian "
        "every Rademacher probe gives the exact trace. Only off-diagonal entries add "
        "variance (2 Σ_{i≠j} J_ij² for a symmetric J)."
    )


# --------------------------------------------------------------------------- DSM
def _dsm_loss(score_fn, x, sigma, eps):
    x_tilde = x + sigma * eps
    return 0.5 * ((score_fn(x_tilde, sigma) + eps / sigma) ** 2).sum(1).mean()


def _wrong_dsm_loss(score_fn, x, sigma, eps):
    x_tilde = x + sigma * eps
    return 0.5 * ((score_fn(x_tilde, sigma) - eps / sigma) ** 2).sum(1).mean()  # sign


@exercise(
    "ch01.dsm_loss",
    solution=_dsm_loss,
    wrong=_wrong_dsm_loss,
    hint="the target is grad log N(x_tilde; x, sigma^2 I) = -(x_tilde - x) / sigma^2 = -eps/sigma.",
)
def check_dsm_loss(fn) -> str:
    """``fn(score_fn, x, sigma, eps)`` returns ``½ mean_b ‖s(x̃_b, σ) + ε_b/σ‖²`` with
    ``x̃ = x + σ ε``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g)
    eps = torch.randn(64, 2, generator=g)
    a = torch.tensor([[0.5, -0.2], [0.1, 0.8]])

    def scores():
        yield "the zero field", lambda y, s: torch.zeros_like(y)
        yield "s(x̃) = -x̃", lambda y, s: -y
        yield "a linear field", lambda y, s: y @ a.T / s

    for sigma in (0.1, 0.5, 2.0):
        for name, score_fn in scores():
            got = fn(score_fn, x, sigma, eps)
            if not isinstance(got, torch.Tensor) or got.ndim != 0:
                raise Mistake("return a scalar tensor: the mean over the batch.")
            expect_close(got, _dsm_loss(score_fn, x, sigma, eps), f"the loss of {name}, σ={sigma}")
    return (
        "½ E‖s(x + σε, σ) + ε/σ‖²: the score of the noise kernel is -ε/σ, so a perfect "
        "model predicts minus the (scaled) noise that was added."
    )


@exercise(
    "ch01.dsm_floor",
    solution=0.5,
    wrong=0.0,
    hint="J_DSM(s) = ½ E‖s - ∇log p_σ‖² + ½ (D/σ² - E‖∇log p_σ(x̃)‖²); here p_σ = N(0, 2I).",
)
def check_dsm_floor(prediction) -> str:
    """The smallest value of the DSM loss for data ``N(0, I)`` in ``D = 2`` at ``σ = 1``."""
    if prediction is None:
        raise NotImplementedError
    value = float(prediction)
    if not abs(value - 0.5) <= 0.02:
        if abs(value) <= 0.02:
            raise Mistake(
                "the DSM loss of the best model is not 0: its target -ε/σ is random given "
                "x̃, and no function of x̃ can predict the noise exactly."
            )
        raise Mistake(f"{value:g} is not it.")
    return (
        "p_σ = N(0, 2I), so ∇log p_σ(x̃) = -x̃/2 and E‖∇log p_σ‖² = E‖x̃‖²/4 = 1; the floor "
        "is ½ (2/1 - 1) = 0.5, the part of the noise that x̃ does not reveal."
    )


# --------------------------------------------------------------------------- Tweedie
def _tweedie(x_tilde, sigma, score_fn):
    return x_tilde + sigma**2 * score_fn(x_tilde)


def _wrong_tweedie(x_tilde, sigma, score_fn):
    return x_tilde + sigma * score_fn(x_tilde)  # forgot the square


@exercise(
    "ch01.tweedie",
    solution=_tweedie,
    wrong=_wrong_tweedie,
    hint="differentiate p_σ(x̃) = ∫ p(x) N(x̃; x, σ² I) dx under the integral.",
)
def check_tweedie(fn) -> str:
    """``fn(x_tilde, sigma, score_fn)`` returns ``E[x | x̃]`` given the score
    ``score_fn(x̃) = ∇ log p_σ(x̃)`` of the noised law."""
    gm = GaussianMixture(
        torch.tensor([0.6, 0.4]),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]]]),
    )
    g = torch.Generator().manual_seed(2)
    for sigma in (0.2, 1.0, 3.0):
        x_tilde = gm.noised(1.0, sigma).sample(50, g).double()
        got = fn(x_tilde, sigma, lambda y, s=sigma: gm.noised_score(y, 1.0, s))
        # the posterior mean by Gaussian conditioning, computed independently of the score
        want = gm.optimal_denoiser(x_tilde, 1.0, sigma)
        expect_close(got, want, f"E[x | x̃] at σ={sigma}", atol=1e-6)
    return (
        "x̃ + σ² ∇log p_σ(x̃) matches the posterior mean computed by Gaussian conditioning: "
        "a score model is a denoiser."
    )


# --------------------------------------------------------------------------- ISM + Hutchinson
def _ism_hutchinson(score_fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    # vᵀ ∇_x (vᵀ s) = vᵀ J v: one vector–Jacobian product; the graph is kept so that
    # the trace term also has a gradient with respect to the parameters
    (vjp,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)
    return ((vjp * v).sum(1) + 0.5 * s.pow(2).sum(1)).mean()


def _wrong_ism_hutchinson(score_fn, x, v):
    x = x.detach().requires_grad_(True)
    s = score_fn(x)
    (vjp,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)
    return ((vjp * v).sum(1) + 0.5 * (s * v).sum(1).pow(2)).mean()  # plain sliced, not ISM


@exercise(
    "ch01.ism_hutchinson",
    solution=_ism_hutchinson,
    wrong=_wrong_ism_hutchinson,
    hint=(
        "J_ISM = E[tr ∇s + ½‖s‖²] and tr J = E_v[vᵀJv]; vᵀJv = vᵀ∇_x(vᵀs) is one "
        "torch.autograd.grad call with create_graph=True."
    ),
)
def check_ism_hutchinson(fn) -> str:
    """``fn(score_fn, x, v)`` returns ``mean_b [v_bᵀ ∇s(x_b) v_b + ½‖s(x_b)‖²]``: implicit
    score matching with the trace replaced by one Hutchinson probe per sample, a scalar
    tensor whose gradient with respect to the model's parameters is the training
    signal."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    v = torch.randn(32, 3, generator=g, dtype=torch.float64)  # Gaussian: vᵀJv ≠ tr J
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=torch.float64))

    def value_and_grads(answer):
        net.zero_grad()
        loss = answer(net, x.clone(), v.clone())
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise Mistake("return a scalar tensor: the mean over the batch.")
        if not loss.requires_grad:
            raise Mistake("the loss has no gradient: compute it from score_fn's output.")
        try:
            loss.backward()
        except RuntimeError as err:  # the graph of the vector–Jacobian product was freed
            raise Mistake(
                "backward through the loss failed: the vector–Jacobian product needs "
                "create_graph=True, so that the trace term can be differentiated again."
            ) from err
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    want, want_grads = value_and_grads(_ism_hutchinson)
    got, got_grads = value_and_grads(fn)
    if torch.allclose(got, _exact_trace_loss(net, x.clone().requires_grad_(True)), rtol=1e-6):
        raise Mistake("this is the exact trace; use the probes v (one product vᵀJv per sample).")
    if torch.allclose(got, want - 0.5 * net(x).pow(2).sum(1).mean().detach(), rtol=1e-6):
        raise Mistake("the ½‖s‖² term is missing.")
    if torch.allclose(got, _wrong_ism_hutchinson(net, x, v).detach(), rtol=1e-6):
        raise Mistake(
            "½(vᵀs)² is the plain sliced loss; implicit score matching keeps ½‖s‖², which "
            "is its expectation over v and needs no probe."
        )
    expect_close(got, want, "the loss value", atol=1e-8, rtol=1e-8)
    for k, (a, b) in enumerate(zip(got_grads, want_grads, strict=True)):
        if not torch.allclose(a, b, atol=1e-8, rtol=1e-6):
            raise Mistake(
                f"the value is right but the gradient of parameter {k} is not: the trace "
                "term needs create_graph=True, or it contributes no gradient."
            )
    return (
        "vᵀ∇(vᵀs) + ½‖s‖², one backward pass per batch whatever D; with Gaussian probes this "
        "is SSM-VR, the variance-reduced sliced loss."
    )


def _exact_trace_loss(score_fn, x: torch.Tensor) -> torch.Tensor:
    s = score_fn(x)
    trace = sum(
        torch.autograd.grad(s[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1])
    )
    return (trace + 0.5 * s.pow(2).sum(1)).mean().detach()
