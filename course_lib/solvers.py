"""Chapter 5: the course's one set of ODE and SDE integrators.

Every continuous-time sampler of the course integrates an ODE ``dx/dt = f(x, t)`` (the
probability-flow ODE, EDM's ``dx̂/dσ``, a flow-matching velocity) or an SDE
``dx = f(x, t) dt + g(t) dw`` along a time grid. This module holds the steps once:

* one-step maps ``x_{i+1} = Φ_h(x_i)`` with ``h = t_{i+1} - t_i`` — :func:`euler_step`
  (order 1), :func:`heun_step` and :func:`midpoint_step` (order 2), :func:`rk4_step`
  (order 4) — each returning the new state and its number of function evaluations (NFE);
* :func:`solve_ode`, a fixed-step solve along an explicit grid (either direction, since
  samplers run from noise ``t = 1`` to data ``t = 0``), recording the trajectory;
* :func:`solve_ode_adaptive`, an error-controlled solve (Dormand–Prince ``dopri5`` by
  default) through ``torchdiffeq`` (Chen et al. 2018), NFE counted;
* :func:`euler_maruyama_step` for SDEs.

Conventions: a drift is called ``f(x, t)`` with ``x`` of shape ``(B, ...)`` and ``t`` of
shape ``(B,)`` (the course's one model signature); times passed to the steps are Python
floats or 0-d tensors; ``h`` may be negative. A method of order ``p`` has local error
``O(|h|^{p+1})`` and global error ``O(|h|^p)`` (Hairer, Nørsett & Wanner 1993, §II.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchdiffeq

from course_lib.sampling import Recorder, SampleResult
from course_lib.tensors import batch_time, expand_like, randn_like

Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Diffusion = Callable[[torch.Tensor], torch.Tensor]
Time = float | torch.Tensor
StepFn = Callable[[Drift, torch.Tensor, Time, Time], tuple[torch.Tensor, int]]

#: error-controlled methods of ``torchdiffeq`` that :func:`solve_ode_adaptive` accepts
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _f(f: Drift, x: torch.Tensor, t: float) -> torch.Tensor:
    """``f(x, t)`` with ``t`` broadcast to the ``(B,)`` time tensor every model expects."""
    return f(x, batch_time(t, x))


# --------------------------------------------------------------------------- steps
def euler_step(f: Drift, x: torch.Tensor, t: Time, t_next: Time) -> tuple[torch.Tensor, int]:
    """Explicit Euler, order 1: ``x' = x + h f(x, t)`` with ``h = t_next - t``. 1 NFE."""
    t, h = float(t), float(t_next) - float(t)
    return x + h * _f(f, x, t), 1


def heun_step(f: Drift, x: torch.Tensor, t: Time, t_next: Time) -> tuple[torch.Tensor, int]:
    """Heun's method (explicit trapezoid), order 2. 2 NFE.

    ``d_1 = f(x, t)``,  ``x̃ = x + h d_1`` (Euler predictor),
    ``d_2 = f(x̃, t + h)``,  ``x' = x + (h / 2) (d_1 + d_2)`` (trapezoid corrector);
    EDM's Algorithm 1 (Karras et al. 2022) uses exactly this step.
    """
    t, h = float(t), float(t_next) - float(t)
    d1 = _f(f, x, t)
    d2 = _f(f, x + h * d1, t + h)
    return x + 0.5 * h * (d1 + d2), 2


def midpoint_step(f: Drift, x: torch.Tensor, t: Time, t_next: Time) -> tuple[torch.Tensor, int]:
    """The explicit midpoint rule, order 2. 2 NFE.

    ``x' = x + h f(x + (h / 2) f(x, t), t + h / 2)``.
    """
    t, h = float(t), float(t_next) - float(t)
    x_mid = x + 0.5 * h * _f(f, x, t)
    return x + h * _f(f, x_mid, t + 0.5 * h), 2


def rk4_step(f: Drift, x: torch.Tensor, t: Time, t_next: Time) -> tuple[torch.Tensor, int]:
    """The classical Runge–Kutta method, order 4. 4 NFE.

    ``k_1 = f(x, t)``, ``k_2 = f(x + h k_1 / 2, t + h / 2)``,
    ``k_3 = f(x + h k_2 / 2, t + h / 2)``, ``k_4 = f(x + h k_3, t + h)``,
    ``x' = x + (h / 6) (k_1 + 2 k_2 + 2 k_3 + k_4)``.
    """
    t, h = float(t), float(t_next) - float(t)
    k1 = _f(f, x, t)
    k2 = _f(f, x + 0.5 * h * k1, t + 0.5 * h)
    k3 = _f(f, x + 0.5 * h * k2, t + 0.5 * h)
    k4 = _f(f, x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), 4


