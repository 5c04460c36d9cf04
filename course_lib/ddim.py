"""Denoising diffusion implicit models (Song, Meng & Ermon 2021), chapter 4.

DDIM keeps DDPM's marginals ``q(x_t | x0)`` and its trained network but samples with a
family of non-Markovian reverse processes indexed by ``eta`` (DDIM eq. 12). On any
increasing sub-grid of steps (``... < t_prev < t < ...``),

    ``x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat
    + sigma_t z``,

with ``x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)`` and (eq. 16)

    ``sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t))
    sqrt(1 - alpha_bar_t / alpha_bar_prev)``.

``eta = 0`` is deterministic: it is the Euler method for the probability-flow ODE in
the variables ``x_bar = x / sqrt(alpha_bar)``, ``sigma = sqrt((1 - alpha_bar) /
alpha_bar)`` (DDIM eq. 14, §4.3), which makes inversion (data -> latent) and latent
interpolation possible. ``eta = 1`` is DDPM's ancestral sampler with the posterior
variance ``beta_tilde`` on that grid.

Integer steps ``t`` here index the (respaced) schedule; the network is still called
at the training time through :func:`course_lib.ddpm.call_model`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from course_lib.ddpm import Model, check_parameterization, predict
from course_lib.sampling import Recorder, SampleResult
from course_lib.schedules import DiscreteSchedule, respace
from course_lib.tensors import randn_like

KINDS: tuple[str, ...] = ("uniform", "quadratic")
Steps = int | Sequence[int] | torch.Tensor | None


def timesteps(T: int, n_steps: int, kind: str = "uniform") -> torch.Tensor:
    """A strided grid ``tau_1 < ... < tau_S = T`` of ``S = n_steps`` training steps
    (DDIM Appendix D.2), as a long tensor of shape ``(S,)``:

    * ``"uniform"``: ``tau_i = floor(c i)`` with ``c = T / S``;
    * ``"quadratic"``: ``tau_i = floor(c i^2)`` with ``c = T / S^2``, denser near the data
      (the paper's choice for CIFAR-10). Its first values would repeat (``floor(c i^2) =
      floor(c (i+1)^2)`` while ``c (2i+1) < 1``); we use ``max(floor(c i^2), i)``, which
      keeps ``S`` distinct steps and changes nothing once ``c i > 1``.

    Both end exactly at ``T``, so sampling starts from the fully noised level. Integer
    arithmetic makes the grid exact (no float rounding at ``T``).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown grid kind {kind!r}. Valid: {', '.join(KINDS)}.")
    if not 1 <= n_steps <= T:
        raise ValueError(f"n_steps must lie in [1, T = {T}], got {n_steps}")
    i = torch.arange(1, n_steps + 1)
    if kind == "uniform":
        return (T * i) // n_steps
    return torch.maximum((T * i * i) // (n_steps * n_steps), i)


def _sub_schedule(schedule: DiscreteSchedule, steps: Steps) -> DiscreteSchedule:
    """``steps=None``: every step of ``schedule``; an int: a uniform grid of that many
    steps; a sequence: that grid."""
    if steps is None:
        return schedule
    if isinstance(steps, int):
        steps = timesteps(schedule.T, steps)
    return respace(schedule, steps)


def ddim_sigma(schedule: DiscreteSchedule, t: int, t_prev: int, eta: float) -> float:
    """``sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 -
    alpha_bar_t / alpha_bar_prev)`` (DDIM eq. 16). For ``eta = 1`` and ``t_prev = t - 1``
    its square is DDPM's ``beta_tilde_t`` (DDPM eq. 7)."""
    ab_t, ab_prev = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t_prev])
    return eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))


def _check_pair(schedule: DiscreteSchedule, t: int, t_prev: int) -> None:
    if not 0 <= t_prev < t <= schedule.T:
        raise ValueError(f"need 0 <= t_prev < t <= {schedule.T}, got t={t}, t_prev={t_prev}")


@torch.no_grad()
def ddim_step(
    model: Model,
    xt: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: DiscreteSchedule,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    parameterization: str = "eps",
    clip_x0: float | None = None,
) -> torch.Tensor:
    """One DDIM update from step ``t`` to ``t_prev < t`` of ``schedule`` (DDIM eq. 12):

    ``x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat
    + sigma_t z``, with ``sigma_t = sigma_t(eta)`` from :func:`ddim_sigma` (eq. 16).

    Noise is drawn only when ``sigma_t > 0`` (never for ``eta = 0`` or ``t_prev = 0``), so
    ``eta = 1`` on the full grid consumes the generator exactly like
    :func:`course_lib.ddpm.ancestral_sample` with ``variance="beta_tilde"``.
    """
    _check_pair(schedule, t, t_prev)
    pred = predict(model, xt, t, schedule, parameterization, clip_x0)
    ab_prev = float(schedule.alpha_bar[t_prev])
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    x_prev = math.sqrt(ab_prev) * pred.x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * pred.eps
    if sigma > 0:
        x_prev = x_prev + sigma * randn_like(xt, generator)
    return x_prev


