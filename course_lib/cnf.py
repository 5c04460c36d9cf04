"""Continuous normalizing flows trained by maximum likelihood (chapter 7; FFJORD).

A CNF is the ODE ``dx/dt = v_θ(x, t)`` of chapter 6, in the same flow time (``t = 0``
noise, ``t = 1`` data), trained not by regression but by its exact log-likelihood.
Along a trajectory the log-density changes by the divergence (the instantaneous change
of variables, Chen et al. 2018, Theorem 1):

    d log p_t(x_t) / dt = -∇·v_θ(x_t, t),
    log p_1(x) = log p_0(z) - ∫_0^1 ∇·v_θ(x_t, t) dt,   z = x_0 (the ODE run backwards from x).

The right-hand side is chapter 5's :func:`course_lib.likelihood.augmented_drift`, which
:func:`course_lib.likelihood.ode_log_likelihood` integrates without a graph; training
needs gradients through the solve, so :class:`CNFDynamics` keeps the graph and
:func:`log_prob` here calls ``torchdiffeq.odeint`` (backpropagation through the solver's
operations) or ``torchdiffeq.odeint_adjoint`` (the adjoint method: memory independent of
the number of steps, at the price of a second solve backwards; Chen et al. 2018, §2)
directly.

The augmented state also integrates the two regularisers of Finlay et al. 2020
("How to train your neural ODE", RNODE), which keep the learned dynamics easy to solve:
the kinetic energy ``∫ ‖v‖² dt`` and the Jacobian's Frobenius norm ``∫ ‖∂v/∂x‖_F² dt``,
the latter estimated with the same probe as Hutchinson's trace (``E‖εᵀ J‖² = ‖J‖_F²``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchdiffeq
from torch import nn

from course_lib import likelihood, score_matching

DIVERGENCES: tuple[str, ...] = likelihood.DIVERGENCES  # ("exact", "hutchinson")
PROBES: tuple[str, ...] = score_matching.PROBES  # ("rademacher", "gaussian")
FIXED_METHODS: tuple[str, ...] = ("euler", "midpoint", "rk4")
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "bosh3", "adaptive_heun")

LogProb = Callable[[torch.Tensor], torch.Tensor]


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per sample: ``-½‖z‖² - (D/2) log 2π``, shape ``(B,)``."""
    d = z[0].numel()
    return -0.5 * (z**2).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi)