STEPPERS: dict[str, StepFn] = {
    "euler": euler_step,
    "heun": heun_step,
    "midpoint": midpoint_step,
    "rk4": rk4_step,
}


def get_step(method: str) -> StepFn:
    """The one-step map called ``method`` (a key of :data:`STEPPERS`)."""
    if method not in STEPPERS:
        raise ValueError(
            f"Unknown ODE method {method!r}. Valid fixed-step methods: {', '.join(STEPPERS)}; "
            f"for an error-controlled solve use solve_ode_adaptive ({', '.join(ADAPTIVE_METHODS)})."
        )
    return STEPPERS[method]


def check_grid(grid: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """``grid`` as a 1D float64 CPU tensor of at least two strictly monotone times."""
    grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(
            f"the time grid must have shape (S + 1,) with S >= 1 steps, got {tuple(grid.shape)}"
        )
    if not torch.isfinite(grid).all():
        raise ValueError("the time grid holds a non-finite value")
    steps = grid[1:] - grid[:-1]
    if not ((steps > 0).all() or (steps < 0).all()):
        raise ValueError(
            "the time grid must be strictly increasing or strictly decreasing (no repeated "
            f"times), got {grid.tolist()}"
        )
    return grid


# --------------------------------------------------------------------------- solves
@torch.no_grad()
def solve_ode(
    f: Drift,
    x_init: torch.Tensor,
    grid: torch.Tensor | Sequence[float],
    method: str = "heun",
    final_euler: bool = False,
    keep: int | None = None,
) -> SampleResult:
    """Integrate ``dx/dt = f(x, t)`` from ``grid[0]`` to ``grid[-1]`` with a fixed-step method.

    ``x_{i+1} = Φ_{h_i}(x_i)``, ``h_i = grid[i+1] - grid[i]``, for ``i = 0 .. S - 1``; the
    grid may run either way (sampling runs from ``t = 1`` down to ``t = 0``).

    Args:
        f: the drift ``f(x, t)``, ``t`` of shape ``(B,)``.
        x_init: the state at ``grid[0]``, ``(B, ...)``; any float dtype (float64 works).
        grid: ``(S + 1,)`` strictly monotone times.
        method: ``"euler"``, ``"heun"``, ``"midpoint"`` or ``"rk4"``.
        final_euler: take the last step with Euler (EDM Algorithm 1: a denoiser's drift
            ``(x̂ - D(x̂; σ)) / σ`` is undefined at ``σ = 0``, where the grid ends).
        keep: record every ``keep``-th state (and the last); times are grid times.

    Returns:
        :class:`~course_lib.sampling.SampleResult` with ``nfe`` counted: ``S`` (Euler),
        ``2 S`` (Heun, midpoint; ``2 S - 1`` with ``final_euler``), ``4 S`` (RK4).
    """
    step = get_step(method)
    grid = check_grid(grid).tolist()
    rec = Recorder(keep)
    x, nfe = x_init, 0
    rec(x, grid[0])
    n_steps = len(grid) - 1
    for i in range(n_steps):
        last = i == n_steps - 1
        x, n = (euler_step if final_euler and last else step)(f, x, grid[i], grid[i + 1])
        nfe += n
        rec(x, grid[i + 1], last=last)
    return rec.result(x, nfe=nfe)


@torch.no_grad()
def solve_ode_adaptive(
    f: Drift,
    x_init: torch.Tensor,
    t0: float,
    t1: float,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    keep_times: torch.Tensor | Sequence[float] | None = None,
) -> SampleResult:
    """Integrate ``dx/dt = f(x, t)`` from ``t0`` to ``t1`` with step-size control.

    ``torchdiffeq.odeint`` (Chen et al. 2018) with an embedded Runge–Kutta pair (default
    Dormand & Prince 1980, order 5(4)) picks each ``h`` so that the local error estimate
    stays below ``atol + rtol |x|`` per component; the NFE is whatever that takes, and is
    counted here. Score SDE (Song et al. 2021, §4.3) samples and computes likelihoods with
    the PF-ODE this way (RK45, ``rtol = atol = 1e-5``, their defaults and ours). The solve
    runs under ``no_grad`` (sampling, likelihoods); to train through a solve, call
    ``torchdiffeq.odeint`` (or ``odeint_adjoint``) directly.

    Args:
        f: the drift ``f(x, t)``, ``t`` of shape ``(B,)``. It may switch gradients on
            inside (the likelihood's divergence does), although the solve itself runs
            under ``no_grad``.
        x_init: the state at ``t0``, ``(B, ...)``.
        t0, t1: start and end times (``t1 < t0`` integrates backwards).
        method: one of :data:`ADAPTIVE_METHODS`.
        rtol, atol: relative and absolute tolerances.
        keep_times: times between ``t0`` and ``t1`` at which to record the state
            (``t0`` and ``t1`` are added when missing); ``None`` records nothing.

    Returns:
        :class:`~course_lib.sampling.SampleResult`; ``nfe`` counts every call of ``f``
        (including the initial step-size selection).
    """
    if method not in ADAPTIVE_METHODS:
        raise ValueError(
            f"Unknown adaptive method {method!r}. Valid: {', '.join(ADAPTIVE_METHODS)}; for "
            f"fixed steps use solve_ode ({', '.join(STEPPERS)})."
        )
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    times = _output_times(t0, t1, keep_times)
    nfe, lo, hi = 0, min(t0, t1), max(t0, t1)

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        # torchdiffeq's first-step heuristic may probe just past an end: keep t inside, so
        # that a drift defined only on [0, 1] is never called outside it
        return f(x, batch_time(t.clamp(lo, hi), x))

    ts = times.to(device=x_init.device, dtype=x_init.dtype)
    # step_t: every step ends on the output times (torchdiffeq otherwise steps past t1
    # and interpolates back, evaluating f beyond the interval)
    options = {"step_t": ts[1:]}
    xs = torchdiffeq.odeint(func, x_init, ts, rtol=rtol, atol=atol, method=method, options=options)
    if keep_times is None:
        return SampleResult(x=xs[-1], nfe=nfe)
    return SampleResult(x=xs[-1], trajectory=xs.cpu(), times=times, nfe=nfe)


def _output_times(
    t0: float, t1: float, keep_times: torch.Tensor | Sequence[float] | None
) -> torch.Tensor:
    """``[t0, *keep_times, t1]`` (without duplicates), checked to run monotonically."""
    if keep_times is None:
        return torch.tensor([t0, t1], dtype=torch.float64)
    inner = torch.as_tensor(keep_times, dtype=torch.float64).detach().cpu().reshape(-1)
    lo, hi = min(t0, t1), max(t0, t1)
    if ((inner < lo) | (inner > hi)).any():
        raise ValueError(f"keep_times must lie between t0 = {t0} and t1 = {t1}")
    inner = inner[(inner != t0) & (inner != t1)]
    return check_grid(torch.cat([inner.new_tensor([t0]), inner, inner.new_tensor([t1])]))


def euler_maruyama_step(
    f: Drift,
    g: Diffusion,
    x: torch.Tensor,
    t: Time,
    t_next: Time,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One Euler–Maruyama step of ``dx = f(x, t) dt + g(t) dw`` (Kloeden & Platen 1992):

    ``x' = x + f(x, t) h + g(t) sqrt(|h|) z``,  ``z ~ N(0, I)``,  ``h = t_next - t``.

    For a reverse-time SDE (``h < 0``) the Brownian increment still has variance ``|h|``
    (Anderson 1982). Strong order 1/2, weak order 1. 1 NFE of ``f``.

    Args:
        f: drift ``f(x, t)``, ``t`` of shape ``(B,)``.
        g: diffusion coefficient ``g(t)``, ``t`` of shape ``(B,)``, returning ``(B,)``
            (or a scalar tensor).
        x: state at ``t``, ``(B, ...)``.
        t, t_next: the two times.
        generator: for ``z``.
    """
    t, h = float(t), float(t_next) - float(t)
    g_t = expand_like(g(batch_time(t, x)), x)
    return x + h * _f(f, x, t) + g_t * abs(h) ** 0.5 * randn_like(x, generator)
