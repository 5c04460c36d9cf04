"""Chapter 2, Langevin dynamics: sampling with nothing but a score.

* :func:`ula`: the unadjusted Langevin algorithm, biased by its step size;
* :func:`mala`: the same proposal with a Metropolis–Hastings correction, unbiased but in
  need of ``log p`` up to a constant;
* :func:`annealed_langevin`: NCSN's sampler, Langevin steps at a descending sequence of
  noise levels, which crosses the low-density regions that trap plain Langevin;
* the rules of improved NCSN (Song & Ermon 2020) to choose the noise levels and the step
  size: :func:`sigma_max_rule`, :func:`n_levels_rule`, :func:`step_size_rule`.

Step sizes are ``h`` (``h_i`` at level ``i``) and the steps per level ``K``; the papers
write ``ε`` and ``T``, letters the course keeps for Gaussian draws and chain lengths.

Every sampler is a pure function returning a :class:`~course_lib.sampling.SampleResult`,
runs under ``torch.no_grad()`` and draws its noise from an explicit ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import norm

from course_lib.sampling import Recorder, SampleResult
from course_lib.tensors import randn_like, sq_norm

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
LogProbFn = Callable[[torch.Tensor], torch.Tensor]
NoiseScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def _check_steps(step_size: float, n_steps: int, name: str = "n_steps") -> None:
    if not step_size > 0:
        raise ValueError(f"the step size must be positive, got {step_size}")
    if n_steps < 1:
        raise ValueError(f"{name} must be a positive integer, got {n_steps}")


# --------------------------------------------------------------------------- ULA / MALA
@torch.no_grad()
def ula(
    score_fn: ScoreFn,
    x_init: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    keep: int | None = None,
) -> SampleResult:
    """The unadjusted Langevin algorithm (Roberts & Tweedie 1996; Welling & Teh 2011):

    ``x ← x + (h/2) ∇ log p(x) + √h z``,  ``z ~ N(0, I)``,

    the Euler–Maruyama discretisation of ``dx = ½ ∇ log p(x) dt + dW``, whose stationary
    law is ``p``. The chain's own stationary law is not ``p``: for ``p = N(0, σ²)`` it is
    ``N(0, σ² / (1 − h / (4σ²)))``, a bias of order ``h``.

    Args:
        score_fn: ``∇ log p``, ``(B, ...) -> (B, ...)``.
        x_init: starting points, ``(B, ...)``.
        step_size: ``h > 0``.
        n_steps: number of steps.
        generator: for ``z``.
        keep: record every ``keep``-th state (see :class:`~course_lib.sampling.Recorder`);
            the recorded times are the Langevin times ``k h``.

    Returns:
        A :class:`SampleResult` with ``nfe = n_steps``.
    """
    _check_steps(step_size, n_steps)
    rec = Recorder(keep)
    x = x_init.clone()
    rec(x, 0.0)
    for k in range(n_steps):
        x = x + 0.5 * step_size * score_fn(x) + math.sqrt(step_size) * randn_like(x, generator)
        rec(x, (k + 1) * step_size, last=k == n_steps - 1)
    return rec.result(x, nfe=n_steps)


@torch.no_grad()
def mala(
    log_prob_fn: LogProbFn,
    score_fn: ScoreFn,
    x_init: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    keep: int | None = None,
) -> SampleResult:
    """The Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996; Besag 1994).

    Propose ``y = x + (h/2) ∇ log p(x) + √h z``, i.e. ``q(y | x) = N(y; x + (h/2) ∇ log
    p(x), h I)``, and accept it with probability

    ``min(1, p(y) q(x | y) / (p(x) q(y | x)))``,

    otherwise stay at ``x``. The correction makes ``p`` exactly stationary, removing the
    bias of :func:`ula`; ``log p`` is needed only up to an additive constant.

    Args:
        log_prob_fn: ``log p`` (up to a constant), ``(B, ...) -> (B,)``.
        score_fn: ``∇ log p``, ``(B, ...) -> (B, ...)``.
        x_init: starting points, ``(B, ...)``.
        step_size: ``h > 0``.
        n_steps: number of steps.
        generator: for the proposals and the accept/reject draws.
        keep: record every ``keep``-th state.

    Returns:
        A :class:`SampleResult` with ``info["acceptance_rate"]`` (accepted proposals over
        all chains and steps) and ``nfe = n_steps + 1`` evaluations of ``score_fn`` (as
        many of ``log_prob_fn``).
    """
    _check_steps(step_size, n_steps)
    rec = Recorder(keep)
    x = x_init.clone()
    log_p, score = log_prob_fn(x), score_fn(x)
    rec(x, 0.0)
    accepted = torch.zeros((), dtype=torch.float64, device=x.device)

    def log_q(to: torch.Tensor, frm: torch.Tensor, score_frm: torch.Tensor) -> torch.Tensor:
        """``log q(to | frm)`` up to the constant, which cancels in the ratio."""
        return -sq_norm(to - frm - 0.5 * step_size * score_frm) / (2 * step_size)

    for k in range(n_steps):
        y = x + 0.5 * step_size * score + math.sqrt(step_size) * randn_like(x, generator)
        log_p_y, score_y = log_prob_fn(y), score_fn(y)
        log_alpha = log_p_y - log_p + log_q(x, y, score_y) - log_q(y, x, score)
        u = torch.rand(x.shape[0], generator=generator, device=_device(generator, x))
        accept = torch.log(u.to(x.device)) < log_alpha
        # where() keeps rejected chains exactly where they were, vectorised over chains
        x = torch.where(accept.reshape(-1, *((1,) * (x.ndim - 1))), y, x)
        score = torch.where(accept.reshape(-1, *((1,) * (x.ndim - 1))), score_y, score)
        log_p = torch.where(accept, log_p_y, log_p)
        accepted += accept.sum()
        rec(x, (k + 1) * step_size, last=k == n_steps - 1)
    rate = float(accepted) / (n_steps * x.shape[0])
    return rec.result(x, nfe=n_steps + 1, acceptance_rate=rate)


# --------------------------------------------------------------------------- annealed
def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sigmas.numel() == 0:
        raise ValueError("sigmas must hold at least one noise level")
    if not (sigmas > 0).all():
        raise ValueError(f"every noise level must be positive, got {sigmas.tolist()}")
    if sigmas.numel() > 1 and not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(
            "sigmas must be strictly descending (largest noise first, sigma_1 > ... > "
            f"sigma_L), got {sigmas.tolist()}"
        )
    return sigmas


@torch.no_grad()
def annealed_langevin(
    score_fn: NoiseScoreFn,
    x_init: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    step_size: float,
    n_steps_each: int,
    generator: torch.Generator | None = None,
    keep: int | None = None,
    denoise_last: bool = True,
) -> SampleResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For ``i = 1 .. L`` (``σ_1 > ... > σ_L``), with step ``h_i = h σ_i² / σ_L²``, run ``K``
    Langevin steps on ``p_{σ_i}``:

    ``x ← x + (h_i / 2) s(x, σ_i) + √h_i z``,  ``z ~ N(0, I)``.

    (The paper writes ``α_i = ε σ_i²/σ_L²`` and ``T`` steps per level; the course keeps
    ``ε`` for Gaussian draws and ``T`` for chapter 3's chain length.) Scaling
    ``h_i ∝ σ_i²`` keeps the step stable at every level and, where ``‖σ s‖ ≈ √D``, the
    drift-to-noise ratio of a step constant. With ``denoise_last``, one last step
    ``x ← x + σ_L² s(x, σ_L)`` (Tweedie's posterior mean) removes the noise of level ``σ_L``
    (Jolicoeur-Martineau et al. 2021; Song & Ermon 2020, Appendix).

    Args:
        score_fn: ``s(x, σ) ≈ ∇ log p_σ(x)``, called with ``sigma`` of shape ``(B,)``.
        x_init: starting points, ``(B, ...)``, usually ``σ_1 · N(0, I)``.
        sigmas: noise levels, strictly descending.
        step_size: the base step ``h > 0`` (the step at ``σ_L``); see
            :func:`step_size_rule`.
        n_steps_each: ``K``, steps per level.
        generator: for ``z``.
        keep: record every ``keep``-th state; the recorded time is the noise level of the
            step that produced the state (``σ_1`` for ``x_init``, ``0`` for the denoised
            output).
        denoise_last: apply the final denoising step.

    Returns:
        A :class:`SampleResult` with ``nfe = L K (+ 1 with denoise_last)``.

    Raises:
        ValueError: sigmas not positive and strictly descending, ``step_size <= 0`` or
            ``n_steps_each < 1``.
    """
    sigmas = _check_sigmas(sigmas)
    _check_steps(step_size, n_steps_each, "n_steps_each")
    rec = Recorder(keep)
    x = x_init.clone()
    rec(x, float(sigmas[0]))
    sigma_last = float(sigmas[-1])
    n_levels = len(sigmas)
    for i, sigma in enumerate(sigmas.tolist()):
        h_i = step_size * sigma**2 / sigma_last**2
        sigma_b = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        for k in range(n_steps_each):
            x = x + 0.5 * h_i * score_fn(x, sigma_b) + math.sqrt(h_i) * randn_like(x, generator)
            last = not denoise_last and i == n_levels - 1 and k == n_steps_each - 1
            rec(x, sigma, last=last)
    nfe = n_levels * n_steps_each
    if denoise_last:
        sigma_b = torch.full((x.shape[0],), sigma_last, dtype=x.dtype, device=x.device)
        x = x + sigma_last**2 * score_fn(x, sigma_b)
        nfe += 1
        rec(x, 0.0, last=True)
    return rec.result(x, nfe=nfe)


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min`` with a constant ratio
    ``γ = σ_{i-1}/σ_i = (σ_max/σ_min)^(1/(n-1))`` (Song & Ermon 2019, Sec. 4.1), float64.
    """
    if not sigma_max > sigma_min > 0:
        raise ValueError(
            f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}"
        )
    if n < 2:
        raise ValueError(f"need at least two noise levels, got n={n}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64)


# --------------------------------------------------------------------------- improved NCSN
def sigma_max_rule(
    x: torch.Tensor, max_points: int = 4096, generator: torch.Generator | None = None
) -> float:
    """Technique 1 of improved NCSN (Song & Ermon 2020): choose ``σ_1`` as large as the
    maximum Euclidean distance between pairs of training points, so that annealed
    Langevin can move between any two of them at the first level.

    The exact maximum over all pairs costs ``O(n²)``; past ``max_points`` points a random
    subset of that size is used (a slight underestimate), computed in blocks so that
    memory stays ``O(block · n)``.

    Args:
        x: training data, ``(n, ...)``.
        max_points: size of the subset searched.
        generator: for the subset.

    Returns:
        ``max_{i, j} ‖x_i − x_j‖``.
    """
    x = x.detach().reshape(x.shape[0], -1).double().cpu()
    if x.shape[0] < 2:
        raise ValueError("need at least two points to measure a distance")
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_points]]
    best = 0.0
    for block in x.split(1024):
        best = max(best, float(torch.cdist(block, x).max()))
    return best


def n_levels_criterion(gamma: float, dim: int) -> float:
    """``Φ(√(2D)(γ − 1) + 3γ) − Φ(√(2D)(γ − 1) − 3γ)`` (Song & Ermon 2020, Technique 2):
    roughly the chance that a sample of ``p_{σ_{i-1}}`` lies where ``p_{σ_i}`` puts
    mass (within three standard deviations of the radius ``√D σ_i``)."""
    c = math.sqrt(2 * dim)
    return float(norm.cdf(c * (gamma - 1) + 3 * gamma) - norm.cdf(c * (gamma - 1) - 3 * gamma))


def n_levels_rule(sigma_max: float, sigma_min: float, dim: int, target: float = 0.5) -> int:
    """Technique 2 of improved NCSN (Song & Ermon 2020): a geometric sequence whose
    ratio ``γ = σ_{i-1}/σ_i`` satisfies

    ``Φ(√(2D)(γ − 1) + 3γ) − Φ(√(2D)(γ − 1) − 3γ) ≈ 0.5``

    (:func:`n_levels_criterion`), so that consecutive noised laws overlap. The criterion
    decreases in ``γ`` for ``D ≥ 5``; the largest admissible ``γ*`` is found by root
    finding, and the number of levels ``L = ⌈1 + log(σ_max/σ_min) / log γ*⌉`` is rounded
    up, so that the actual ratio ``(σ_max/σ_min)^(1/(L-1)) ≤ γ*`` meets the criterion.

    In ``D ≤ 4`` dimensions the criterion never drops to 0.5 (the rule is a
    high-dimensional argument) and imposes nothing: the rule returns 2; choose ``L`` by
    hand there.

    Args:
        sigma_max: ``σ_1``.
        sigma_min: ``σ_L``.
        dim: data dimension ``D``.
        target: the value of the criterion to reach (0.5 in the paper).

    Returns:
        The number of levels ``L`` to pass to :func:`geometric_sigmas`.
    """
    if not sigma_max > sigma_min > 0:
        raise ValueError(
            f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}"
        )
    if dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}")
    gamma_hi = 2.0
    while n_levels_criterion(gamma_hi, dim) > target:
        gamma_hi *= 2
        if gamma_hi > 1e6:  # low dimension: every ratio passes
            return 2
    gamma_star = brentq(lambda g: n_levels_criterion(g, dim) - target, 1.0, gamma_hi, xtol=1e-12)
    return max(2, math.ceil(1 + math.log(sigma_max / sigma_min) / math.log(gamma_star) - 1e-9))


def variance_ratio(step_size: float, sigma_min: float, n_steps_each: int, gamma: float) -> float:
    """``s_K² / σ_i²``: the variance after ``K`` steps of :func:`annealed_langevin` at level
    ``σ_i`` over the target's, when the data is a single point and the chain starts at
    the previous level's law ``N(0, σ_{i-1}² I)`` (Song & Ermon 2020, Prop. 3):

    ``(1 − h'/σ_L²)^{2K} (γ² − 2h'/(σ_L² − σ_L²(1 − h'/σ_L²)²)) + 2h'/(σ_L² − σ_L²(1 −
    h'/σ_L²)²)``,  ``γ = σ_{i-1}/σ_i``

    (the paper writes ``ε`` for ``h'`` and ``T`` for ``K``). The paper's sampler steps
    ``x + α s + √(2α) z``; this module's (Song & Ermon 2019) steps ``x + (h/2) s + √h z``;
    the two coincide for ``h' = h / 2``, which is used here. The same for every level;
    equal to one for a perfect level.
    """
    r = step_size / 2 / sigma_min**2  # h'/σ_L²
    decay = (1 - r) ** (2 * n_steps_each)
    stationary = 2 * r / (1 - (1 - r) ** 2)  # s_∞²/σ_i², > 1: ULA's own bias
    return decay * (gamma**2 - stationary) + stationary


def step_size_rule(sigma_min: float, n_steps_each: int, gamma: float) -> float:
    """Technique 4 of improved NCSN (Song & Ermon 2020): given ``K`` (as large as the
    budget allows), choose the base step ``h`` to make :func:`variance_ratio` as close to
    one as possible.

    The ratio is a weighted average of ``γ² > 1`` (the start) and ULA's stationary
    ``2/(2 − h'/σ_L²) > 1``, so it is always above one: "as close as possible" is a
    minimum, found numerically over ``log h``. The optimum scales as ``σ_L²`` (the ratio
    depends on ``h/σ_L²`` only). For CIFAR-10 (``σ_L = 0.01``, ``K = 5``, 232 levels from
    50) it gives ``h' = 6.2e-6``, the paper's step ``ε`` (``h = 1.24e-5`` here, see
    :func:`variance_ratio` for the factor 2).

    Args:
        sigma_min: ``σ_L``, the smallest noise level.
        n_steps_each: ``K``.
        gamma: ``σ_{i-1}/σ_i`` of the geometric sequence (from :func:`geometric_sigmas` or
            :func:`n_levels_rule`).

    Returns:
        ``h`` for :func:`annealed_langevin`.
    """
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be positive, got {sigma_min}")
    if n_steps_each < 1:
        raise ValueError(f"n_steps_each must be a positive integer, got {n_steps_each}")
    if not gamma > 1:
        raise ValueError(f"gamma = sigma_(i-1)/sigma_i must exceed 1, got {gamma}")

    def objective(log_r: float) -> float:  # r = h'/σ_L² in (0, 1)
        return variance_ratio(2 * math.exp(log_r) * sigma_min**2, sigma_min, n_steps_each, gamma)

    # a coarse grid brackets the minimum, Brent's method polishes it
    grid = np.linspace(math.log(1e-12), 0.0, 2001)
    values = [objective(g) for g in grid]
    k = int(np.argmin(values))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return 2 * math.exp(res.x) * sigma_min**2
