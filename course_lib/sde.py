"""Chapter 5: the forward SDEs of Song et al. (2021) and the processes that reverse them.

Time runs over ``t ∈ [0, 1]``, ``t = 0`` data, ``t = 1`` noise. Each family is a linear
SDE (Song et al. 2021, eq. 5)

    ``dx = f(x, t) dt + g(t) dw``,   ``f(x, t) = -½ β(t) x`` or ``0``,

so ``x_t | x_0 ~ N(a(t) x_0, std(t)² I)`` in closed form (their eq. 29): :class:`Marginal`
holds the mean scale ``a`` and the noise std ``std``. In EDM's letters (Karras et al.
2022) ``s(t) = a`` and ``σ(t) = std / a`` (:meth:`SDE.edm_scale`, :meth:`SDE.edm_sigma`).

* :class:`VESDE` ``dx = sqrt(d[σ²(t)]/dt) dw`` (eq. 9), the continuum limit of chapter 2's
  noise ladder (SMLD / NCSN);
* :class:`VPSDE` ``dx = -½ β(t) x dt + sqrt(β(t)) dw`` (eq. 11), the limit of chapter 3's
  DDPM chain;
* :class:`SubVPSDE` ``dx = -½ β(t) x dt + sqrt(β(t)(1 - e^{-2∫β})) dw`` (eq. 12).

Given the score ``∇log p_t``, :func:`reverse_drift` gives the family of reverse-time
processes with the same marginals ``p_t``: Anderson's (1982) reverse SDE (``λ = 1``) and
the probability-flow ODE (``λ = 0``). The samplers (Euler–Maruyama, reverse diffusion,
ancestral, Langevin corrector, predictor–corrector) are score SDE's §4 and App. E–G.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from course_lib import solvers
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import Recorder, SampleResult
from course_lib.schedules import DiscreteSchedule
from course_lib.tensors import batch_time, expand_like, randn_like, sq_norm

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t (B,)) -> like x
LogDensity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t (B,)) -> (B,)
PREDICTORS: tuple[str, ...] = ("reverse_diffusion", "euler_maruyama", "ancestral", "none")
CORRECTORS: tuple[str, ...] = ("langevin", "none")
VARIANCES: tuple[str, ...] = ("beta", "beta_tilde")


@dataclass(frozen=True)
class Marginal:
    """``x_t | x_0 ~ N(a x_0, std² I)``; ``a`` and ``std`` have the shape of ``t``."""

    a: torch.Tensor
    std: torch.Tensor

    @property
    def sigma(self) -> torch.Tensor:
        """EDM's noise level ``σ = std / a`` of the unscaled variable ``x / a``."""
        return self.std / self.a


def _time(t: float | torch.Tensor) -> torch.Tensor:
    """``t`` as a float tensor (float64 unless it already is a float tensor) in ``[0, 1]``."""
    if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
        t = torch.as_tensor(t, dtype=torch.float64)
    if not torch.isfinite(t).all() or ((t < 0) | (t > 1)).any():
        raise ValueError(
            "diffusion time must lie in [0, 1] (t = 0 data, t = 1 noise); got values in "
            f"[{float(t.min())}, {float(t.max())}]. Rescale a grid to [0, 1] first."
        )
    return t


