"""EDM: Karras, Aittala, Aila & Laine (2022), "Elucidating the Design Space of
Diffusion-Based Generative Models", chapter 5.

EDM writes every diffusion model's marginal as ``x = s(t) (x0 + σ(t) ε)`` (their eq. 4,
Table 1) and works in the unscaled variable ``x̂ = x / s(t)`` with the noise level ``σ``
itself as time. Everything then turns on one function, the **denoiser**
``D_θ(x̂; σ) ≈ E[x0 | x̂]`` for ``x̂ = x0 + σ ε``, called ``denoiser(x, sigma)`` with
``x`` of shape ``(B, ...)`` and ``sigma`` of shape ``(B,)``:

* the score is ``∇log p(x̂; σ) = (D_θ(x̂; σ) - x̂) / σ²`` (eq. 3), so the probability-flow
  ODE is ``dx̂/dσ = (x̂ - D_θ(x̂; σ)) / σ`` (eq. 1 with ``σ(t) = t``, ``s(t) = 1``);
* a raw network ``F_θ`` becomes a denoiser through the preconditioning
  ``D_θ(x̂; σ) = c_skip(σ) x̂ + c_out(σ) F_θ(c_in(σ) x̂; c_noise(σ))`` (eq. 7,
  :class:`Preconditioning`, :class:`EDMDenoiser`), trained with log-normal ``σ`` and the
  weight ``λ(σ)`` (eq. 8, :func:`edm_loss`);
* the sampler integrates the ODE on the grid ``σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ}
  - σ_max^{1/ρ}))^ρ`` (eq. 5, :func:`time_grid`) with Heun's method, last step Euler,
  optionally with "churn" noise (Algorithms 1–2, :func:`heun_sample`); the steps are
  :mod:`course_lib.solvers`'s.

Every earlier model is a special case, through tested conversions: an ``ε``-prediction
is ``D_θ(x̂; σ) = x̂ - σ ε`` (:func:`denoiser_from_eps`); DDPM's VP scaling is ``s = √ᾱ``,
``σ = √((1 - ᾱ)/ᾱ)`` (:func:`vp_sigma`), so chapter 3's network turns into a denoiser
(:func:`denoiser_from_ddpm`, EDM's Table 1 "VP" and "iDDPM" columns: ``c_skip = 1``,
``c_out = -σ``, ``c_in = 1/√(σ² + 1)``) and EDM's Heun sampler can drive it, as EDM
does with the original VP, VE and iDDPM checkpoints (§3, Fig. 2). The exact twin of a toy
gives the exact denoiser (:func:`exact_denoiser`).

Notation: ``x̂`` is spelled ``x`` in code. ``D`` alone is the data dimension; the
denoiser is always written with its arguments, ``D_θ(x̂; σ)`` (``D*(x̂; σ)`` when exact).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from course_lib import solvers
from course_lib.ddpm import Model, check_parameterization
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import Recorder, SampleResult
from course_lib.schedules import DiscreteSchedule
from course_lib.sde import SDE, Score
from course_lib.tensors import batch_time, expand_like, randn_like

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Sigma = float | torch.Tensor


# --------------------------------------------------------------------------- helpers
def _sigma_like(sigma: Sigma, x: torch.Tensor, allow_zero: bool = False) -> torch.Tensor:
    """``σ`` (a float, ``()`` or ``(B,)``) shaped ``(B, 1, ..., 1)`` against ``x``, checked."""
    s = expand_like(sigma, x)
    bad = (s < 0).any() if allow_zero else (s <= 0).any()
    if bad or not torch.isfinite(s).all():
        need = "σ >= 0" if allow_zero else "σ > 0"
        raise ValueError(f"noise levels must be finite with {need}, got {sigma}")
    return s


def _common_level(sigma: torch.Tensor) -> torch.Tensor:
    """``σ`` as ``(B,)``, or a scalar when the batch shares one level (then a Gaussian
    mixture factors ``K`` covariances instead of ``B K``)."""
    sigma = sigma.detach()
    return sigma[0] if sigma.numel() > 0 and bool((sigma == sigma[0]).all()) else sigma


def _interp(xq: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``fp`` over the increasing knots ``xp`` at ``xq``
    (all float64 on the CPU; ``xq`` inside ``[xp[0], xp[-1]]``). Exact at the knots."""
    idx = torch.searchsorted(xp, xq).clamp(1, xp.shape[0] - 1)
    w = (xq - xp[idx - 1]) / (xp[idx] - xp[idx - 1])
    return fp[idx - 1] + w * (fp[idx] - fp[idx - 1])


