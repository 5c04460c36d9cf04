"""Denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020), chapter 3.

Notation: ``t = 0`` is data, ``t in {1, ..., T}``, ``a_t = sqrt(alpha_bar_t)``,
``s_t = sqrt(1 - alpha_bar_t)`` (see :mod:`course_lib.schedules`), and

    ``x_t = a_t x0 + s_t eps``  (DDPM eq. 4).

In the text (and in DDPM), ``sigma_t`` is the *reverse-process* standard deviation,
``sigma_t^2 = beta_t`` or ``beta_tilde_t``; the noise scale ``s_t`` is written out. The
code name ``schedule.sigma`` is that noise scale ``sqrt(1 - alpha_bar_t)`` (kept for the
later chapters, where ``sigma`` is a noise level), never the reverse std.

Every network is called as ``model(x, t / T)`` with a float time in ``(0, 1]`` of shape
``(B,)`` (:func:`call_model`), so the same MLP or U-Net serves every chapter; a schedule
respaced to fewer steps still calls it at the training-grid time. What the network
predicts is the *parameterization*: the noise ``eps`` (DDPM), the data ``x0``, or the
velocity ``v = a_t eps - s_t x0`` (Salimans & Ho 2022); the conversions below turn any
one into the others.

The module has the forward process (:func:`q_sample`, :func:`q_posterior`), the training
loss (Algorithm 1, :func:`loss`), ancestral sampling (Algorithm 2,
:func:`ancestral_sample`), the Bayes-optimal predictor of a Gaussian mixture
(:func:`exact_model`), and the variational bound on ``-log p(x0)`` (eq. 5,
:func:`elbo_terms`, :func:`nll_bound_bits_per_dim`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import Recorder, SampleResult
from course_lib.schedules import DiscreteSchedule
from course_lib.tensors import batch_time, expand_like, randn_like

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PARAMETERIZATIONS: tuple[str, ...] = ("eps", "x0", "v")
VARIANCES: tuple[str, ...] = ("beta", "beta_tilde")
DECODERS: tuple[str, ...] = ("continuous", "discrete")
#: bits/dim to add to a *continuous* density on ``[-1, 1]``-scaled 8-bit data to report it
#: on the usual ``[0, 256)`` scale: ``log2(256 / 2) = 7`` (see :func:`nll_bound_bits_per_dim`).
EIGHT_BIT_OFFSET_BITS: float = math.log2(128)


# --------------------------------------------------------------------------- helpers
def check_parameterization(parameterization: str) -> str:
    """Return ``parameterization`` if it is one of ``eps``, ``x0``, ``v``, else raise."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"Unknown parameterization {parameterization!r}. Valid: {', '.join(PARAMETERIZATIONS)}."
        )
    return parameterization


def _check_variance(variance: str) -> str:
    if variance not in VARIANCES:
        raise ValueError(f"Unknown variance {variance!r}. Valid: {', '.join(VARIANCES)}.")
    return variance


def _check_t(t: int | torch.Tensor, x: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
    """``t`` as a long tensor of shape ``()`` or ``(B,)`` on ``x``'s device."""
    t = torch.as_tensor(t, device=x.device)
    if t.is_floating_point():
        raise TypeError("t must hold integer steps; the float model time is t / T")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(
            f"t must be an integer or have shape ({x.shape[0]},) for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(t.shape)}"
        )
    if t.ndim == 0 and not 0 <= int(t) <= schedule.T:
        raise ValueError(f"t = {int(t)} is outside [0, {schedule.T}]")
    return t.long()


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values[t]`` (a schedule quantity, float64 on the CPU) shaped to broadcast
    against ``x``: ``()`` -> ``(1, ..., 1)``, ``(B,)`` -> ``(B, 1, ..., 1)``."""
    return expand_like(values.to(device=x.device, dtype=x.dtype)[t], x)


def call_model(
    model: Model, x: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``model(x, tau)`` with ``tau = timesteps[t] / train_T`` as a ``(B,)`` float tensor:
    the one place where an integer step becomes the network's time input."""
    t = _check_t(t, x, schedule)
    # indexed on x's device (no host sync in a training step); at least float32, since
    # half precision cannot tell t = 999 from t = 1000
    dtype = torch.promote_types(x.dtype, torch.float32)
    tau = schedule.timesteps.to(x.device)[t].to(dtype) / schedule.train_T
    return model(x, batch_time(tau, x))


# -------------------------------------------------------------- forward process
def q_sample(
    x0: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule, eps: torch.Tensor
) -> torch.Tensor:
    """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (DDPM eq. 4).

    Args:
        x0: data, ``(B, ...)``.
        t: integer step(s), an int or ``(B,)``.
        schedule: the noise schedule.
        eps: standard normal noise of the shape of ``x0``.
    """
    if eps.shape != x0.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)}, x0 has {tuple(x0.shape)}")
    t = _check_t(t, x0, schedule)
    return _at(schedule.sqrt_alpha_bar, t, x0) * x0 + _at(schedule.sigma, t, x0) * eps