class SDE:
    """What every family shares; a family defines ``drift``, ``diffusion``, ``marginal``,
    ``t_from_edm_sigma`` and its prior's std ``prior_std``."""

    prior_std: ClassVar[float] = 1.0

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f(x, t)``, shape of ``x``; ``t`` of shape ``(B,)``."""
        raise NotImplementedError

    def diffusion(self, t: float | torch.Tensor) -> torch.Tensor:
        """``g(t)``, shape of ``t``."""
        raise NotImplementedError

    def marginal(self, t: float | torch.Tensor) -> Marginal:
        """``a(t)`` and ``std(t)`` of ``x_t | x_0``, each of the shape of ``t``."""
        raise NotImplementedError

    def t_from_edm_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The time ``t`` with ``edm_sigma(t) = σ``, in closed form (float64)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- derived
    def edm_scale(self, t: float | torch.Tensor) -> torch.Tensor:
        """EDM's ``s(t) = a(t)``."""
        return self.marginal(t).a

    def edm_sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """EDM's ``σ(t) = std(t) / a(t)``, strictly increasing from ``σ(0) = 0``."""
        return self.marginal(t).sigma

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = a(t) x_0 + std(t) ε`` with ``t`` of shape ``(B,)`` (or a scalar)."""
        m = self.marginal(batch_time(t, x0))
        return expand_like(m.a, x0) * x0 + expand_like(m.std, x0) * eps

    def transition(self, s: float | torch.Tensor, t: float | torch.Tensor) -> Marginal:
        """The exact transition ``x_t | x_s ~ N(A x_s, G² I)`` for ``s <= t``:

        ``A = a(t) / a(s)``,  ``G² = std(t)² - A² std(s)²``

        (compose ``x_s = a(s) x_0 + std(s) ε`` with ``x_t | x_s`` and match ``p_{0t}``).
        On DDPM's grid this is DDPM's chain (``A = sqrt(1 - β_i)``, ``G² = β_i``, eq. 10);
        for VE it is SMLD's (``A = 1``, ``G² = σ_i² - σ_{i-1}²``, eq. 8).
        """
        ms, mt = self.marginal(s), self.marginal(t)
        a = mt.a / ms.a
        return Marginal(a, (mt.std**2 - (a * ms.std) ** 2).clamp_min(0).sqrt())

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``x_1 ~ N(0, prior_std² I)``, the prior ``π`` that stands in for ``p_1``."""
        device = generator.device if generator is not None else None
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return self.prior_std * z

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, prior_std² I)`` per sample, ``(B,)``."""
        var = self.prior_std**2
        return -0.5 * sq_norm(z) / var - 0.5 * z[0].numel() * math.log(2 * math.pi * var)


@dataclass(frozen=True)
class _LinearBeta(SDE):
    """What VP and sub-VP share: ``β(t) = β_min + t (β_max - β_min)``, the drift
    ``f = -½ β(t) x`` and ``B(t) = ∫_0^t β``."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got {self.beta_min}, {self.beta_max}")

    def beta(self, t: float | torch.Tensor) -> torch.Tensor:
        """``β(t) = β_min + t (β_max - β_min)``."""
        return self.beta_min + _time(t) * (self.beta_max - self.beta_min)

    def int_beta(self, t: float | torch.Tensor) -> torch.Tensor:
        """``B(t) = ∫_0^t β(u) du = β_min t + ½ (β_max - β_min) t²``."""
        t = _time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_of_int_beta(self, b: torch.Tensor) -> torch.Tensor:
        """The root ``t >= 0`` of ``B(t) = b``: ``2b / (β_min + sqrt(β_min² + 2 Δ b))``,
        ``Δ = β_max - β_min`` (the form that does not cancel, and allows ``Δ = 0``)."""
        delta = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * delta * b))

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f(x, t) = -½ β(t) x``."""
        return -0.5 * expand_like(self.beta(t), x) * x


@dataclass(frozen=True)
class VPSDE(_LinearBeta):
    """Variance preserving, ``dx = -½ β(t) x dt + sqrt(β(t)) dw`` (Song et al. 2021, eq. 11),
    ``β(t) = β_min + t (β_max - β_min)``. Defaults are score SDE's (``β_min = 0.1``,
    ``β_max = 20``): on ``N = 1000`` steps, DDPM's linear schedule (:meth:`discretize`).

    Marginal (eq. 29): ``a = e^{-B(t)/2}``, ``std² = 1 - e^{-B(t)}``, ``B(t) = ∫_0^t β``;
    so ``a² + std² = 1`` and EDM's ``σ(t) = sqrt(e^{B(t)} - 1)``. Prior ``N(0, I)``.
    (DDPM's own ``T = 1000`` chain ends a little later: its ``alpha_bar_T = 4.04e-5`` is
    ``a(t)²`` at ``t = 1.0034``, since ``prod (1 - β_i) < exp(-sum β_i)``.)
    """

    def diffusion(self, t: float | torch.Tensor) -> torch.Tensor:
        """``g(t) = sqrt(β(t))``."""
        return self.beta(t).sqrt()

    def marginal(self, t: float | torch.Tensor) -> Marginal:
        b = self.int_beta(t)
        return Marginal(torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b)))

    def t_from_edm_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`edm_sigma`: ``B(t) = log(1 + σ²)``, solved for ``t``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self._t_of_int_beta(torch.log1p(sigma**2))

    def discretize(self, n: int = 1000) -> DiscreteSchedule:
        """Score SDE's DDPM discretisation (their App. B): ``β_i = β(t_i) / N`` on
        ``t_i = (i - 1) / (N - 1)``, i.e. ``betas = linspace(β_min / N, β_max / N, N)``;
        ``N = 1000`` is DDPM's linear schedule (``1e-4 .. 0.02``)."""
        if n < 2:
            raise ValueError(f"need at least 2 steps, got n={n}")
        betas = torch.linspace(self.beta_min / n, self.beta_max / n, n, dtype=torch.float64)
        return DiscreteSchedule.from_betas(betas)