def draw_probe(
    shape: tuple[int, ...],
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A Hutchinson probe ``ε`` with ``E[ε εᵀ] = I``: Rademacher (±1) or standard normal."""
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; valid: {', '.join(PROBES)}.")
    e = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return e.sign() if probe == "rademacher" else e


def hutchinson_variance(a: torch.Tensor, probe: str = "rademacher") -> float:
    """The variance of Hutchinson's one-probe estimate ``εᵀ A ε`` of ``tr A``.

    Write ``S = (A + Aᵀ)/2`` (only the symmetric part enters ``εᵀ A ε``). Then

    * Gaussian ``ε``: ``Var = 2 ‖S‖_F² = 2 Σ_ij S_ij²`` (Isserlis' theorem);
    * Rademacher ``ε``: ``εᵀ S ε = Σ_i S_ii + 2 Σ_{i<j} S_ij ε_i ε_j`` since ``ε_i² = 1``;
      the products ``ε_i ε_j`` (``i < j``) are uncorrelated with variance one, so
      ``Var = 4 Σ_{i<j} S_ij² = 2 Σ_{i≠j} S_ij²`` — the diagonal costs nothing.

    For i.i.d. entries of mean 0 and variance 1, ``Var = 2 Σ_{i≠j} S_ij² + (E ε⁴ - 1) Σ_i
    S_ii²``; ``E ε⁴ ≥ 1`` with equality for ±1, so Rademacher is the best probe with
    independent entries (Hutchinson 1989).
    """
    s = 0.5 * (a + a.T).double()
    if probe == "gaussian":
        return float(2 * (s**2).sum())
    if probe == "rademacher":
        return float(2 * ((s**2).sum() - (torch.diagonal(s) ** 2).sum()))
    raise ValueError(f"Unknown probe {probe!r}; valid: {', '.join(PROBES)}.")


class CNFDynamics(nn.Module):
    """The augmented ODE of a CNF for ``torchdiffeq``: ``f(t, (x, Δ, K, J))`` returns

    ``(v_θ(x, t), ∇·v_θ(x, t), ‖v_θ(x, t)‖², ‖εᵀ ∂v_θ/∂x‖²)``

    with the divergence exact (one backward pass per dimension) or Hutchinson's
    ``εᵀ (∂v/∂x) ε`` (one vector-Jacobian product), and the probe ``ε`` fixed for a whole
    solve (set :attr:`probe` before it: a new probe at every call would make the
    dynamics random, which an adaptive solver cannot integrate). The first two are
    chapter 5's :func:`course_lib.likelihood.augmented_drift` with the graph kept.
    :attr:`nfe` counts the calls. An ``nn.Module`` so that ``odeint_adjoint`` finds the
    parameters.
    """

    def __init__(self, net: nn.Module, divergence: str = "exact", jacobian: bool = True) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"Unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}.")
        self.net = net
        self.divergence = divergence
        self.jacobian = jacobian  # integrate ‖εᵀ ∂v/∂x‖² (off: one backward pass less)
        self.probe: torch.Tensor | None = None
        self.nfe = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.probe is None:
            raise RuntimeError("set CNFDynamics.probe before a solve (see cnf.log_prob)")
        self.nfe += 1
        x = state[0]
        # torchdiffeq's first-step heuristic may probe just past an end of [0, 1]
        t = t.clamp(0.0, 1.0).to(x.dtype).expand(x.shape[0])
        # create_graph: the divergence must itself be differentiable, by θ (training) and
        # by x (the adjoint's backward solve differentiates f by the state)
        v, div, vjp = likelihood.augmented_drift(
            self.net, x, t, self.divergence, self.probe, create_graph=True, return_vjp=self.jacobian
        )
        kinetic = (v**2).flatten(1).sum(1)
        jacobian = (vjp**2).flatten(1).sum(1) if vjp is not None else torch.zeros_like(kinetic)
        return v, div, kinetic, jacobian


@dataclass
class CNFResult:
    """``log p_1(x)`` and its parts for a batch: ``log_p = prior + delta`` where ``delta =
    -∫_0^1 ∇·v dt``; ``z`` the noise the data map to; the regularisers ``kinetic =
    ∫_0^1 ‖v‖² dt`` and ``jacobian = ∫_0^1 ‖εᵀ ∂v/∂x‖² dt`` per sample; ``nfe`` the calls of
    the forward solve."""

    log_p: torch.Tensor
    prior: torch.Tensor
    delta: torch.Tensor
    z: torch.Tensor
    kinetic: torch.Tensor
    jacobian: torch.Tensor
    nfe: int


def _state_norm(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The error norm of an adaptive CNF solve: the larger RMS of ``x`` and ``Δ``."""
    return torch.maximum(state[0].pow(2).mean().sqrt(), state[1].pow(2).mean().sqrt())


def log_prob(
    net: nn.Module,
    x: torch.Tensor,
    prior_log_prob: LogProb = standard_normal_log_prob,
    divergence: str = "exact",
    probe: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    n_steps: int = 20,
    adjoint: bool = False,
    generator: torch.Generator | None = None,
    jacobian: bool = True,
) -> CNFResult:
    """The CNF's exact (``divergence="exact"``) or unbiased (``"hutchinson"``)
    log-likelihood of data ``x`` (flow time ``t = 1``), differentiable in the parameters
    of ``net`` (``net(x, t)`` with ``t`` of shape ``(B,)``).

    The augmented state of :class:`CNFDynamics` is integrated from ``t = 1`` back to
    ``t = 0`` with ``torchdiffeq.odeint`` (gradients by backpropagation through the
    solver) or, with ``adjoint=True``, ``torchdiffeq.odeint_adjoint`` (gradients by the
    adjoint method). ``method``: adaptive (:data:`ADAPTIVE_METHODS`, tolerances ``rtol``,
    ``atol``) or fixed-step (:data:`FIXED_METHODS`, ``n_steps`` steps). ``jacobian=False``
    skips the Jacobian regulariser's integrand (reported as zero).
    """
    if method not in ADAPTIVE_METHODS + FIXED_METHODS:
        valid = ", ".join(ADAPTIVE_METHODS + FIXED_METHODS)
        raise ValueError(f"Unknown method {method!r}; valid: {valid}.")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, D, ...), got {tuple(x.shape)}")
    dyn = CNFDynamics(net, divergence, jacobian)
    dyn.probe = draw_probe(tuple(x.shape), probe, generator, x.dtype, x.device)
    zeros = x.new_zeros(x.shape[0])
    state0 = (x, zeros, zeros.clone(), zeros.clone())
    ts = torch.tensor([1.0, 0.0], dtype=x.dtype, device=x.device)
    # adaptive steps are controlled by the state and the log-density only: the regularisers
    # are integrals for the loss, and their large, fast-changing values would otherwise
    # force many more steps without making log p any more accurate
    options = {"step_size": 1.0 / n_steps} if method in FIXED_METHODS else {"norm": _state_norm}
    if adjoint:
        out = torchdiffeq.odeint_adjoint(
            dyn, state0, ts, rtol=rtol, atol=atol, method=method, options=options,
            adjoint_params=tuple(net.parameters()),
        )  # fmt: skip
    else:
        out = torchdiffeq.odeint(
            dyn, state0, ts, rtol=rtol, atol=atol, method=method, options=options
        )
    nfe = dyn.nfe
    z, div_int, kin_int, jac_int = (s[-1] for s in out)
    # integrated from t = 1 down to 0: each accumulator holds -∫_0^1 (...) dt
    prior = prior_log_prob(z)
    return CNFResult(prior + div_int, prior, div_int, z, -kin_int, -jac_int, nfe)


def regularized_loss(
    res: CNFResult, kinetic_weight: float = 0.0, jacobian_weight: float = 0.0
) -> torch.Tensor:
    """FFJORD's objective with RNODE's regularisers, per data dimension (nats/dim):
    ``mean(-log p_1(x)) + λ_K mean(∫‖v‖² dt) + λ_J mean(∫‖∂v/∂x‖_F² dt)``, all over ``D``.
    A NaN or infinite loss raises with the likely cause."""
    d = res.z[0].numel()
    loss = -res.log_p.mean() / d
    if kinetic_weight:
        loss = loss + kinetic_weight * res.kinetic.mean() / d
    if jacobian_weight:
        loss = loss + jacobian_weight * res.jacobian.mean() / d
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"the CNF loss is {loss.item()}: the dynamics blew up during the solve. Lower the "
            "learning rate, or add a kinetic or Jacobian regulariser (kinetic_weight=0.01)."
        )
    return loss


def mle_loss(
    net: nn.Module,
    x: torch.Tensor,
    kinetic_weight: float = 0.0,
    jacobian_weight: float = 0.0,
    **solve: object,
) -> torch.Tensor:
    """:func:`regularized_loss` of :func:`log_prob` of ``x`` (``solve`` is passed to it)."""
    res = log_prob(net, x, **solve)  # type: ignore[arg-type]
    return regularized_loss(res, kinetic_weight, jacobian_weight)