@dataclass
class Posterior:
    """A diagonal Gaussian ``N(mean, variance I)``; ``variance`` broadcasts against
    ``mean`` (shape ``(B, 1, ..., 1)`` or ``(1, ..., 1)``)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


def posterior_coefficients(
    t: torch.Tensor, schedule: DiscreteSchedule, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two weights of the posterior mean (DDPM eq. 7),
    ``c0 = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)`` on ``x0`` and
    ``ct = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` on ``x_t``."""
    c0, ct = _posterior_weights(schedule)
    return _at(c0, t, x), _at(ct, t, x)


def _posterior_weights(schedule: DiscreteSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """``c0`` and ``ct`` of eq. 7 for every ``t``, float64 ``(T + 1,)``."""
    ab = schedule.alpha_bar
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    one_minus = (1 - ab).clamp_min(torch.finfo(torch.float64).tiny)  # t = 0 is never used
    c0 = ab_prev.sqrt() * schedule.beta / one_minus
    ct = schedule.alpha.sqrt() * (1 - ab_prev) / one_minus
    return c0, ct


def q_posterior(
    x0: torch.Tensor, xt: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> Posterior:
    """``q(x_{t-1} | x_t, x0) = N(mu_tilde, beta_tilde_t I)`` (DDPM eqs. 6-7):

    ``mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0
    + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t``,

    ``beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``.

    ``t`` must be at least 1. At ``t = 1``, ``mu_tilde = x0`` and ``beta_tilde_1 = 0``;
    ``log_variance`` is then ``-inf``.
    """
    if xt.shape != x0.shape:
        raise ValueError(f"x_t has shape {tuple(xt.shape)}, x0 has {tuple(x0.shape)}")
    t = _check_t(t, x0, schedule)
    c0, ct = posterior_coefficients(t, schedule, x0)
    var = _at(schedule.beta_tilde, t, x0)
    return Posterior(mean=c0 * x0 + ct * xt, variance=var, log_variance=torch.log(var))


# ------------------------------------------------------ parameterization conversions
def x0_from_eps(
    xt: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)`` (eq. 4 solved for x0)."""
    t = _check_t(t, xt, schedule)
    return (xt - _at(schedule.sigma, t, xt) * eps) / _at(schedule.sqrt_alpha_bar, t, xt)


def eps_from_x0(
    xt: torch.Tensor, x0: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)`` (``t >= 1``)."""
    t = _check_t(t, xt, schedule)
    return (xt - _at(schedule.sqrt_alpha_bar, t, xt) * x0) / _at(schedule.sigma, t, xt)


def v_from(
    x0: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """The velocity ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0`` (Salimans &
    Ho 2022, §4): the rate of change of ``x_t`` along the circle ``a^2 + s^2 = 1``."""
    t = _check_t(t, x0, schedule)
    return _at(schedule.sqrt_alpha_bar, t, x0) * eps - _at(schedule.sigma, t, x0) * x0


def x0_from_v(
    xt: torch.Tensor, v: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v`` (uses ``a^2 + s^2 = 1``)."""
    t = _check_t(t, xt, schedule)
    return _at(schedule.sqrt_alpha_bar, t, xt) * xt - _at(schedule.sigma, t, xt) * v


def eps_from_v(
    xt: torch.Tensor, v: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v``."""
    t = _check_t(t, xt, schedule)
    return _at(schedule.sigma, t, xt) * xt + _at(schedule.sqrt_alpha_bar, t, xt) * v


def score_from_eps(
    eps: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``grad log p_t(x_t) = -eps / sqrt(1 - alpha_bar_t)`` for the optimal ``eps``
    (Tweedie; Song et al. 2021, eq. 4 with DDPM's scaling)."""
    t = _check_t(t, eps, schedule)
    return -eps / _at(schedule.sigma, t, eps)


def eps_from_score(
    score: torch.Tensor, t: int | torch.Tensor, schedule: DiscreteSchedule
) -> torch.Tensor:
    """``eps = -sqrt(1 - alpha_bar_t) * score``, the inverse of :func:`score_from_eps`."""
    t = _check_t(t, score, schedule)
    return -_at(schedule.sigma, t, score) * score


@dataclass
class Prediction:
    """A model output expressed as both the denoised data and the noise."""

    x0: torch.Tensor
    eps: torch.Tensor


def predict(
    model: Model,
    xt: torch.Tensor,
    t: int | torch.Tensor,
    schedule: DiscreteSchedule,
    parameterization: str = "eps",
    clip_x0: float | None = None,
) -> Prediction:
    """Call the network at step ``t`` and convert its output to ``(x0_hat, eps_hat)``.

    With ``clip_x0 = c``, ``x0_hat`` is clamped to ``[-c, c]`` (images live in
    ``[-1, 1]``) and ``eps_hat`` recomputed from the clamped ``x0_hat`` so that the two
    stay consistent with ``x_t`` (eq. 4).
    """
    check_parameterization(parameterization)
    out = call_model(model, xt, t, schedule)
    if out.shape != xt.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)} for x {tuple(xt.shape)}")
    if parameterization == "eps":
        eps, x0 = out, x0_from_eps(xt, out, t, schedule)
    elif parameterization == "x0":
        x0, eps = out, eps_from_x0(xt, out, t, schedule)
    else:
        x0, eps = x0_from_v(xt, out, t, schedule), eps_from_v(xt, out, t, schedule)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = eps_from_x0(xt, x0, t, schedule)
    return Prediction(x0=x0, eps=eps)


# ---------------------------------------------------------------------- training
def loss(
    model: Model,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    parameterization: str = "eps",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The simple loss of DDPM Algorithm 1 (eq. 14), for any parameterization:

    ``L = E_{t ~ U{1..T}, eps ~ N(0, I)} ||target - model(x_t, t / T)||^2 / D``,

    with ``target = eps``, ``x0`` or ``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t)
    x0`` (Salimans & Ho 2022). The squared error is averaged over the batch *and* the
    ``D`` data dimensions (so the value does not depend on the image size). Eq. 14 sums
    over the dimensions, as do chapters 1-2's denoising score-matching losses
    (:mod:`course_lib.score_matching`): this value is theirs divided by ``D``, so loss
    values are not comparable across those chapters without that factor.

    Args:
        model: ``model(x, t / T)``.
        x0: a batch of data ``(B, ...)``.
        schedule: the noise schedule (its steps are drawn uniformly).
        parameterization: ``"eps"``, ``"x0"`` or ``"v"``.
        generator: for ``t`` and ``eps``; must live on ``x0``'s device.
        t, eps: given steps ``(B,)`` and noise instead of draws (chapter 9 draws them for
            the global batch, so that a run does not depend on the number of processes).

    Returns:
        The scalar mean loss (differentiable).
    """
    check_parameterization(parameterization)
    if t is None:
        t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    if eps is None:
        eps = randn_like(x0, generator)
    xt = q_sample(x0, t, schedule, eps)
    if parameterization == "eps":
        target = eps
    elif parameterization == "x0":
        target = x0
    else:
        target = v_from(x0, eps, t, schedule)
    return torch.mean((call_model(model, xt, t, schedule) - target) ** 2)


def loss_weight(schedule: DiscreteSchedule, variance: str = "beta") -> torch.Tensor:
    """The weight of the noise-prediction error in the bound's term ``L_{t-1}`` (DDPM
    eq. 12), which the simple loss (eq. 14) drops:

    ``lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t))``,

    with the reverse variance ``sigma_t^2 = beta_t`` (``variance="beta"``: ``lambda_t =
    beta_t / (2 alpha_t (1 - alpha_bar_t))``) or ``beta_tilde_t`` (``lambda_t = beta_t /
    (2 alpha_t (1 - alpha_bar_{t-1}))``, infinite at ``t = 1``). Float64, shape ``(T + 1,)``
    indexed by ``t``; entry 0 (no term) is ``nan``.
    """
    _check_variance(variance)
    var = schedule.beta if variance == "beta" else schedule.beta_tilde
    with torch.no_grad():
        w = schedule.beta**2 / (2 * var * schedule.alpha * (1 - schedule.alpha_bar))
    w[0] = math.nan
    return w


def reverse_kernel(
    gm: GaussianMixture, schedule: DiscreteSchedule, t: int, s: int, x_t: torch.Tensor
) -> GaussianMixture:
    """The exact reverse kernel ``q(x_s | x_t)``, ``0 <= s < t``, for data ``x0 ~ gm``, at
    one point ``x_t`` ``(D,)``: again a Gaussian mixture.

    Given component ``k`` of the data, ``x_s ~ N(m_k, S_k)`` with ``m_k = sqrt(alpha_bar_s)
    mu_k``, ``S_k = alpha_bar_s C_k + (1 - alpha_bar_s) I``, and the forward stride is
    ``x_t = g x_s + sqrt(1 - g^2) z`` with ``g^2 = alpha_bar_t / alpha_bar_s``. Bayes with
    two Gaussians (as for DDPM eqs. 6-7) gives

    ``q(x_s | x_t) = sum_k r_k(x_t) N(x_s; P_k (S_k^{-1} m_k + g x_t / (1 - g^2)), P_k)``,
    ``P_k = (S_k^{-1} + g^2 / (1 - g^2) I)^{-1}``,

    with ``r_k(x_t)`` the responsibilities of the components under ``p_t``. It equals the
    Gaussian posterior ``q(x_s | x_t, x0)`` averaged over ``p(x0 | x_t)``. For a one-step
    stride ``P_k ~ beta_t I`` and the kernel is nearly one Gaussian (what DDPM's reverse
    step assumes); for a long stride it has one mode per plausible component.
    """
    if not 0 <= s < t <= schedule.T:
        raise ValueError(f"need 0 <= s < t <= {schedule.T}, got s = {s}, t = {t}")
    x_t = torch.as_tensor(x_t, dtype=torch.float64).reshape(-1)
    if x_t.shape[0] != gm.dim:
        raise ValueError(f"x_t must be one point of dimension {gm.dim}, got {tuple(x_t.shape)}")
    ab_t, ab_s = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[s])
    g2 = ab_t / ab_s
    eye = torch.eye(gm.dim, dtype=torch.float64)
    s_inv = torch.linalg.inv(ab_s * gm.covariances + (1 - ab_s) * eye)  # (K, D, D)
    cov = torch.linalg.inv(s_inv + g2 / (1 - g2) * eye)
    lin = torch.einsum("kij,kj->ki", s_inv, math.sqrt(ab_s) * gm.means)
    lin = lin + math.sqrt(g2) / (1 - g2) * x_t
    means = torch.einsum("kij,kj->ki", cov, lin)
    r = gm.noised(math.sqrt(ab_t), math.sqrt(1 - ab_t)).responsibilities(x_t[None])[0]
    # a component whose weight underflowed carries no mass; keep the mixture valid
    weights = r.double().clamp_min(1e-300)
    return GaussianMixture(weights, means, cov)


# ---------------------------------------------------------------------- sampling
@torch.no_grad()
def ancestral_sample(
    model: Model,
    x_T: torch.Tensor,
    schedule: DiscreteSchedule,
    variance: str = "beta",
    parameterization: str = "eps",
    generator: torch.Generator | None = None,
    keep: int | None = None,
    clip_x0: float | None = None,
) -> SampleResult:
    """Ancestral sampling, DDPM Algorithm 2: for ``t = T, ..., 1``

    ``x_{t-1} = mu_theta(x_t, t) + sigma_t z``,  ``z ~ N(0, I)`` for ``t > 1``, else 0,

    with ``mu_theta = mu_tilde(x0_hat(x_t), x_t)`` (eq. 7 with the predicted ``x0``, which
    for ``eps``-prediction is eq. 11, ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) /
    sqrt(alpha_t)``) and ``sigma_t^2 = beta_t`` (``variance="beta"``) or
    ``beta_tilde_t`` (``"beta_tilde"``), the two choices of DDPM §3.2.

    On a respaced schedule (:func:`course_lib.schedules.respace`) the betas are those of
    the sub-grid, which gives DDPM with fewer steps (Nichol & Dhariwal 2021, §4).

    Args:
        model: ``model(x, t / T)``.
        x_T: the starting noise ``(B, ...)`` (usually standard normal).
        schedule: full or respaced schedule; sampling runs over all its steps.
        variance: ``"beta"`` or ``"beta_tilde"``.
        parameterization: what the model predicts.
        generator: for the noise ``z``; must live on ``x_T``'s device.
        keep: record every ``keep``-th state (see :class:`~course_lib.sampling.Recorder`);
            times are training-grid steps.
        clip_x0: clamp ``x0_hat`` to ``[-clip_x0, clip_x0]`` at every step (images).

    Returns:
        :class:`~course_lib.sampling.SampleResult` with ``nfe = T``.
    """
    _check_variance(variance)
    check_parameterization(parameterization)
    c = _step_coefficients(schedule, variance)
    # the network's time input for every step, made once on x's device (no per-step
    # indexing, host sync or validation: the loop below is all network calls)
    dtype = torch.promote_types(x_T.dtype, torch.float32)
    tau = schedule.timesteps.to(x_T.device).to(dtype) / schedule.train_T  # as call_model
    rec = Recorder(keep)
    x = x_T
    rec(x, int(schedule.timesteps[-1]))
    for t in range(schedule.T, 0, -1):
        out = model(x, tau[t].expand(x.shape[0]))
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for x {tuple(x.shape)}")
        a, s = c["sqrt_alpha_bar"][t], c["noise_scale"][t]
        if parameterization == "eps":
            x0 = (x - s * out) / a
        elif parameterization == "x0":
            x0 = out
        else:
            x0 = a * x - s * out
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        # mu_tilde(x0_hat, x_t) = c0 x0_hat + ct x_t (eq. 7), plus sigma_t z for t > 1
        x = torch.add(c["ct"][t] * x, x0, alpha=c["c0"][t])
        if t > 1:
            x = x.add_(randn_like(x, generator), alpha=c["std"][t])
        rec(x, int(schedule.timesteps[t - 1]), last=t == 1)
    return rec.result(x, nfe=schedule.T)


def _step_coefficients(schedule: DiscreteSchedule, variance: str) -> dict[str, list[float]]:
    """Per-step Python floats for a sampling loop, indexed by ``t``: ``sqrt(alpha_bar_t)``,
    the noise scale ``sqrt(1 - alpha_bar_t)``, the posterior weights ``c0``, ``ct`` (eq. 7)
    and the reverse std ``sigma_t = sqrt(beta_t)`` or ``sqrt(beta_tilde_t)``."""
    c0, ct = _posterior_weights(schedule)
    var = schedule.beta if variance == "beta" else schedule.beta_tilde
    return {
        "sqrt_alpha_bar": schedule.sqrt_alpha_bar.tolist(),
        "noise_scale": schedule.sigma.tolist(),
        "c0": c0.tolist(),
        "ct": ct.tolist(),
        "std": var.sqrt().tolist(),
    }


# ------------------------------------------------------------------ ground truth
def step_index(schedule: DiscreteSchedule, tau: torch.Tensor) -> torch.Tensor:
    """The index in ``schedule`` (full or respaced) of a model's time input ``t / T``:
    ``t = round(tau * train_T)``, which must be a step ``t >= 1`` of the schedule, or a
    ``ValueError`` says so. Shape of ``tau``, on the CPU."""
    t = torch.round(tau.detach().to(torch.float64).cpu() * schedule.train_T).long()
    idx = torch.searchsorted(schedule.timesteps, t).clamp_max(schedule.T)
    if not torch.equal(schedule.timesteps[idx], t) or (idx < 1).any():
        raise ValueError(
            f"a time t / T is not a step t >= 1 of the schedule: {t.unique()[:5].tolist()}"
        )
    return idx


def exact_model(
    gm: GaussianMixture, schedule: DiscreteSchedule, parameterization: str = "eps"
) -> Model:
    """The Bayes-optimal predictor for data ``x0 ~ gm``, as a ``model(x, t / T)``.

    With ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)`` and the exact denoiser
    ``x0* = E[x0 | x_t] = gm.optimal_denoiser(x_t, a, s)``, it returns ``x0*``,
    ``eps* = E[eps | x_t] = (x_t - a x0*) / s`` or ``v* = a eps* - s x0*``: the minimisers
    of the corresponding simple losses (the regression function). The course's ground
    truth for samplers and losses.

    The float time is mapped back to the integer step robustly, ``t = round(tau *
    train_T)``, which must be a step of ``schedule`` (full or respaced) with ``t >= 1``.
    """
    check_parameterization(parameterization)

    def model(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        idx = step_index(schedule, batch_time(tau, x))
        a, s = schedule.sqrt_alpha_bar[idx], schedule.sigma[idx]
        levels, which = torch.unique(idx, return_inverse=True)
        if levels.numel() == 1:  # one level for the batch: K factorisations, not B * K
            x0 = gm.optimal_denoiser(x, a[0], s[0])
        elif 8 * levels.numel() <= idx.numel():
            # a few levels, many rows each (the bound's chunks): one call per level, with
            # K factorisations each, instead of B * K small ones
            order = torch.argsort(which)
            sizes = torch.bincount(which, minlength=levels.numel()).tolist()
            parts = [
                gm.optimal_denoiser(x[rows.to(x.device)], a[rows[0]], s[rows[0]])
                for rows in torch.split(order, sizes)
            ]
            x0 = torch.empty_like(x)
            x0[order.to(x.device)] = torch.cat(parts)
        else:
            x0 = gm.optimal_denoiser(x, a, s)
        a_x, s_x = expand_like(a, x).to(x), expand_like(s, x).to(x)
        if parameterization == "x0":
            return x0
        eps = (x - a_x * x0) / s_x
        return eps if parameterization == "eps" else a_x * eps - s_x * x0

    return model


# ------------------------------------------------------------ variational bound
@dataclass
class ELBOTerms:
    """The terms of the bound ``-log p(x0) <= L = L_T + sum_{t>=2} L_{t-1} + L_0``
    (DDPM eq. 5), per sample, in nats.

    Attributes:
        prior: ``L_T = KL(q(x_T | x0) || N(0, I))``, ``(B,)``.
        diffusion: ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` for
            ``t = 2 .. T``, ``(B, T - 1)`` (column ``j`` is ``t = j + 2``); each is a
            one-sample Monte Carlo estimate over ``x_t ~ q(x_t | x0)``.
        decoder: ``L_0 = -log p_theta(x0 | x_1)``, ``(B,)``, one sample of ``x_1``.
        dim: the data dimension ``D``.
    """

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor
    dim: int

    @property
    def total(self) -> torch.Tensor:
        """``L``, the upper bound on ``-log p(x0)`` in nats, ``(B,)``."""
        return self.prior + self.diffusion.sum(1) + self.decoder

    @property
    def elbo(self) -> torch.Tensor:
        """The evidence lower bound ``-L <= log p(x0)``, ``(B,)``."""
        return -self.total

    def bits_per_dim(self, offset_bits: float = 0.0) -> torch.Tensor:
        """``L / (D ln 2) + offset_bits``, ``(B,)``; see :func:`nll_bound_bits_per_dim`."""
        return self.total / (self.dim * math.log(2)) + offset_bits


def _gaussian_kl(
    mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mean1, var1) || N(mean2, var2))`` per element."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def _flat_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def discretized_gaussian_log_likelihood(
    x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float
) -> torch.Tensor:
    """Per-element ``log P(x0)`` of DDPM's discrete decoder (eq. 13) for 8-bit data in
    ``[-1, 1]``: ``P(x0) = integral_{delta_-(x0)}^{delta_+(x0)} N(x; mean, std^2) dx`` with
    bin edges ``delta_+(x) = x + 1/255`` (``+inf`` at ``x = 1``) and ``delta_-(x) = x -
    1/255`` (``-inf`` at ``x = -1``); the 256 bins (width ``2/255``) tile the real line, so
    their probabilities sum to one.

    The difference of normal CDFs is taken in the tail where it does not cancel
    (``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)`` when ``a > 0``) and clamped at ``1e-12``
    before the log, as in Ho et al.'s code.
    """
    x0, mean = torch.broadcast_tensors(x0.double(), mean.double())
    std = torch.as_tensor(std, dtype=torch.float64, device=x0.device)
    hi = (x0 + 1 / 255 - mean) / std
    lo = (x0 - 1 / 255 - mean) / std
    upper_tail = lo > 0
    mass = torch.where(
        upper_tail,
        torch.special.ndtr(-lo) - torch.special.ndtr(-hi),
        torch.special.ndtr(hi) - torch.special.ndtr(lo),
    )
    log_mid = torch.log(mass.clamp_min(1e-12))
    eps8 = 1e-3 / 255  # the grid points are 2k/255 - 1; this only tells the edges apart
    return torch.where(
        x0 < -1 + eps8,
        torch.special.log_ndtr(hi),
        torch.where(x0 > 1 - eps8, torch.special.log_ndtr(-lo), log_mid),
    )


@torch.no_grad()
def elbo_terms(
    model: Model,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    parameterization: str = "eps",
    variance: str = "beta",
    decoder: str = "continuous",
    generator: torch.Generator | None = None,
    max_rows: int = 16_384,
) -> ELBOTerms:
    """Every term of the variational bound (DDPM eq. 5) for a batch ``x0``, per sample:

    * ``L_T = KL(N(sqrt(alpha_bar_T) x0, (1 - alpha_bar_T) I) || N(0, I))``, in closed form;
    * ``L_{t-1} = KL(N(mu_tilde, beta_tilde_t I) || N(mu_theta, sigma_t^2 I))`` for
      ``t = 2 .. T`` with ``x_t ~ q(x_t | x0)`` (one draw per ``t``: an unbiased estimate
      of the sum), ``mu_theta = mu_tilde(x0_hat(x_t), x_t)`` and ``sigma_t^2 = beta_t`` or
      ``beta_tilde_t``. All steps are evaluated in chunks of at most ``max_rows`` model
      inputs, so memory stays bounded for any ``T``;
    * ``L_0 = -log p_theta(x0 | x_1)`` with ``mu_theta(x_1, 1) = x0_hat(x_1)`` and
      ``sigma_1^2 = beta_1`` (for either ``variance``: ``beta_tilde_1 = 0``). The decoder
      is ``"continuous"``, ``N(x0; mu_theta, sigma_1^2 I)`` (a density: for 2D toys), or
      ``"discrete"``, eq. 13 for 8-bit images scaled to ``[-1, 1]``
      (:func:`discretized_gaussian_log_likelihood`; a probability; ``x0`` must lie on the
      grid ``k / 127.5 - 1``).

    Which variance. Even with the exact mean, the bound is only as tight as ``sigma_t^2``
    is close to the true reverse variance ``beta_tilde_t + c0^2 Var(x0 | x_t)``. Near the
    data, where the noise is small against the data's own spread, that is ``~ beta_t``:
    with ``"beta"`` the gap to ``-log p`` vanishes as ``T`` grows (like ``1/T``), while
    with ``"beta_tilde"`` the first steps alone keep it at least near ``D * gamma / 2``
    nats (``gamma = 0.577``, Euler's constant; the limit for a constant ``beta``, more
    for the linear schedule, whose ``beta_t`` grows) for smooth data, however large
    ``T`` is. This
    is why improved DDPM learns the variance (Nichol & Dhariwal 2021, §3.1, Fig. 2).

    Args:
        model: ``model(x, t / T)``.
        x0: data ``(B, ...)``.
        schedule: the noise schedule (a respaced one gives the bound of that chain).
        parameterization: what the model predicts.
        variance: the reverse-process variance ``"beta"`` or ``"beta_tilde"``.
        decoder: ``"continuous"`` or ``"discrete"``.
        generator: for the ``x_t`` draws; must live on ``x0``'s device.
        max_rows: the most samples passed to the model at once.

    Returns:
        :class:`ELBOTerms` (float64).
    """
    check_parameterization(parameterization)
    _check_variance(variance)
    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}. Valid: {', '.join(DECODERS)}.")
    b, dim = x0.shape[0], x0[0].numel()
    big_t = schedule.T
    ab_T = float(schedule.alpha_bar[-1])
    x64 = x0.double()
    prior = _flat_sum(0.5 * (ab_T * x64**2 - ab_T - math.log1p(-ab_T)))

    model_var = schedule.beta if variance == "beta" else schedule.beta_tilde
    chunk = max(1, max_rows // b)
    diffusion = x64.new_zeros(b, big_t - 1)
    for start in range(2, big_t + 1, chunk):
        ts = torch.arange(start, min(start + chunk, big_t + 1), device=x0.device)
        t = ts.repeat_interleave(b)  # (c * B,): all of x0 at step ts[0], then ts[1], ...
        x0_rep = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))
        xt = q_sample(x0_rep, t, schedule, randn_like(x0_rep, generator))
        pred = predict(model, xt, t, schedule, parameterization)
        xt64 = xt.double()
        mu_true = q_posterior(x0_rep.double(), xt64, t, schedule).mean
        mu_theta = q_posterior(pred.x0.double(), xt64, t, schedule).mean
        kl = _gaussian_kl(
            mu_true, _at(schedule.beta_tilde, t, xt64), mu_theta, _at(model_var, t, xt64)
        )
        diffusion[:, start - 2 : start - 2 + len(ts)] = _flat_sum(kl).reshape(len(ts), b).T

    one = torch.ones((), dtype=torch.long)
    x1 = q_sample(x0, one, schedule, randn_like(x0, generator))
    mean = predict(model, x1, one, schedule, parameterization).x0.double()
    var1 = float(schedule.beta[1])
    if decoder == "continuous":
        log_p = -0.5 * ((x64 - mean) ** 2 / var1 + math.log(2 * math.pi * var1))
    else:
        log_p = discretized_gaussian_log_likelihood(x64, mean, math.sqrt(var1))
    return ELBOTerms(prior=prior, diffusion=diffusion, decoder=-_flat_sum(log_p), dim=dim)


def nll_bound_bits_per_dim(
    model: Model,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    parameterization: str = "eps",
    variance: str = "beta",
    decoder: str = "continuous",
    offset_bits: float = 0.0,
    generator: torch.Generator | None = None,
    max_rows: int = 16_384,
) -> torch.Tensor:
    """The bound on ``-log_2 p(x0)`` per dimension, ``L / (D ln 2) + offset_bits``, ``(B,)``.

    Units. With ``decoder="discrete"`` on 8-bit images scaled to ``[-1, 1]``, ``L`` is
    minus the log of a *probability* of the 256-level pixels, so the result is already
    in bits/dim on the 8-bit scale, comparable with DDPM's 3.70 (CIFAR-10): keep
    ``offset_bits = 0``. A *continuous* density on ``[-1, 1]`` differs from the density
    of the same (uniformly dequantised) data on the ``[0, 256)`` scale by the Jacobian
    ``128`` per dimension, so reporting it on the 8-bit scale needs ``offset_bits =
    log2(128) = 7`` (:data:`EIGHT_BIT_OFFSET_BITS`; Theis et al. 2016). For the 2D toys,
    which have no pixel scale, keep 0: the value is simply ``-log_2 p / D``.
    """
    terms = elbo_terms(
        model, x0, schedule, parameterization, variance, decoder, generator, max_rows
    )
    return terms.bits_per_dim(offset_bits)