@dataclass(frozen=True)
class SubVPSDE(_LinearBeta):
    """Sub-VP, ``dx = -½ β(t) x dt + sqrt(β(t) (1 - e^{-2B(t)})) dw`` (Song et al. 2021,
    eq. 12), same ``β(t)`` and defaults as :class:`VPSDE`.

    Marginal (eq. 29): ``a = e^{-B/2}``, ``std = 1 - e^{-B}`` (the *std*, not the
    variance: ``std² <= `` VP's at every ``t``); EDM's ``σ(t) = 2 sinh(B(t) / 2)``. Prior
    ``N(0, I)``. It has no discrete-time ancestor, hence no ``discretize``.
    """

    def diffusion(self, t: float | torch.Tensor) -> torch.Tensor:
        """``g(t) = sqrt(β(t) (1 - e^{-2B(t)}))``."""
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.int_beta(t)))

    def marginal(self, t: float | torch.Tensor) -> Marginal:
        b = self.int_beta(t)
        return Marginal(torch.exp(-0.5 * b), -torch.expm1(-b))

    def t_from_edm_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`edm_sigma`: ``B(t) = 2 asinh(σ / 2)``, solved for ``t``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self._t_of_int_beta(2 * torch.asinh(sigma / 2))


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding, ``dx = sqrt(d[σ²(t)]/dt) dw`` (Song et al. 2021, eq. 9) with the
    geometric ``σ(t) = σ_min (σ_max / σ_min)^t``, so ``g(t) = σ(t) sqrt(2 log(σ_max /
    σ_min))``. Defaults are score SDE's (``σ_min = 0.01``, ``σ_max = 50``).

    Marginal (eq. 29): ``a = 1``, ``std² = σ(t)² - σ(0)²``, exact from ``x_0 ~ p_data``
    (score SDE's code uses ``std = σ(t)``, i.e. data already blurred by ``σ_min``; the two
    differ by ``σ_min²`` in the variance). Prior ``N(0, σ_max² I)``, as in score SDE.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """The ladder ``σ(t) = σ_min (σ_max / σ_min)^t``."""
        return self.sigma_min * torch.exp(_time(t) * self._log_ratio)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f = 0``."""
        _time(t)
        return torch.zeros_like(x)

    def diffusion(self, t: float | torch.Tensor) -> torch.Tensor:
        """``g(t) = σ(t) sqrt(2 log(σ_max / σ_min))``."""
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal(self, t: float | torch.Tensor) -> Marginal:
        t = _time(t)
        std = self.sigma_min * torch.sqrt(torch.expm1(2 * self._log_ratio * t))
        return Marginal(torch.ones_like(t), std)

    def t_from_edm_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`edm_sigma`: ``t = log(1 + σ²/σ_min²) / (2 log(σ_max/σ_min))``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return torch.log1p((sigma / self.sigma_min) ** 2) / (2 * self._log_ratio)

    def discretize(self, n: int = 1000) -> torch.Tensor:
        """``σ(t)`` on ``n`` evenly spaced times from ``t = 1`` down to ``t = 0``: chapter 2's
        geometric ladder ``σ_1 = σ_max > ... > σ_n = σ_min`` (Song & Ermon 2019), whose
        chain ``x_i = x_{i-1} + sqrt(σ_i² - σ_{i-1}²) z`` (score SDE eq. 8) this SDE is the
        limit of. Shape ``(n,)``, float64, descending like
        :func:`course_lib.langevin.geometric_sigmas`."""
        if n < 2:
            raise ValueError(f"need at least 2 noise levels, got n={n}")
        return self.sigma(torch.linspace(1, 0, n, dtype=torch.float64))


# ------------------------------------------------------------------- reverse processes
def reverse_drift(
    sde: SDE, score: Score, x: torch.Tensor, t: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """The drift of the reverse-time process with noise coefficient ``λ g(t)``:

    ``u_λ(x, t) = f(x, t) - (1 + λ²)/2 g(t)² ∇log p_t(x)``,  run from ``t = 1`` to ``0``.

    Every ``λ >= 0`` has the marginals ``p_t`` of the forward SDE: ``λ = 1`` is Anderson's
    (1982) reverse SDE (Song et al. 2021, eq. 6), ``λ = 0`` the probability-flow ODE (their
    eq. 13); Fokker–Planck reads ``∂_t p = -∇·(u_λ p) - (λ²/2) g² Δp`` for each. (EDM eq.
    6 writes the same family in σ-time; Zhang & Chen 2023 use ``λ`` as here.)
    """
    t = batch_time(t, x)
    g2 = expand_like(sde.diffusion(t), x) ** 2
    return sde.drift(x, t) - 0.5 * (1 + lam**2) * g2 * score(x, t)


def pf_ode_drift(sde: SDE, score: Score) -> solvers.Drift:
    """The probability-flow ODE drift ``u(x, t) = f(x, t) - ½ g(t)² ∇log p_t(x)`` (Song et
    al. 2021, eq. 13), as a :data:`~course_lib.solvers.Drift` for the solvers."""

    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return reverse_drift(sde, score, x, t, lam=0.0)

    return drift


def _level(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` as ``(B,)``, or a scalar when every sample shares it (then a Gaussian mixture
    factors ``K`` covariances instead of ``B K``)."""
    t = batch_time(t, x).detach()
    return t[0] if t.numel() > 0 and bool((t == t[0]).all()) else t