def _pf_update(
    x: torch.Tensor, eps: torch.Tensor, t: int, t_new: int, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``x_bar(sigma_new) = x_bar(sigma) + (sigma_new - sigma) eps``, back in ``x``."""
    ab, ab_new = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t_new])
    sig, sig_new = math.sqrt((1 - ab) / ab), math.sqrt((1 - ab_new) / ab_new)
    x_bar = x / math.sqrt(ab)
    return math.sqrt(ab_new) * (x_bar + (sig_new - sig) * eps)


@torch.no_grad()
def probability_flow_euler_step(
    model: Model,
    xt: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: DiscreteSchedule,
    parameterization: str = "eps",
) -> torch.Tensor:
    """One Euler step of the probability-flow ODE ``d x_bar = eps_hat(x, t) d sigma``
    in ``x_bar = x / sqrt(alpha_bar)``, ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``
    (DDIM eq. 14, §4.3):

    ``x_bar(sigma_prev) = x_bar(sigma_t) + (sigma_prev - sigma_t) eps_hat(x_t, t)``,

    returned as ``x_prev = sqrt(alpha_bar_prev) x_bar(sigma_prev)``. Algebraically it is
    :func:`ddim_step` with ``eta = 0``.
    """
    _check_pair(schedule, t, t_prev)
    eps = predict(model, xt, t, schedule, parameterization).eps
    return _pf_update(xt, eps, t, t_prev, schedule)


@torch.no_grad()
def ddim_sample(
    model: Model,
    x_T: torch.Tensor,
    schedule: DiscreteSchedule,
    steps: Steps = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    keep: int | None = None,
    clip_x0: float | None = None,
    parameterization: str = "eps",
) -> SampleResult:
    """DDIM sampling (Song et al. 2021, eq. 12) over a strided grid of steps.

    Args:
        model: ``model(x, t / T)``, trained on ``schedule``'s grid.
        x_T: the starting noise ``(B, ...)``.
        schedule: the training schedule.
        steps: an int ``S`` (the uniform grid :func:`timesteps`), an increasing sequence
            of steps in ``[1, T]``, or ``None`` for every step of ``schedule``.
        eta: ``0`` deterministic (DDIM), ``1`` DDPM-like (``beta_tilde`` on the grid).
        generator: for the noise when ``eta > 0``; must live on ``x_T``'s device.
        keep: record every ``keep``-th state; times are training-grid steps.
        clip_x0: clamp ``x0_hat`` to ``[-clip_x0, clip_x0]`` (images).
        parameterization: what the model predicts.

    Returns:
        :class:`~course_lib.sampling.SampleResult` with ``nfe = S``.
    """
    check_parameterization(parameterization)
    sub = _sub_schedule(schedule, steps)
    rec = Recorder(keep)
    x = x_T
    rec(x, int(sub.timesteps[-1]))
    for i in range(sub.T, 0, -1):
        x = ddim_step(model, x, i, i - 1, sub, eta, generator, parameterization, clip_x0)
        rec(x, int(sub.timesteps[i - 1]), last=i == 1)
    return rec.result(x, nfe=sub.T, eta=float(eta))


INVERSION_STEPS: tuple[str, ...] = ("source", "destination")


@torch.no_grad()
def ddim_invert(
    model: Model,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    steps: Steps = 50,
    keep: int | None = None,
    parameterization: str = "eps",
    eps_at: str = "source",
) -> SampleResult:
    """Deterministic DDIM inversion ``x0 -> x_T``: the ``eta = 0`` update run forward,

    ``x_bar(sigma_{i+1}) = x_bar(sigma_i) + (sigma_{i+1} - sigma_i) eps_hat``

    (DDIM §4.3: the ODE can be integrated in either direction). Where to evaluate the
    network (``eps_at``):

    * ``"source"`` (default): Euler's choice, ``eps_hat(x_i, t_i)`` at the step's start,
      for every step but the first (the network is not defined at ``t_0 = 0``, so the
      first step uses ``eps_hat(x_0, t_1)`` either way);
    * ``"destination"``: ``eps_hat(x_i, t_{i+1})`` on every step.

    Decoding (:func:`ddim_sample`) takes the step between ``t_{i+1}`` and ``t_i`` with
    ``eps_hat(x_{i+1}, t_{i+1})``. ``"destination"`` matches its time but feeds the
    network a point whose noise level is that of ``t_i``; ``"source"`` matches point and
    time. Chapter 4 measures the round trip: with the trained MNIST U-Net ``"source"``
    has the smaller error (about 3x at 10 steps, 1.1-1.4x at 100), with the 2D models and the
    exact model ``"destination"`` does; both shrink as the grid is refined.

    Returns:
        :class:`~course_lib.sampling.SampleResult` whose ``x`` is the latent ``x_T``.
    """
    check_parameterization(parameterization)
    if eps_at not in INVERSION_STEPS:
        raise ValueError(f"Unknown eps_at {eps_at!r}. Valid: {', '.join(INVERSION_STEPS)}.")
    sub = _sub_schedule(schedule, steps)
    rec = Recorder(keep)
    x = x0
    rec(x, 0)
    for i in range(sub.T):
        t_eval = i + 1 if (eps_at == "destination" or i == 0) else i
        eps = predict(model, x, t_eval, sub, parameterization).eps
        x = _pf_update(x, eps, i, i + 1, sub)
        rec(x, int(sub.timesteps[i + 1]), last=i + 1 == sub.T)
    return rec.result(x, nfe=sub.T)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation between latents (DDIM §5.3, after White 2016):

    ``z(alpha) = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1``,
    ``theta = arccos(<z0, z1> / (||z0|| ||z1||))``, per sample.

    Unlike the straight line, whose midpoint between two independent Gaussian latents
    has norm ``~ sqrt(D / 2)``, slerp keeps the norm of two latents of *equal* norm
    (Gaussian latents in high dimension nearly are: ``||z|| ~ sqrt(D)``); for unequal
    norms it need not stay between them. (Nearly) parallel pairs fall back to the
    straight line.

    Args:
        z0, z1: ``(B, ...)`` latents of the same shape.
        alpha: a float, or a ``(n,)`` tensor of weights in ``[0, 1]``.

    Returns:
        ``(B, ...)`` for a float ``alpha``, ``(n, B, ...)`` for a tensor of weights.
    """
    if z0.shape != z1.shape or z0.ndim < 2:
        raise ValueError(
            f"slerp needs two (B, ...) tensors of one shape, got {tuple(z0.shape)}, "
            f"{tuple(z1.shape)}"
        )
    a = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    scalar = a.ndim == 0
    a = a.reshape(-1, 1, 1)  # (n, 1, 1)
    f0, f1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[None, :, None]  # (1, B, 1)
    sin = torch.sin(theta)
    straight = sin < 1e-6
    safe = torch.where(straight, torch.ones_like(sin), sin)
    w0 = torch.where(straight, 1 - a, torch.sin((1 - a) * theta) / safe)
    w1 = torch.where(straight, a, torch.sin(a * theta) / safe)
    out = (w0 * f0 + w1 * f1).reshape(-1, *z0.shape)
    return out[0] if scalar else out


@dataclass
class Interpolation:
    """Decoded interpolants ``x`` ``(n, B, ...)`` between two batches of data, their
    latents ``z`` ``(n, B, ...)``, and the weights ``alpha`` ``(n,)``."""

    x: torch.Tensor
    z: torch.Tensor
    alpha: torch.Tensor


@torch.no_grad()
def interpolate(
    model: Model,
    x0_a: torch.Tensor,
    x0_b: torch.Tensor,
    schedule: DiscreteSchedule,
    steps: Steps = 50,
    n: int = 8,
    parameterization: str = "eps",
) -> Interpolation:
    """Interpolate in DDIM's latent space (DDIM §5.3): invert ``x0_a`` and ``x0_b`` to
    ``z_a``, ``z_b`` (:func:`ddim_invert`), take ``n`` points of :func:`slerp` at
    ``alpha = 0, 1/(n-1), ..., 1``, and decode each with deterministic DDIM. The end
    points reproduce ``x0_a`` and ``x0_b`` up to the inversion error.
    """
    if x0_a.shape != x0_b.shape:
        raise ValueError(f"x0_a {tuple(x0_a.shape)} and x0_b {tuple(x0_b.shape)} differ")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    b = x0_a.shape[0]
    z = ddim_invert(model, torch.cat([x0_a, x0_b]), schedule, steps, None, parameterization).x
    alpha = torch.linspace(0, 1, n, dtype=x0_a.dtype, device=x0_a.device)
    zs = slerp(z[:b], z[b:], alpha)  # (n, B, ...)
    flat = zs.reshape(n * b, *x0_a.shape[1:])
    x = ddim_sample(model, flat, schedule, steps, parameterization=parameterization).x
    return Interpolation(x=x.reshape(zs.shape), z=zs, alpha=alpha)