# ------------------------------------------------------------ conversions (tested)
def vp_sigma(alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """EDM's noise level of a variance-preserving ``x_t = √ᾱ x0 + √(1 - ᾱ) ε``:
    ``σ = √((1 - ᾱ) / ᾱ)`` (Table 1, VP column; DDIM's ``σ̄``), with ``s = √ᾱ``."""
    ab = torch.as_tensor(alpha_bar)
    if not ab.is_floating_point():
        ab = ab.double()
    if ((ab <= 0) | (ab > 1)).any():
        raise ValueError("every alpha_bar must lie in (0, 1]")
    return torch.sqrt((1 - ab) / ab)


def alpha_bar_from_sigma(sigma: Sigma) -> torch.Tensor:
    """The inverse of :func:`vp_sigma`: ``ᾱ = 1 / (1 + σ²)``."""
    s = torch.as_tensor(sigma)
    if not s.is_floating_point():
        s = s.double()
    if (s < 0).any():
        raise ValueError("noise levels must satisfy σ >= 0")
    return 1 / (1 + s**2)


def denoiser_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """``D(x̂; σ) = x̂ - σ ε̂``: a noise prediction as a denoiser (``x̂ = x0 + σ ε``)."""
    return x - _sigma_like(sigma, x, allow_zero=True) * eps


def eps_from_denoiser(x: torch.Tensor, denoised: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """``ε̂ = (x̂ - D(x̂; σ)) / σ``, the inverse of :func:`denoiser_from_eps` (``σ > 0``)."""
    return (x - denoised) / _sigma_like(sigma, x)


def score_from_denoiser(x: torch.Tensor, denoised: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """``∇log p(x̂; σ) = (D(x̂; σ) - x̂) / σ²`` (EDM eq. 3; Tweedie), the score of the data
    blurred by ``σ`` (``σ > 0``)."""
    return (denoised - x) / _sigma_like(sigma, x) ** 2


def denoiser_from_score(x: torch.Tensor, score: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """``D(x̂; σ) = x̂ + σ² ∇log p(x̂; σ)``, the inverse of :func:`score_from_denoiser`."""
    return x + _sigma_like(sigma, x, allow_zero=True) ** 2 * score


def ddpm_x_from_edm(x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """DDPM's ``x_t = s x̂ = x̂ / √(1 + σ²)`` from EDM's unscaled ``x̂`` (``s = √ᾱ``)."""
    return x / torch.sqrt(1 + _sigma_like(sigma, x, allow_zero=True) ** 2)


def edm_x_from_ddpm(x_t: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    """EDM's ``x̂ = x_t / s = x_t √(1 + σ²)``, the inverse of :func:`ddpm_x_from_edm`."""
    return x_t * torch.sqrt(1 + _sigma_like(sigma, x_t, allow_zero=True) ** 2)


# ----------------------------------------------------------------- preconditioning
@dataclass(frozen=True)
class Preconditioning:
    """EDM's preconditioning and loss weight (Table 1, "Ours" column; derivation in their
    App. B.6), for data with per-element standard deviation ``σ_data``:

    * ``c_in(σ) = 1 / √(σ² + σ_data²)``: the network input ``c_in x̂`` has unit variance;
    * ``c_skip(σ) = σ_data² / (σ² + σ_data²)``: the skip weight that minimises the
      variance of the network's effective target ``(x0 - c_skip x̂) / c_out``;
    * ``c_out(σ) = σ σ_data / √(σ² + σ_data²)``: that target then has unit variance;
    * ``c_noise(σ) = ¼ ln σ``: the network's noise-level input;
    * ``λ(σ) = (σ² + σ_data²) / (σ σ_data)² = 1 / c_out(σ)²``: the loss weight that makes
      the effective loss ``||F_θ - target||²`` unit-weighted at every ``σ`` (eq. 8).

    Every method takes ``σ`` as a float or a tensor (any shape) and returns that shape.
    """

    sigma_data: float = 0.5  # EDM's value for images scaled to [-1, 1] (Table 1)

    def __post_init__(self) -> None:
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")

    def c_skip(self, sigma: Sigma) -> torch.Tensor:
        """``c_skip(σ) = σ_data² / (σ² + σ_data²)``."""
        sigma = torch.as_tensor(sigma)
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: Sigma) -> torch.Tensor:
        """``c_out(σ) = σ σ_data / √(σ² + σ_data²)``."""
        sigma = torch.as_tensor(sigma)
        return sigma * self.sigma_data / torch.sqrt(sigma**2 + self.sigma_data**2)

    def c_in(self, sigma: Sigma) -> torch.Tensor:
        """``c_in(σ) = 1 / √(σ² + σ_data²)``."""
        sigma = torch.as_tensor(sigma)
        return 1 / torch.sqrt(sigma**2 + self.sigma_data**2)

    def c_noise(self, sigma: Sigma) -> torch.Tensor:
        """``c_noise(σ) = ¼ ln σ``."""
        return 0.25 * torch.log(torch.as_tensor(sigma))

    def loss_weight(self, sigma: Sigma) -> torch.Tensor:
        """``λ(σ) = (σ² + σ_data²) / (σ σ_data)²``."""
        sigma = torch.as_tensor(sigma)
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class EDMDenoiser(nn.Module):
    """A raw network ``F_θ(x, c_noise)`` (the course's ``model(x, t)`` signature, with
    ``c_noise`` of shape ``(B,)`` in the place of ``t``) made into a denoiser (EDM eq. 7):

    ``D_θ(x̂; σ) = c_skip(σ) x̂ + c_out(σ) F_θ(c_in(σ) x̂; c_noise(σ))``.

    Called as ``denoiser(x, sigma)`` with ``sigma`` a float or of shape ``(B,)``.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.precond = Preconditioning(sigma_data)

    def forward(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        sigma = batch_time(sigma, x)
        s = _sigma_like(sigma, x)
        p = self.precond
        out = self.net(p.c_in(s) * x, p.c_noise(sigma))
        if out.shape != x.shape:
            raise ValueError(
                f"the network returned shape {tuple(out.shape)} for x {tuple(x.shape)}"
            )
        return p.c_skip(s) * x + p.c_out(s) * out.to(x.dtype)


# ---------------------------------------------------------------------- training
def edm_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    P_mean: float = -1.2,  # EDM Table 1: ln σ ~ N(P_mean, P_std²)
    P_std: float = 1.2,  # EDM Table 1
    sigma_data: float = 0.5,  # EDM Table 1, for the weight λ(σ)
    generator: torch.Generator | None = None,
    sigma: Sigma | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """EDM's training loss (eq. 2 with Table 1's choices, eq. 8):

    ``L = E_{σ, x0, ε} λ(σ) ||D_θ(x0 + σ ε; σ) - x0||² / D``,
    ``ln σ ~ N(P_mean, P_std²)``, ``λ(σ) = (σ² + σ_data²) / (σ σ_data)²``,

    averaged over the batch and the ``D`` data dimensions (as :func:`course_lib.ddpm.loss`).
    With :class:`EDMDenoiser` this is ``E ||F_θ - (x0 - c_skip x̂) / c_out||² / D``, a
    unit-weighted regression at every ``σ``. For data with variance ``σ_data²`` per
    element and Gaussian, the optimal denoiser scores exactly ``1`` at every ``σ``.

    Args:
        denoiser: ``denoiser(x, sigma)``.
        x0: a batch of data ``(B, ...)``.
        P_mean, P_std: the log-normal training distribution of ``σ``.
        sigma_data: the data's standard deviation in ``λ(σ)``.
        generator: for ``σ`` and ``ε``; must live on ``x0``'s device.
        sigma: fixed noise levels (a float or ``(B,)``) instead of log-normal draws, e.g.
            to plot the loss against ``σ`` (EDM Fig. 5a).
        noise: a given ``ε`` (shaped like ``x0``) instead of a draw.

    Returns:
        The scalar mean loss (differentiable).
    """
    if not P_std >= 0:
        raise ValueError(f"P_std must be >= 0, got {P_std}")
    b = x0.shape[0]
    if sigma is None:
        sigma = torch.exp(P_mean + P_std * randn_like(x0.new_empty(b), generator))
    sigma = batch_time(sigma, x0)
    s = _sigma_like(sigma, x0)
    xhat = x0 + s * (randn_like(x0, generator) if noise is None else noise)
    err = (denoiser(xhat, sigma) - x0).reshape(b, -1).pow(2).mean(1)  # (B,)
    return (Preconditioning(sigma_data).loss_weight(sigma) * err).mean()


# --------------------------------------------------------------------- time grid
def time_grid(
    n: int,
    sigma_min: float = 0.002,  # EDM Table 1
    sigma_max: float = 80.0,  # EDM Table 1
    rho: float = 7.0,  # EDM Table 1 (ρ = 7; ρ = 1 is uniform in σ, ρ -> inf geometric)
) -> torch.Tensor:
    """EDM's noise levels (eq. 5), float64 of shape ``(n + 1,)``:

    ``σ_i = (σ_max^{1/ρ} + i / (n - 1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ`` for
    ``i = 0 .. n - 1``, and ``σ_n = 0``.

    So ``n`` steps, ``σ_0 = σ_max``, ``σ_{n-1} = σ_min``; ``ρ = 7`` shortens the steps
    near ``σ_min``, where the trajectories curve most. Heun on this grid costs
    ``2 n - 1`` NFE (EDM's CIFAR-10 setting: ``n = 18``, 35 NFE). ``n = 1`` gives
    ``[σ_max, 0]``. A network that was trained only on ``[σ_lo, σ_hi]`` (e.g. chapter
    3's, :func:`sigma_range`) needs ``sigma_min >= σ_lo`` and ``sigma_max <= σ_hi``, as
    EDM's code clamps them.
    """
    if n < 1:
        raise ValueError(f"need at least one step, got n={n}")
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + i / (n - 1) * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_sigmas(sigmas: torch.Tensor | list[float]) -> list[float]:
    """A sampling grid: strictly decreasing, every level ``> 0`` except a last ``0``."""
    grid = solvers.check_grid(sigmas)
    if not grid[0] > grid[-1]:
        raise ValueError("a sampling grid of noise levels must decrease (noise -> data)")
    if not (grid[:-1] > 0).all() or grid[-1] < 0:
        raise ValueError("noise levels must be positive; only the last may be 0 (use time_grid(n))")
    return grid.tolist()


# ----------------------------------------------------------------------- sampling
def ode_drift(denoiser: Denoiser) -> solvers.Drift:
    """The probability-flow ODE in ``σ``-time, ``dx̂/dσ = (x̂ - D(x̂; σ)) / σ`` (EDM eq. 1
    with ``σ(t) = t``, ``s(t) = 1``, the score from eq. 3), as a drift ``f(x, sigma)`` for
    :mod:`course_lib.solvers` and :mod:`course_lib.likelihood`. Undefined at ``σ = 0``."""

    def drift(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = batch_time(sigma, x)
        return eps_from_denoiser(x, denoiser(x, sigma), sigma)

    return drift


@torch.no_grad()
def heun_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    S_churn: float = 0.0,  # EDM Algorithm 2 / generate.py: 0 = deterministic (Algorithm 1)
    S_min: float = 0.0,  # churn only where S_min <= σ_i <= S_max (generate.py's default)
    S_max: float = math.inf,  # generate.py's default
    S_noise: float = 1.0,  # noise inflation, 1 = none (generate.py's default)
    generator: torch.Generator | None = None,
    keep: int | None = None,
) -> SampleResult:
    """EDM's sampler, Algorithms 1 (``S_churn = 0``) and 2, on ``σ_0 > ... > σ_N``:

    for ``i = 0 .. N - 1``:

    * churn: ``γ_i = min(S_churn / N, √2 - 1)`` if ``S_min <= σ_i <= S_max`` else 0;
      ``σ̂_i = σ_i (1 + γ_i)`` and the state gains noise, ``x_i + √(σ̂_i² - σ_i²) S_noise ε``
      (lines 4–6; Algorithm 2 calls the result ``x̂_i``: not our unscaled ``x̂``, every state
      here is already unscaled);
    * a Heun step of ``dx̂/dσ = (x̂ - D(x̂; σ)) / σ`` from ``σ̂_i`` to ``σ_{i+1}``
      (:func:`course_lib.solvers.heun_step`, lines 7–11), or an Euler step
      (:func:`course_lib.solvers.euler_step`) when ``σ_{i+1} = 0``, where the drift is
      undefined.

    On :func:`time_grid` (``σ_N = 0``) that is ``2 N - 1`` NFE. The churn adds noise and
    removes it again along the ODE: a Langevin-like correction of earlier errors
    (EDM §4); Table 5 lists their per-dataset ``S_*`` values.

    Args:
        denoiser: ``denoiser(x, sigma)``, ``sigma`` of shape ``(B,)``.
        x_T: the start at ``σ_0``, ``(B, ...)``: ``sigmas[0] * ε`` for ``ε ~ N(0, I)``
            (EDM's ``x_0 ~ N(0, σ_max² I)``). Any float dtype; float64 works.
        sigmas: ``(N + 1,)`` strictly decreasing noise levels, ``> 0`` but the last.
        S_churn, S_min, S_max, S_noise: Algorithm 2's knobs.
        generator: for the churn noise.
        keep: record every ``keep``-th state (times are the ``σ_{i+1}``).

    Returns:
        :class:`~course_lib.sampling.SampleResult` with ``nfe`` counted.
    """
    sig = _check_sigmas(sigmas)
    if S_churn < 0 or S_noise < 0 or S_min > S_max:
        raise ValueError(
            f"need S_churn >= 0, S_noise >= 0, S_min <= S_max; got {S_churn}, {S_noise}, "
            f"{S_min}, {S_max}"
        )
    n = len(sig) - 1
    f = ode_drift(denoiser)
    rec = Recorder(keep)
    x, nfe = x_T, 0
    rec(x, sig[0])
    for i, (s_cur, s_next) in enumerate(itertools.pairwise(sig)):
        # Increase noise temporarily (Algorithm 2, lines 4-6).
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= s_cur <= S_max else 0.0
        s_hat = s_cur * (1 + gamma)
        if s_hat > s_cur:
            x = x + math.sqrt(s_hat**2 - s_cur**2) * S_noise * randn_like(x, generator)
        # Heun step; Euler step into σ = 0 (Algorithm 1, lines 3-8).
        step = solvers.euler_step if s_next == 0 else solvers.heun_step
        x, k = step(f, x, s_hat, s_next)
        nfe += k
        rec(x, s_next, last=i == n - 1)
    return rec.result(x, nfe=nfe)


@torch.no_grad()
def euler_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    keep: int | None = None,
) -> SampleResult:
    """Euler's method on ``dx̂/dσ = (x̂ - D(x̂; σ)) / σ`` along ``sigmas`` (EDM Table 2's
    "Euler" rows): ``x̂_{i+1} = x̂_i + (σ_{i+1} - σ_i) (x̂_i - D(x̂_i; σ_i)) / σ_i``, ``N``
    NFE, via :func:`course_lib.solvers.solve_ode`. Into ``σ_N = 0`` the step is
    ``x̂_N = D(x̂_{N-1}; σ_{N-1})``. On a DDPM schedule's levels ``σ_t = vp_sigma(ᾱ_t)``
    (then ``0``) it *is* deterministic DDIM (DDIM eq. 14, §4.3), with ``x_t = √ᾱ_t x̂``."""
    sig = _check_sigmas(sigmas)
    return solvers.solve_ode(ode_drift(denoiser), x_T, sig, method="euler", keep=keep)


# ------------------------------------------------------------------------ adapters
def exact_denoiser(gm: GaussianMixture) -> Denoiser:
    """The optimal denoiser of data ``x0 ~ gm``: ``D*(x̂; σ) = E[x0 | x0 + σ ε = x̂]``
    (:meth:`GaussianMixture.optimal_denoiser` with ``a = 1``, ``s = σ``), the minimiser of
    :func:`edm_loss` at every ``σ``; ``σ = 0`` gives ``x̂`` itself."""

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = batch_time(sigma, x)
        _sigma_like(sigma, x, allow_zero=True)
        return gm.optimal_denoiser(x, 1.0, _common_level(sigma))

    return denoiser


def sigma_range(schedule: DiscreteSchedule) -> tuple[float, float]:
    """``(σ_min, σ_max) = (vp_sigma(ᾱ_1), vp_sigma(ᾱ_T))``, the noise levels a network
    trained on ``schedule`` has seen (DDPM's linear schedule: about ``(0.010, 157)``)."""
    sig = vp_sigma(schedule.alpha_bar[1:])
    return float(sig[0]), float(sig[-1])


def _log_sigma_knots(schedule: DiscreteSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ln σ_j, u_j)`` for ``j = 1 .. T``: a schedule's log noise levels and the
    training steps they sit at (both increasing, float64)."""
    return torch.log(vp_sigma(schedule.alpha_bar[1:])), schedule.timesteps[1:].double()


def _check_range(values: torch.Tensor, lo: float, hi: float, what: str, fix: str) -> torch.Tensor:
    """``values`` clamped into ``[lo, hi]`` when they lie inside up to round-off, else raise."""
    slack = 1e-9
    if (values < lo * (1 - slack)).any() or (values > hi * (1 + slack)).any():
        raise ValueError(
            f"{what} in [{float(values.min()):.6g}, {float(values.max()):.6g}] leave the "
            f"schedule's range [{lo:.6g}, {hi:.6g}]; {fix}"
        )
    return values.clamp(lo, hi)


def denoiser_from_ddpm(
    model: Model, schedule: DiscreteSchedule, parameterization: str = "eps"
) -> Denoiser:
    """Chapter 3's network ``model(x_t, t / T)`` as an EDM denoiser ``D(x̂; σ)`` (EDM
    Table 1's VP / iDDPM preconditioning: ``c_skip = 1``, ``c_out = -σ``,
    ``c_in = 1/√(σ² + 1)``).

    1. The training step for ``σ``: ``σ_j = √((1 - ᾱ_j)/ᾱ_j)`` increases with ``j``, so
       ``ln σ`` is interpolated linearly between the schedule's steps to a fractional step
       ``u`` (exact at the steps; a network with a continuous time input is then called
       between them, where Table 1's iDDPM column, ``c_noise = M - 1 - argmin_j |u_j -
       σ|``, rounds ``σ`` to the nearest step instead).
    2. The network input ``x_t = x̂ / √(1 + σ²)`` (:func:`ddpm_x_from_edm`: ``ᾱ = 1/(1 +
       σ²)`` exactly at this ``σ``), time ``τ = u / train_T``.
    3. Its output as a denoiser: ``ε``: ``x̂ - σ ε̂`` (:func:`denoiser_from_eps`); ``x0``:
       itself; ``v``: ``√ᾱ x_t - √(1 - ᾱ) v̂`` (Salimans & Ho 2022).

    ``σ`` must lie in :func:`sigma_range` (the levels the network was trained on).
    """
    check_parameterization(parameterization)
    knots_log_sigma, knots_step = _log_sigma_knots(schedule)
    lo, hi = sigma_range(schedule)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = batch_time(sigma, x)
        s64 = sigma.detach().to(device="cpu", dtype=torch.float64)
        s64 = _check_range(
            s64, lo, hi, "noise levels", "clamp the sampler's grid (time_grid(n, lo, hi))"
        )
        u = _interp(torch.log(s64), knots_log_sigma, knots_step)
        tau = (u / schedule.train_T).to(x.device, torch.promote_types(x.dtype, torch.float32))
        s = _sigma_like(sigma, x)
        x_t = ddpm_x_from_edm(x, sigma)
        out = model(x_t, tau)
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for x {tuple(x.shape)}")
        out = out.to(x.dtype)
        if parameterization == "eps":
            return denoiser_from_eps(x, out, sigma)
        if parameterization == "x0":
            return out
        a = torch.rsqrt(1 + s**2)  # √ᾱ, and √(1 - ᾱ) = σ √ᾱ
        return a * x_t - s * a * out

    return denoiser


def ddpm_model_from_denoiser(denoiser: Denoiser, schedule: DiscreteSchedule) -> Model:
    """A denoiser as chapter 3's ``ε``-model ``model(x_t, τ)`` on ``schedule``, for
    :func:`course_lib.ddpm.ancestral_sample` and :func:`course_lib.ddim.ddim_sample`; the
    inverse of :func:`denoiser_from_ddpm`: training step ``u = τ train_T``, ``σ`` from
    the log-linear interpolation of the schedule's ``σ_j`` (so ``σ = vp_sigma(ᾱ_t)`` at
    every step ``t``), ``x̂ = x_t √(1 + σ²)``, and ``ε̂ = (x̂ - D(x̂; σ)) / σ``."""
    knots_log_sigma, knots_step = _log_sigma_knots(schedule)
    first, last = float(knots_step[0]), float(knots_step[-1])

    def model(x_t: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        tau = batch_time(tau, x_t)
        u = tau.detach().to(device="cpu", dtype=torch.float64) * schedule.train_T
        u = _check_range(u, first, last, "model times t/T * train_T", "call it at t >= 1")
        sigma = torch.exp(_interp(u, knots_step, knots_log_sigma)).to(x_t.device, x_t.dtype)
        x = edm_x_from_ddpm(x_t, sigma)
        return eps_from_denoiser(x, denoiser(x, sigma), sigma)

    return model


def score_fn_from_denoiser(denoiser: Denoiser, sde: SDE) -> Score:
    """A denoiser as the score ``∇log p_t(x)`` of an SDE family's marginal
    ``x = a(t) x̂`` with ``x̂ = x0 + σ(t) ε`` (``a = s(t)`` of EDM, ``σ = std / a``):

    ``∇log p_t(x) = (a D(x / a; σ) - x) / (a σ)²``

    (eq. 3 for ``x̂``, and the chain rule ``∇_x = ∇_x̂ / a``), for the samplers of
    :mod:`course_lib.sde`. Needs ``t > 0``."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = sde.marginal(batch_time(t, x))
        a = expand_like(m.a, x).to(x)
        sigma = m.sigma.to(device=x.device, dtype=x.dtype)
        s = _sigma_like(sigma, x)
        return (a * denoiser(x / a, sigma) - x) / (a * s) ** 2

    return score