def exact_score(sde: SDE, gm: GaussianMixture) -> Score:
    """``∇log p_t(x)`` for data ``x_0 ~ gm``: ``p_t`` is the mixture noised with
    ``a(t), std(t)`` (:meth:`GaussianMixture.noised_score`)."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = sde.marginal(_level(t, x))
        return gm.noised_score(x, m.a, m.std)

    return score


def exact_log_prob(sde: SDE, gm: GaussianMixture) -> LogDensity:
    """``log p_t(x)`` for data ``x_0 ~ gm``, as ``log_p(x, t) -> (B,)``."""

    def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = sde.marginal(_level(t, x))
        return gm.noised_log_prob(x, m.a, m.std)

    return log_prob


# ------------------------------------------------------------------- steps
def _check_step(t: float, t_next: float) -> None:
    if not 0 <= t_next < t <= 1:
        raise ValueError(f"a reverse step needs 0 <= t_next < t <= 1, got t={t}, t_next={t_next}")


def _score_at(score: Score, x: torch.Tensor, t: float) -> torch.Tensor:
    return score(x, batch_time(t, x))


def reverse_diffusion_step(
    sde: SDE,
    score: Score,
    x: torch.Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reverse diffusion (Song et al. 2021, eq. 46) for the forward chain
    ``x_t = x_s + f_s(x_s) + G z`` between ``s = t_next`` and ``t`` (their eq. 45):

    ``x_s = x_t - f_s(x_t) + G² ∇log p_t(x_t) + G z``,  ``z ~ N(0, I)``,

    with the exact transition (:meth:`SDE.transition`): ``f_s(x) = (A - 1) x``,
    ``G² = std(t)² - A² std(s)²``. This is DDPM's chain for VP, SMLD's for VE. 1 NFE.
    """
    t, t_next = float(t), float(t_next)
    _check_step(t, t_next)
    tr = sde.transition(t_next, t)
    a, g = float(tr.a), float(tr.std)
    x_new = (2 - a) * x + g**2 * _score_at(score, x, t)
    return x_new + g * randn_like(x, generator)


