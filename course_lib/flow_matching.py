"""Flow matching: affine probability paths, their velocities, the CFM loss, and the
conversions that make "flow matching with a Gaussian path is diffusion" a tested statement.

**Time runs the other way here** (Lipman et al. 2023, whose letters chapter 6 follows):
``t = 0`` is noise, ``t = 1`` is data. A conditional path joins a noise draw ``x0 ~ N(0, I)``
to a data point ``x1``,

    x_t = α_t x1 + σ_t x0,        u_t(x_t | x0, x1) = α̇_t x1 + σ̇_t x0,

with ``α_0 = 0, σ_0 = 1`` and ``α_1 = 1, σ_1 = 0`` (Lipman et al. 2023, §4, eq. 10–15;
Albergo & Vanden-Eijnden 2023 call the same objects stochastic interpolants). The
*marginal* velocity ``u_t(x) = E[α̇_t x1 + σ̇_t x0 | x_t = x]`` transports ``p_0 = N(0, I)``
to the data law; the conditional flow-matching (CFM) loss regresses it without knowing it
(Lipman et al. 2023, Theorem 2).

The diffusion chapters write ``x_t = a x0 + s eps`` with ``x0`` *data*: a flow-time ``t``
is a diffusion state with ``a = α_t``, ``s = σ_t`` and ``eps`` = the flow's ``x0``. The
conversions below are named for the flow's letters: ``x1`` (data prediction, the
diffusion chapters' ``x̂0``), ``eps`` (noise prediction), ``score`` and ``velocity``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from course_lib import solvers
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import SampleResult
from course_lib.sde import VPSDE
from course_lib.tensors import expand_like

Coefficient = Callable[[torch.Tensor], torch.Tensor]  # t (any shape) -> same shape
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t (B,)) -> (B, ...)


def _t(t: float | torch.Tensor) -> torch.Tensor:
    if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
        t = torch.as_tensor(t, dtype=torch.float64)
    if not torch.isfinite(t).all() or ((t < 0) | (t > 1)).any():
        raise ValueError(
            "flow time must lie in [0, 1] (t = 0 noise, t = 1 data: the reverse of the "
            f"diffusion chapters); got values in [{float(t.min())}, {float(t.max())}]"
        )
    return t


@dataclass(frozen=True)
class AffinePath:
    """``x_t = α_t x1 + σ_t x0`` with its time derivatives ``α̇_t``, ``σ̇_t``.

    ``t_max`` is the last time the velocity is finite (``1`` unless ``σ̇`` blows up at the
    data end, as for the VP path, whose grids stop at ``t_max``).
    """

    name: str
    alpha_fn: Coefficient
    sigma_fn: Coefficient
    d_alpha_fn: Coefficient
    d_sigma_fn: Coefficient
    t_max: float = 1.0

    def alpha(self, t: float | torch.Tensor) -> torch.Tensor:
        """``α_t``."""
        return self.alpha_fn(_t(t))

    def sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """``σ_t``."""
        return self.sigma_fn(_t(t))

    def d_alpha(self, t: float | torch.Tensor) -> torch.Tensor:
        """``α̇_t = dα_t/dt``."""
        return self.d_alpha_fn(_t(t))

    def d_sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """``σ̇_t = dσ_t/dt``."""
        return self.d_sigma_fn(_t(t))

    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = α_t x1 + σ_t x0`` for ``t`` of shape ``(B,)`` (or a scalar)."""
        return (
            expand_like(self.alpha(t), x1).to(x1) * x1 + expand_like(self.sigma(t), x0).to(x0) * x0
        )

    def conditional_velocity(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """``u_t(x_t | x0, x1) = α̇_t x1 + σ̇_t x0``, the regression target of CFM."""
        return (
            expand_like(self.d_alpha(t), x1).to(x1) * x1
            + expand_like(self.d_sigma(t), x0).to(x0) * x0
        )

    def edm_sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """EDM's noise level of flow time ``t``: ``σ_t / α_t``, since
        ``x_t / α_t = x1 + (σ_t / α_t) x0``."""
        return self.sigma(t) / self.alpha(t)

    def t_from_edm_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The flow time whose noise level ``σ_t / α_t`` is ``sigma`` (> 0): the inverse
        of :meth:`edm_sigma`, which decreases in ``t`` on every path here. Bisection in
        float64 (60 halvings: the bracket shrinks to ``2^-60``)."""
        target = torch.as_tensor(sigma, dtype=torch.float64)
        if (target <= 0).any() or not torch.isfinite(target).all():
            raise ValueError("sigma must be positive and finite")
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, self.t_max)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.edm_sigma(mid.clamp(min=1e-300)) > target  # still too noisy
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


def linear_path() -> AffinePath:
    """The linear (conditional OT, rectified-flow) path ``x_t = t x1 + (1 - t) x0``:
    ``u_t = x1 - x0`` (Lipman et al. 2023, eq. 20 with ``σ_min = 0``; Liu et al. 2023,
    eq. 1; Tong et al. 2023's I-CFM with ``σ = 0``)."""
    return AffinePath(
        "linear",
        alpha_fn=lambda t: t,
        sigma_fn=lambda t: 1 - t,
        d_alpha_fn=torch.ones_like,
        d_sigma_fn=lambda t: -torch.ones_like(t),
    )


def cosine_path() -> AffinePath:
    """``α_t = sin(πt/2)``, ``σ_t = cos(πt/2)``: variance preserving (``α² + σ² = 1``) with
    a constant speed on the circle (the "trigonometric" interpolant of Albergo &
    Vanden-Eijnden 2023)."""
    h = math.pi / 2
    return AffinePath(
        "cosine",
        alpha_fn=lambda t: torch.sin(h * t),
        sigma_fn=lambda t: torch.cos(h * t),
        d_alpha_fn=lambda t: h * torch.cos(h * t),
        d_sigma_fn=lambda t: -h * torch.sin(h * t),
    )


def vp_path(sde: VPSDE | None = None, t_max: float = 1 - 1e-3) -> AffinePath:
    """The diffusion (VP) path read backwards: flow time ``t`` is diffusion time
    ``s = 1 - t`` of chapter 5's :class:`~course_lib.sde.VPSDE`,
    ``α_t = √ᾱ(1 - t)``, ``σ_t = √(1 - ᾱ(1 - t))`` with ``ᾱ(s) = exp(-∫_0^s β)``
    (Lipman et al. 2023, eq. 18–19). Differentiating, ``α̇_t = β(s) α_t / 2`` and
    ``σ̇_t = -β(s) α_t² / (2 σ_t)``, which is infinite at ``t = 1``: samplers stop at
    ``t_max`` (chapter 5's ``t_min = 1e-3``). ``α_0 = e^{-∫β/2} ≈ 0.0066``, not ``0``: the
    VP path starts only *near* pure noise."""
    vp = sde or VPSDE()

    def alpha(t: torch.Tensor) -> torch.Tensor:
        return vp.marginal(1 - t).a

    def sigma(t: torch.Tensor) -> torch.Tensor:
        return vp.marginal(1 - t).std

    def d_alpha(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * vp.beta(1 - t) * alpha(t)

    def d_sigma(t: torch.Tensor) -> torch.Tensor:
        return -0.5 * vp.beta(1 - t) * alpha(t) ** 2 / sigma(t)

    return AffinePath("vp", alpha, sigma, d_alpha, d_sigma, t_max=t_max)


PATHS: dict[str, Callable[[], AffinePath]] = {
    "linear": linear_path,
    "cosine": cosine_path,
    "vp": vp_path,
}


def get_path(name: str) -> AffinePath:
    """The path called ``name`` (a key of :data:`PATHS`)."""
    if name not in PATHS:
        raise ValueError(f"Unknown path {name!r}; valid names are {', '.join(PATHS)}.")
    return PATHS[name]()


# ------------------------------------------------------------------ conversions
def _coefs(path: AffinePath, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(
        expand_like(c(t), x).to(x) for c in (path.alpha, path.sigma, path.d_alpha, path.d_sigma)
    )


def velocity_from_x1_eps(
    path: AffinePath, x1: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``u = α̇_t x̂1 + σ̇_t ε̂``: a velocity from a data and a noise prediction."""
    _, _, da, ds = _coefs(path, t, x1)
    return da * x1 + ds * eps


def velocity_from_eps(
    path: AffinePath, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``u = α̇_t (x - σ_t ε̂) / α_t + σ̇_t ε̂`` (needs ``α_t > 0``)."""
    a, s, da, ds = _coefs(path, t, x)
    return da * (x - s * eps) / a + ds * eps


def velocity_from_x1(
    path: AffinePath, x: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``u = α̇_t x̂1 + σ̇_t (x - α_t x̂1) / σ_t`` (needs ``σ_t > 0``)."""
    a, s, da, ds = _coefs(path, t, x)
    return da * x1 + ds * (x - a * x1) / s


def x1_from_velocity(
    path: AffinePath, x: torch.Tensor, u: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Solve ``x = α x̂1 + σ ε̂``, ``u = α̇ x̂1 + σ̇ ε̂`` for ``x̂1``:
    ``x̂1 = (σ_t u - σ̇_t x) / (α̇_t σ_t - σ̇_t α_t)``."""
    a, s, da, ds = _coefs(path, t, x)
    return (s * u - ds * x) / (da * s - ds * a)


def eps_from_velocity(
    path: AffinePath, x: torch.Tensor, u: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``ε̂ = (α̇_t x - α_t u) / (α̇_t σ_t - σ̇_t α_t)`` (the other unknown of the same system)."""
    a, s, da, ds = _coefs(path, t, x)
    return (da * x - a * u) / (da * s - ds * a)


def score_from_eps(path: AffinePath, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``∇log p_t(x) = -ε̂ / σ_t`` (Tweedie, chapter 1; flow time ``t``)."""
    _, s, _, _ = _coefs(path, t, eps)
    return -eps / s


def eps_from_score(path: AffinePath, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``ε̂ = -σ_t ∇log p_t(x)``."""
    _, s, _, _ = _coefs(path, t, score)
    return -s * score


def velocity_from_score(
    path: AffinePath, x: torch.Tensor, score: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """``u_t(x) = (α̇_t/α_t) x + (α̇_t σ_t²/α_t - σ̇_t σ_t) ∇log p_t(x)``: substitute
    ``ε̂ = -σ_t ∇log p_t`` and ``x̂1 = (x + σ_t² ∇log p_t)/α_t`` (Tweedie) into
    ``α̇ x̂1 + σ̇ ε̂`` (Lipman et al. 2023, eq. 16 for Gaussian paths)."""
    a, s, da, ds = _coefs(path, t, x)
    return (da / a) * x + (da * s**2 / a - ds * s) * score


def score_from_velocity(
    path: AffinePath, x: torch.Tensor, u: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The inverse of :func:`velocity_from_score`: ``-ε̂(x, u) / σ_t``."""
    return score_from_eps(path, eps_from_velocity(path, x, u, t), t)


def denoiser_from_velocity(
    velocity: Velocity, path: AffinePath
) -> Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor]:
    """EDM's denoiser ``D(x̂; σ)`` (chapter 5) of a velocity field on ``path``.

    A flow state ``x_t = α_t x1 + σ_t x0`` divided by ``α_t`` is EDM's
    ``x̂ = x1 + (σ_t / α_t) x0`` at noise level ``σ = σ_t / α_t``. So
    ``D(x̂; σ) = x̂1(α_t x̂, v(α_t x̂, t))`` with ``t`` the flow time of ``σ``
    (:meth:`AffinePath.t_from_edm_sigma`) and :func:`x1_from_velocity`: with it every
    sampler of chapters 3–5 runs on a flow (chapter 9). Needs ``σ > 0``."""

    def denoiser(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        t = path.t_from_edm_sigma(level.expand(x.shape[0]) if level.ndim == 0 else level)
        x_t = expand_like(path.alpha(t), x).to(x) * x
        t_net = t.to(x.dtype)
        return x1_from_velocity(path, x_t, velocity(x_t, t_net), t)

    return denoiser


def eps_loss_weight(path: AffinePath, t: float | torch.Tensor) -> torch.Tensor:
    """``λ_t = (σ̇_t - α̇_t σ_t / α_t)²``: with ``v = velocity_from_eps(ε̂)``,
    ``v - u_t(x_t | x0, x1) = (σ̇_t - α̇_t σ_t / α_t)(ε̂ - x0)``, so the CFM loss of a
    noise predictor is DDPM's ``ε`` loss weighted by ``λ_t`` over ``t ~ U[0, 1]``: flow
    matching on a Gaussian path is diffusion training with another time weighting
    (Lipman et al. 2023, §4.1; Kingma & Gao 2023)."""
    t = _t(t)
    return (path.d_sigma(t) - path.d_alpha(t) * path.sigma(t) / path.alpha(t)) ** 2


def diffusion_time(t: float | torch.Tensor) -> torch.Tensor:
    """Chapter 5's diffusion time of flow time ``t`` on :func:`vp_path`: ``s = 1 - t``
    (the map is its own inverse)."""
    return 1 - _t(t)


def velocity_from_diffusion_eps(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    path: AffinePath | None = None,
) -> Velocity:
    """A flow's velocity field ``v(x, t)`` from a diffusion noise predictor
    ``eps_model(x, s)`` in chapter 5's diffusion time ``s`` of the VP SDE: evaluate it at
    ``s = 1 - t`` and convert with :func:`velocity_from_eps`. This is the precise sense in
    which a diffusion model *is* a flow on :func:`vp_path`."""
    p = path or vp_path()

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return velocity_from_eps(p, x, eps_model(x, diffusion_time(t).to(x)), t)

    return velocity


# ------------------------------------------------------------- exact velocity
def exact_velocity(gm: GaussianMixture, path: AffinePath) -> Velocity:
    """The closed-form marginal velocity of ``path`` when ``x1 ~ gm``:
    ``u_t(x) = α̇_t E[x1 | x_t = x] + σ̇_t E[x0 | x_t = x]`` with the posterior means of
    :meth:`~course_lib.gaussian_mixture.GaussianMixture.marginal_velocity`."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        return gm.marginal_velocity(
            x, path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)
        )

    return velocity


def exact_log_prob(gm: GaussianMixture, path: AffinePath) -> Callable[..., torch.Tensor]:
    """``log p_t(x)`` of ``x_t = α_t x1 + σ_t x0``, ``x1 ~ gm``: the mixture noised with
    ``a = α_t``, ``s = σ_t``."""

    def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        return gm.noised_log_prob(x, path.alpha(t), path.sigma(t))

    return log_prob


# ------------------------------------------------------------------ the loss
def cfm_loss_at(
    model: nn.Module | Velocity,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    path: AffinePath,
) -> torch.Tensor:
    """``mean ‖v_θ(x_t, t) - u_t(x_t | x0, x1)‖²`` at given pairs and times (averaged
    over the batch and the data dimensions, like :func:`course_lib.ddpm.loss`)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must match")
    xt = path.interpolate(x0, x1, t)
    target = path.conditional_velocity(x0, x1, t)
    return torch.mean((model(xt, t.to(x1)) - target) ** 2)


def cfm_loss(
    model: nn.Module | Velocity,
    x1: torch.Tensor,
    path: AffinePath,
    coupling: Callable | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The conditional flow-matching loss (Lipman et al. 2023, eq. 9; Tong et al. 2023,
    eq. 9): draw ``x0 ~ N(0, I)``, pair it with the data batch by ``coupling`` (default:
    independent; :mod:`course_lib.couplings` has minibatch OT), draw ``t ~ U[0, t_max]``
    and regress the conditional velocity with :func:`cfm_loss_at`. Its gradient equals
    that of the intractable ``E‖v_θ(x_t, t) - u_t(x_t)‖²`` (Lipman et al. 2023, Theorem 2).
    """
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    if coupling is not None:
        x0, x1 = coupling(x0, x1, generator)
    t = path.t_max * torch.rand(x1.shape[0], generator=generator, device=x1.device)
    return cfm_loss_at(model, x0, x1, t.to(torch.float64), path)


# ------------------------------------------------------------------ sampling
def time_grid(n_steps: int, path: AffinePath | None = None) -> torch.Tensor:
    """``n_steps + 1`` uniform flow times from ``0`` (noise) to ``path.t_max`` (data)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    return torch.linspace(0.0, path.t_max if path else 1.0, n_steps + 1, dtype=torch.float64)


@torch.no_grad()
def sample(
    velocity: Velocity,
    x0: torch.Tensor,
    n_steps: int,
    method: str = "euler",
    path: AffinePath | None = None,
    keep: int | None = None,
) -> SampleResult:
    """Integrate ``dx/dt = v(x, t)`` from noise ``x0`` at ``t = 0`` to ``t_max`` with
    chapter 5's :func:`~course_lib.solvers.solve_ode` (``method``: Euler, Heun, midpoint,
    RK4): the flow sampler is an ODE solve and nothing more."""
    return solvers.solve_ode(velocity, x0, time_grid(n_steps, path), method, keep=keep)


@dataclass(frozen=True)
class Straightness:
    """Liu et al.'s straightness ``S = ∫_0^1 E‖(x̂1 - x̂0) - v(x̂_t, t)‖² dt`` of the
    sampled trajectories ``x̂_t`` (zero iff every trajectory is a straight line at constant
    speed), and the path energy ``𝓔 = ∫_0^1 E‖v(x̂_t, t)‖² dt`` (``= S + E‖x̂1 - x̂0‖²``,
    so ≥ ``E‖x̂1 - x̂0‖²``, with equality for straight paths; Shaul et al. 2023, Tong et
    al. 2024 §5)."""

    straightness: float
    path_energy: float
    displacement: float  # E‖x̂1 - x̂0‖²


@torch.no_grad()
def straightness(
    velocity: Velocity, x0: torch.Tensor, n_steps: int = 100, path: AffinePath | None = None
) -> Straightness:
    """Measure :class:`Straightness` on Euler trajectories of ``n_steps`` from ``x0`` (to
    ``path.t_max`` when a path is given: the VP path's exact field is infinite at ``t = 1``);
    the time integrals are the left Riemann sums of the same grid (the Euler velocities)."""
    grid = time_grid(n_steps, path)
    x = x0
    velocities = []
    for i in range(n_steps):
        t = grid[i].expand(x.shape[0]).to(x)
        v = velocity(x, t)
        velocities.append(v)
        x = x + (grid[i + 1] - grid[i]).to(x) * v
    vs = torch.stack(velocities)  # (S, B, ...)
    delta = (x - x0)[None]
    dims = tuple(range(2, vs.ndim))
    s = ((delta - vs) ** 2).sum(dims).mean()
    energy = (vs**2).sum(dims).mean()
    return Straightness(float(s), float(energy), float((delta[0] ** 2).flatten(1).sum(1).mean()))


@torch.no_grad()
def reflow_pairs(
    velocity: Velocity, x0: torch.Tensor, n_steps: int = 100, method: str = "rk4"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow's reflow coupling (Liu et al. 2023, Alg. 1): the pairs
    ``(x0, x̂1)`` with ``x̂1`` the ODE solution of ``velocity`` from ``x0``. Training a new
    flow on these pairs ("2-RF") straightens the paths: the pairs are a deterministic
    coupling, made by a flow whose trajectories never meet, so the new model's
    conditional paths meet far less often, and the transport cost ``E‖x̂1 - x0‖²`` does
    not increase (Liu et al. 2023, §3)."""
    return x0, sample(velocity, x0, n_steps, method).x
