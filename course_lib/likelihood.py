"""Chapter 5: exact log-likelihoods through an ODE, and bits per dimension.

Along the solution of ``dx/dt = u(x, t)``, the log-density of the transported law obeys
the instantaneous change of variables (Chen et al. 2018, Theorem 1):

    ``d log p_t(x_t) / dt = -∇·u(x_t, t)``,

so, integrating from ``t0`` to ``t1`` (Song et al. 2021, App. D.2),

    ``log p_{t0}(x) = log p_{t1}(x_{t1}) + ∫_{t0}^{t1} ∇·u(x_t, t) dt``,  ``x_{t0} = x``.

With ``u`` the probability-flow drift (:func:`course_lib.sde.pf_ode_drift`) and
``p_{t1}`` the prior, this is the exact likelihood of the model's PF-ODE.
:func:`augmented_drift` is the right-hand side of the augmented system ``(x, Δ)``,
``dΔ/dt = ∇·u``, with the divergence exact (``D`` backward passes) or by Hutchinson's
estimator (one, with a probe drawn once per solve; Grathwohl et al. 2019, FFJORD);
:func:`ode_log_likelihood` solves it without a graph, and chapter 7's CNFs
(:class:`course_lib.cnf.CNFDynamics`) with one, to train through it.
:func:`bits_per_dim` and :func:`dequantize` turn it into the number papers report for
images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from course_lib import score_matching, solvers
from course_lib.ddpm import EIGHT_BIT_OFFSET_BITS

__all__ = [
    "DIVERGENCES",
    "EIGHT_BIT_OFFSET_BITS",
    "LogLikelihood",
    "augmented_drift",
    "bits_per_dim",
    "dequantize",
    "ode_log_likelihood",
]

LogProb = Callable[[torch.Tensor], torch.Tensor]
DIVERGENCES: tuple[str, ...] = score_matching.ESTIMATORS  # ("exact", "hutchinson")


@dataclass
class LogLikelihood:
    """The result of :func:`ode_log_likelihood`, per sample.

    Attributes:
        log_p: ``log p_{t0}(x) = prior_logp + delta_logp``, ``(B,)``, nats.
        delta_logp: ``∫_{t0}^{t1} ∇·u(x_t, t) dt``, ``(B,)``.
        prior_logp: ``log p_{t1}(z)``, ``(B,)``.
        z: the end point ``x_{t1}`` of the flow, ``(B, ...)``.
        nfe: evaluations of the augmented drift (each one call of ``u`` plus its
            divergence).
    """

    log_p: torch.Tensor
    delta_logp: torch.Tensor
    prior_logp: torch.Tensor
    z: torch.Tensor
    nfe: int


def _check(divergence: str, probe: str, method: str, t0: float, t1: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}. Valid: {', '.join(DIVERGENCES)}.")
    if probe not in score_matching.PROBES:
        raise ValueError(f"Unknown probe {probe!r}. Valid: {', '.join(score_matching.PROBES)}.")
    if method not in solvers.ADAPTIVE_METHODS and method not in solvers.STEPPERS:
        valid = (*solvers.ADAPTIVE_METHODS, *solvers.STEPPERS)
        raise ValueError(f"Unknown ODE method {method!r}. Valid: {', '.join(valid)}.")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")


def _probe_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator``, or without one a fresh generator seeded from the global one (one
    draw of the global generator per solve, whatever the size of the probe)."""
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(torch.randint(0, 2**62, (1,))))
    return generator