def ancestral_step(
    sde: SDE,
    score: Score,
    x: torch.Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None = None,
    variance: str = "beta",
) -> torch.Tensor:
    """Ancestral sampling: ``x_s ~ N(E[x_s | x_t], v I)`` for ``s = t_next < t``.

    With the exact transition ``x_t = A x_s + G z`` (:meth:`SDE.transition`), Tweedie's
    formula on that one step gives the mean ``E[x_s | x_t] = (x_t + G² ∇log p_t(x_t)) / A``.
    The variance is ``v = G²`` (``"beta"``; DDPM's ``σ_t² = β_t``, score SDE eq. 4) or the
    posterior ``v = G² std(s)² / std(t)²`` (``"beta_tilde"``; DDPM's ``β̃_t``, score SDE
    eq. 47 for VE). On DDPM's grid, VP gives DDPM Algorithm 2's step exactly
    (``(x_t + β_t ∇log p) / sqrt(1 - β_t) + σ_t z``). A step onto ``t = 0`` adds no noise
    (Algorithm 2's ``z = 0`` at ``t = 1``). 1 NFE.
    """
    if variance not in VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}. Valid: {', '.join(VARIANCES)}.")
    t, t_next = float(t), float(t_next)
    _check_step(t, t_next)
    tr = sde.transition(t_next, t)
    a, g = float(tr.a), float(tr.std)
    mean = (x + g**2 * _score_at(score, x, t)) / a
    std_s, std_t = float(sde.marginal(t_next).std), float(sde.marginal(t).std)
    var = g**2 if variance == "beta" else g**2 * std_s**2 / std_t**2
    if std_s == 0:
        return mean
    return mean + math.sqrt(var) * randn_like(mean, generator)