def augmented_drift(
    drift: solvers.Drift,
    x: torch.Tensor,
    t: torch.Tensor,
    divergence: str = "exact",
    probe_vector: torch.Tensor | None = None,
    create_graph: bool = False,
    return_vjp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The right-hand side of the instantaneous change of variables (Chen et al. 2018,
    Theorem 1), ``d/dt (x, Δ) = (u(x, t), ∇·u(x, t))``, at one point of the augmented
    state: returns ``(u(x, t), ∇·u(x, t), vᵀ ∂u/∂x)``.

    * ``"exact"``: ``∇·u = tr ∂u/∂x`` by
      :func:`course_lib.score_matching.exact_divergence`, one backward pass per dimension;
    * ``"hutchinson"``: ``vᵀ (∂u/∂x) v`` with the probe ``v = probe_vector``,
      ``E[v vᵀ] = I`` (Hutchinson 1989; FFJORD, Grathwohl et al. 2019, §3.1), from the one
      vector–Jacobian product ``vᵀ ∂u/∂x``. The caller draws ``v`` once per solve and
      passes the same tensor at every call: a new probe at every call would make the
      drift random.

    The third output, ``vᵀ ∂u/∂x`` (shape of ``x``), is returned when it was computed:
    always for Hutchinson, and for the exact divergence when ``return_vjp=True`` (chapter 7's
    Jacobian regulariser ``‖vᵀ ∂u/∂x‖²``, Finlay et al. 2020); otherwise ``None``.
    ``create_graph=True`` keeps the graph of the derivatives, so that the divergence can
    itself be differentiated (by the parameters to train a CNF, by ``x`` for the adjoint
    method); ``x`` is used as is when it already requires grad.

    Args:
        drift: ``u(x, t)``.
        x: the state, ``(B, ...)``.
        t: the time as ``drift`` takes it (``(B,)`` for the course's drifts).
        divergence: ``"exact"`` or ``"hutchinson"``.
        probe_vector: ``v``, the shape of ``x``; needed for Hutchinson and for ``return_vjp``.
        create_graph: keep the graph of the derivatives.
        return_vjp: also compute ``vᵀ ∂u/∂x`` with the exact divergence.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}. Valid: {', '.join(DIVERGENCES)}.")
    need_vjp = divergence == "hutchinson" or return_vjp
    if need_vjp and probe_vector is None:
        raise ValueError(f"divergence={divergence!r}, return_vjp={return_vjp} needs a probe_vector")
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        u = drift(x, t)
        v_jac = None
        if need_vjp:
            # a field that does not depend on x has a zero Jacobian
            grad = None
            if u.requires_grad:
                (grad,) = torch.autograd.grad(
                    u, x, probe_vector, create_graph=create_graph, retain_graph=True,
                    allow_unused=True,
                )  # fmt: skip
            v_jac = torch.zeros_like(x) if grad is None else grad
        if divergence == "exact":
            div = score_matching.exact_divergence(u, x, create_graph)
        else:
            div = (v_jac * probe_vector).flatten(1).sum(1)
    return u, div, v_jac


def ode_log_likelihood(
    drift: solvers.Drift,
    x: torch.Tensor,
    t0: float,
    t1: float,
    prior_log_prob: LogProb,
    divergence: str = "exact",
    probe: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    n_steps: int = 100,
    generator: torch.Generator | None = None,
) -> LogLikelihood:
    """``log p_{t0}(x) = log p_{t1}(x_{t1}) + ∫_{t0}^{t1} ∇·u(x_t, t) dt`` (Chen et al.
    2018, Theorem 1; Song et al. 2021, App. D.2).

    The augmented state ``(x, Δ)`` with ``dx/dt = u(x, t)``, ``dΔ/dt = ∇·u(x, t)``,
    ``Δ(t0) = 0`` is integrated from ``t0`` to ``t1`` by
    :func:`~course_lib.solvers.solve_ode_adaptive` (``method`` in
    :data:`~course_lib.solvers.ADAPTIVE_METHODS`) or by ``n_steps`` fixed steps
    (:func:`~course_lib.solvers.solve_ode`, ``method`` in
    :data:`~course_lib.solvers.STEPPERS`). The right-hand side is
    :func:`augmented_drift`, without a graph:

    * ``"exact"``: ``tr ∂u/∂x``, one backward pass per dimension (2D toys);
    * ``"hutchinson"``: ``vᵀ (∂u/∂x) v`` with ``E[v vᵀ] = I`` (Hutchinson 1989; FFJORD,
      Grathwohl et al. 2019, §3.1): one backward pass whatever ``D``; unbiased for
      ``log p``. The probe ``v`` is drawn once per sample and kept for the whole solve:
      a new probe at every call would make the drift random, which an adaptive solver
      cannot integrate (its error estimate would chase the noise).

    Gradients are switched on inside for the divergence only; no graph is kept.

    Args:
        drift: ``u(x, t)``, ``t`` of shape ``(B,)``; e.g. :func:`course_lib.sde.pf_ode_drift`.
        x: data at ``t0``, ``(B, ...)``; float64 recommended for tight tolerances.
        t0, t1: start (data, e.g. ``0`` or ``eps``) and end (prior, e.g. ``1``) times.
        prior_log_prob: ``log p_{t1}(z) -> (B,)``: ``sde.prior_log_prob`` for a model, or
            the exact ``log p_{t1}`` when it is known.
        divergence: ``"exact"`` or ``"hutchinson"``.
        probe: Hutchinson's ``"rademacher"`` (lower variance) or ``"gaussian"``.
        method: ODE method; default Dormand–Prince 5(4), as score SDE (RK45).
        rtol, atol: tolerances of the adaptive solve (score SDE's ``1e-5``).
        n_steps: steps of a fixed-step ``method``.
        generator: for the Hutchinson probes (advanced by exactly one draw).

    Returns:
        :class:`LogLikelihood`.
    """
    t0, t1 = float(t0), float(t1)
    _check(divergence, probe, method, t0, t1)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, ...), got {tuple(x.shape)}")
    b, shape, d = x.shape[0], x.shape[1:], x[0].numel()
    v = None
    if divergence == "hutchinson":  # one probe per sample, the same at every call
        v = score_matching.probe_vectors(x.shape, x, probe, _probe_generator(generator, x.device))

    def augmented(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        u, div, _ = augmented_drift(drift, y[:, :d].reshape(b, *shape), t, divergence, v)
        return torch.cat([u.detach().reshape(b, d), div.to(y)[:, None]], dim=1)

    y0 = torch.cat([x.detach().reshape(b, d), x.new_zeros(b, 1)], dim=1)
    if method in solvers.ADAPTIVE_METHODS:
        res = solvers.solve_ode_adaptive(augmented, y0, t0, t1, method, rtol, atol)
    else:
        grid = torch.linspace(t0, t1, n_steps + 1, dtype=torch.float64)
        res = solvers.solve_ode(augmented, y0, grid, method)
    z, delta = res.x[:, :d].reshape(b, *shape), res.x[:, d]
    prior = prior_log_prob(z).to(delta)
    return LogLikelihood(prior + delta, delta, prior, z, res.nfe)


def bits_per_dim(log_p: torch.Tensor, dim: int, offset_bits: float = 0.0) -> torch.Tensor:
    """``bpd = -log p / (D ln 2) + offset_bits``, per sample.

    The correct recipe for 8-bit images (Theis, van den Oord & Bethge 2016; Song et al.
    2021 report their PF-ODE likelihoods this way): dequantise (:func:`dequantize`:
    ``y = (x + u) / 128 - 1``, ``u ~ U[0, 1)^D``), compute the continuous density
    ``log p(y)`` on ``[-1, 1]``, and add ``offset_bits = log2(128) = 7``
    (:data:`EIGHT_BIT_OFFSET_BITS`), the log-Jacobian per dimension from ``[-1, 1]`` to
    the ``[0, 256)`` scale on which each bin has volume 1. Then ``E[bpd]`` is an upper
    bound on the discrete model's ``-log2 P(x) / D`` (Jensen), which is what "bits/dim"
    means. (Ho et al. 2020 bound the same discrete quantity another way, with a
    discretised-Gaussian decoder and no dequantisation:
    :func:`course_lib.ddpm.discretized_gaussian_log_likelihood`.) The common mistakes:

    * **no dequantisation**: a density evaluated at the 256 grid values is not a bound
      on anything; a model can put arbitrary density on the grid (values below 0 are a
      symptom);
    * **wrong offset**: ``log2(256) = 8`` is the offset for data scaled to ``[0, 1]``, not
      ``[-1, 1]``; 0 reports the density on the wrong scale (off by exactly 1 or 7 bits);
    * **integrating to 0 instead of a small** ``t_0 > 0``: a learned score
      ``~ 1 / std(t)`` is unusable near ``t = 0``; score SDE starts the ODE at
      ``t_0 = 1e-5`` (their ``ε``; the course keeps ``ε`` for noise) and reports
      ``p_{t_0}`` (their App. D.2);
    * **N(0, I) vs p_1**: the prior density must be the one the model's ODE ends in;
      ``N(0, I)`` only approximates ``p_1``, a gap that grows as ``a(1)`` does (a VE
      ``σ_max`` too small for the data, a VP ``β_max`` too small).

    For the 2D toys (no pixel scale) keep ``offset_bits = 0``.

    Args:
        log_p: log-densities in nats, ``(B,)``.
        dim: the data dimension ``D`` (``3072`` for CIFAR-10).
        offset_bits: bits/dim added (``EIGHT_BIT_OFFSET_BITS`` for ``[-1, 1]``-scaled
            8-bit data).
    """
    if dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}")
    return -log_p / (dim * math.log(2)) + offset_bits


def dequantize(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform dequantisation of 8-bit data to ``[-1, 1)``: ``y = (x + u) / 128 - 1``,
    ``u ~ U[0, 1)`` per entry (Theis et al. 2016; Uria et al. 2013).

    Each integer ``x`` becomes a uniform draw over its own bin ``[x, x + 1) / 128 - 1``, so
    the density of ``y`` integrates over a bin to the probability of ``x``: a continuous
    model of ``y`` then bounds the discrete likelihood (see :func:`bits_per_dim`).

    Args:
        x: integers in ``{0, ..., 255}`` (``uint8`` or any integer dtype), ``(B, ...)``.
        generator: for ``u``.
        dtype: of the result.
    """
    if x.is_floating_point() or x.is_complex():
        raise ValueError(
            f"dequantize expects 8-bit integers in {{0, ..., 255}}, got dtype {x.dtype}; "
            "pass the raw uint8 pixels, not images already scaled to [-1, 1]"
        )
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
        raise ValueError(
            f"values must lie in {{0, ..., 255}}, got [{int(x.min())}, {int(x.max())}]"
        )
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=dtype).to(x.device)
    return (x.to(dtype) + u) / 128 - 1