def langevin_corrector_step(
    score: Score,
    x: torch.Tensor,
    t: float,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """One Langevin MCMC step that leaves ``p_t`` invariant (as ``h → 0``), with score SDE's
    signal-to-noise step rule (Song et al. 2021, Algorithms 4–5):

    ``h = 2 α (r ‖z‖ / ‖s‖)²``,  ``x' = x + h s + sqrt(2h) z``,  ``s = ∇log p_t(x)``,

    ``r`` = ``snr``, ``α = 1`` (VE) or ``1 - β_i`` (VP). As in score SDE's code, ``‖z‖``
    and ``‖s‖`` are averaged over the batch, so one ``h`` serves every sample (a per-sample
    ``h`` explodes where ``s ≈ 0``, at a mode). 1 NFE.
    """
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    s = _score_at(score, x, float(t))
    z = randn_like(x, generator)
    s_norm = s.reshape(s.shape[0], -1).norm(dim=1).mean()
    z_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    h = 2 * alpha * (snr * z_norm / s_norm.clamp_min(torch.finfo(s.dtype).tiny)) ** 2
    return x + h * s + torch.sqrt(2 * h) * z


# ------------------------------------------------------------------- samplers
@torch.no_grad()
def reverse_sde_sample(
    sde: SDE,
    score: Score,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    lam: float = 1.0,
    generator: torch.Generator | None = None,
    keep: int | None = None,
) -> SampleResult:
    """Euler–Maruyama on the reverse process ``dx = u_λ(x, t) dt + λ g(t) dw̄`` along
    ``grid`` (descending, in ``[0, 1]``): ``λ = 1`` Anderson's reverse SDE, ``λ = 0`` the
    PF-ODE with Euler steps (no noise drawn). See :func:`reverse_drift`. NFE = steps.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    grid = solvers.check_grid(grid)
    if not grid[0] > grid[-1]:
        raise ValueError("a reverse-time grid must descend (from noise t = 1 to data t = 0)")
    _time(grid)

    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return reverse_drift(sde, score, x, t, lam)

    def noise(t: torch.Tensor) -> torch.Tensor:
        return lam * sde.diffusion(t)

    rec = Recorder(keep)
    x, times = x_T, grid.tolist()
    rec(x, times[0])
    for i in range(len(times) - 1):
        if lam == 0:
            x = solvers.euler_step(drift, x, times[i], times[i + 1])[0]
        else:
            x = solvers.euler_maruyama_step(drift, noise, x, times[i], times[i + 1], generator)
        rec(x, times[i + 1], last=i == len(times) - 2)
    return rec.result(x, nfe=len(times) - 1)


def _predict(
    name: str,
    sde: SDE,
    score: Score,
    x: torch.Tensor,
    t: float,
    t_next: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if name == "reverse_diffusion":
        return reverse_diffusion_step(sde, score, x, t, t_next, generator)
    if name == "ancestral":
        return ancestral_step(sde, score, x, t, t_next, generator)

    def drift(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return reverse_drift(sde, score, y, s, 1.0)

    return solvers.euler_maruyama_step(drift, sde.diffusion, x, t, t_next, generator)


@torch.no_grad()
def pc_sample(
    sde: SDE,
    score: Score,
    x_T: torch.Tensor,
    n_steps: int,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector: int = 1,
    t_min: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    keep: int | None = None,
) -> SampleResult:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1; VE/VP: Algorithms 2–3).

    On the grid ``t_i = 1 - i (1 - t_min) / n_steps``, ``i = 0 .. n_steps``: at each ``t_i``,
    ``n_corrector`` Langevin steps on ``p_{t_i}`` (:func:`langevin_corrector_step`, with
    ``α = A²`` of the next step: ``1`` for VE, ``1 - β_i`` for VP), then one predictor step
    to ``t_{i+1}``. With ``denoise``, a last Tweedie step ``x_0 = (x + std² ∇log p) / a``
    at ``t = t_min`` removes the remaining noise (score SDE's "noise removal").
    Defaults are score SDE's: ``snr = 0.16`` (their CIFAR-10 VE setting), one corrector
    step, ``t_min = 1e-3`` (the paper's ``ε``; the course keeps ``ε`` for noise).

    Args:
        sde: the forward SDE.
        score: ``score(x, t)`` with ``t`` of shape ``(B,)``.
        x_T: draws from the prior, ``(B, ...)``.
        n_steps: number of predictor steps (grid intervals).
        predictor: ``"reverse_diffusion"``, ``"euler_maruyama"``, ``"ancestral"`` or
            ``"none"`` (corrector only: annealed Langevin over the grid).
        corrector: ``"langevin"`` or ``"none"`` (predictor only).
        snr: the corrector's signal-to-noise ratio ``r``.
        n_corrector: corrector steps per level.
        t_min: the last time; the score is never evaluated below it.
        denoise: finish with the Tweedie step.
        generator: for all noise.
        keep: record every ``keep``-th state (times are the ``t_i``; ``0`` after denoising).

    Returns:
        :class:`~course_lib.sampling.SampleResult`, ``nfe = n_steps (P) + n_steps n_corrector
        (C) + 1 (denoise)``.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"Unknown predictor {predictor!r}. Valid: {', '.join(PREDICTORS)}.")
    if corrector not in CORRECTORS:
        raise ValueError(f"Unknown corrector {corrector!r}. Valid: {', '.join(CORRECTORS)}.")
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none': nothing would move")
    if n_steps < 1 or n_corrector < 1:
        raise ValueError(f"need n_steps >= 1 and n_corrector >= 1, got {n_steps}, {n_corrector}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    times = torch.linspace(1.0, t_min, n_steps + 1, dtype=torch.float64).tolist()
    rec = Recorder(keep)
    x, nfe = x_T, 0
    rec(x, times[0])
    for i in range(n_steps):
        t, t_next = times[i], times[i + 1]
        if corrector == "langevin":
            alpha = float(sde.transition(t_next, t).a) ** 2
            for _ in range(n_corrector):
                x = langevin_corrector_step(score, x, t, snr, generator, alpha)
            nfe += n_corrector
        if predictor != "none":
            x = _predict(predictor, sde, score, x, t, t_next, generator)
            nfe += 1
        rec(x, t_next, last=not denoise and i == n_steps - 1)
    if denoise:
        m = sde.marginal(times[-1])
        x = (x + float(m.std) ** 2 * _score_at(score, x, times[-1])) / float(m.a)
        nfe += 1
        rec(x, 0.0, last=True)
    return rec.result(x, nfe=nfe)
