"""Chapter 1, score matching: learning ``s(x) ≈ ∇ₓ log p(x)`` without knowing ``p``.

The losses of the chapter, each a short function next to its siblings:

* :func:`explicit_score_matching`: the Fisher divergence to a known score (only possible
  when the score is known, e.g. for a :class:`~course_lib.gaussian_mixture.GaussianMixture`);
* :func:`implicit_score_matching`: Hyvärinen's integration-by-parts form, which needs the
  trace of the Jacobian, computed by :func:`divergence` (exactly, or with Hutchinson's
  estimator);
* :func:`sliced_score_matching`: the same with random projections;
* :func:`denoising_score_matching` and :func:`multi_noise_dsm`: regress onto the score of
  the Gaussian noise kernel, the loss every later chapter builds on.

:class:`NoiseConditionalScore` turns any ``net(x, c)`` into a noise-conditional score
``s(x, σ)``; :func:`tweedie_denoiser` and :func:`dsm_minimum` are the two exact facts the
tests check the losses against.

Conventions: ``x`` has shape ``(B, D)`` (or ``(B, ...)``); a score function returns the
shape of its input; a noise-conditional score is called ``score_fn(x_tilde, sigma)`` with
``sigma`` of shape ``(B,)``. Every loss is a mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from course_lib.gaussian_mixture import GaussianMixture
from course_lib.tensors import batch_time, expand_like, randn_like, sq_norm

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
NoiseScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ESTIMATORS = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


# --------------------------------------------------------------------------- helpers


def probe_vectors(
    shape: torch.Size | tuple[int, ...],
    like: torch.Tensor,
    probe: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Hutchinson's probes: random vectors ``v`` of ``shape`` with ``E[v] = 0`` and
    ``E[v vᵀ] = I``, Rademacher (±1) or standard Gaussian, so that
    ``E[vᵀ A v] = tr A`` (Hutchinson 1989); drawn from ``generator`` (on its device),
    returned on ``like``'s device in its dtype."""
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    device = generator.device if generator is not None else like.device
    if probe == "gaussian":
        v = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    else:
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(like.dtype) * 2 - 1
    return v.to(like.device)


def exact_divergence(out: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``Σ_i ∂out_i/∂x_i`` per sample for an output ``out = f(x)`` already computed from
    ``x`` (which requires grad): one backward pass per dimension. Row ``b`` of ``out``
    depends on row ``b`` of ``x`` only, so summing over the batch gives every sample's
    ``∂f_i/∂x_i`` at once."""
    b = x.shape[0]
    out_flat = out.reshape(b, -1)
    div = torch.zeros(b, dtype=out.dtype, device=out.device)
    if not out.requires_grad:  # f does not depend on x: zero divergence
        return div
    for i in range(out_flat.shape[1]):
        (g,) = torch.autograd.grad(
            out_flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True, allow_unused=True
        )
        if g is not None:
            div = div + g.reshape(b, -1)[:, i]
    return div


def _divergence_and_output(
    fn: ScoreFn,
    x: torch.Tensor,
    estimator: str,
    n_probes: int,
    probe: str,
    generator: torch.Generator | None,
    create_graph: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇ₓ · fn(x), fn(x))``; see :func:`divergence`. The output is returned too so that a
    loss needing both evaluates ``fn`` once."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes}")
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    b = x.shape[0]
    with torch.enable_grad():
        # A tensor already in a graph is used as is, so gradients still reach what made it.
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        if estimator == "exact":
            out = fn(x)
            div = exact_divergence(out, x, create_graph)
            return div, (out if create_graph else out.detach())
        # Hutchinson: all probes in one batched pass over x repeated n_probes times.
        x_rep = x.repeat(n_probes, *((1,) * (x.ndim - 1)))
        out_rep = fn(x_rep)
        v = probe_vectors(out_rep.shape, out_rep, probe, generator)
        g = None
        if out_rep.requires_grad:
            (g,) = torch.autograd.grad(
                (out_rep * v).sum(), x_rep, create_graph=create_graph, allow_unused=True
            )
        v_jac_v = (
            torch.zeros(out_rep.shape[0], dtype=out_rep.dtype, device=out_rep.device)
            if g is None
            else (g * v).reshape(out_rep.shape[0], -1).sum(1)
        )
        out = out_rep[:b] if create_graph else out_rep[:b].detach()
        return v_jac_v.reshape(n_probes, b).mean(0), out


# --------------------------------------------------------------------------- divergence
def divergence(
    fn: ScoreFn,
    x: torch.Tensor,
    estimator: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    create_graph: bool | None = None,
) -> torch.Tensor:
    """The divergence ``∇ₓ · f(x) = tr(∇ₓ f(x))`` of a vector field, per sample.

    * ``"exact"``: ``Σ_i ∂f_i/∂x_i`` by automatic differentiation, one backward pass per
      dimension ``D`` (each vectorised over the batch);
    * ``"hutchinson"``: the unbiased estimator ``tr(J) = E_v[vᵀ J v]`` for random ``v``
      with ``E[v vᵀ] = I`` (Hutchinson 1989), averaged over ``n_probes`` probes; one
      backward pass whatever ``D``. Used for score matching by Song et al. (2019) and for
      continuous normalising flows by Grathwohl et al. (2019, FFJORD).

    ``fn`` must treat the samples independently (no batch statistics), since the exact
    trace sums gradients over the batch.

    Args:
        fn: a map ``(B, ...) -> (B, ...)`` of the same shape.
        x: points, shape ``(B, ...)``.
        estimator: ``"exact"`` or ``"hutchinson"``.
        n_probes: Hutchinson probes per sample.
        probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        generator: for the probes.
        create_graph: keep the graph of the derivatives so that the result can itself be
            differentiated (to train a loss built on it). Default: whenever gradients are
            enabled by the caller.

    Returns:
        The divergences, shape ``(B,)``.
    """
    return _divergence_and_output(fn, x, estimator, n_probes, probe, generator, create_graph)[0]


# --------------------------------------------------------------------------- losses
def explicit_score_matching(
    score_fn: ScoreFn, x: torch.Tensor, true_score: torch.Tensor | ScoreFn
) -> torch.Tensor:
    """The Fisher divergence to a known score (Hyvärinen 2005, eq. 2):

    ``J_ESM(s) = ½ E_p ‖s(x) − ∇ₓ log p(x)‖²``.

    Args:
        score_fn: the model ``s``, ``(B, D) -> (B, D)``.
        x: samples of ``p``, shape ``(B, D)``.
        true_score: ``∇ₓ log p(x)`` at ``x`` (a tensor), or a function computing it.

    Returns:
        Scalar loss.
    """
    target = true_score(x) if callable(true_score) else true_score
    return 0.5 * sq_norm(score_fn(x) - target.to(x)).mean()


def implicit_score_matching(
    score_fn: ScoreFn,
    x: torch.Tensor,
    estimator: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    probe: str = "rademacher",
) -> torch.Tensor:
    """Hyvärinen's score matching objective (Hyvärinen 2005, Theorem 1):

    ``J_ISM(s) = E_p[ tr(∇ₓ s(x)) + ½ ‖s(x)‖² ]``,

    equal to ``J_ESM(s) − ½ E_p‖∇ₓ log p‖²``: the Fisher divergence up to a constant that
    does not depend on the model, but computable from samples alone. The trace is exact
    (``D`` backward passes) or Hutchinson's estimate (see :func:`divergence`).

    Args:
        score_fn: the model ``s``, ``(B, D) -> (B, D)``.
        x: samples of ``p``, shape ``(B, D)``.
        estimator: ``"exact"`` or ``"hutchinson"``.
        n_probes: Hutchinson probes per sample.
        generator: for the probes.
        probe: ``"rademacher"`` or ``"gaussian"``.

    Returns:
        Scalar loss (differentiable in the model's parameters when gradients are enabled).
    """
    div, score = _divergence_and_output(score_fn, x, estimator, n_probes, probe, generator, None)
    return (div + 0.5 * sq_norm(score)).mean()


def sliced_score_matching(
    score_fn: ScoreFn,
    x: torch.Tensor,
    n_projections: int = 1,
    variance_reduced: bool = False,
    generator: torch.Generator | None = None,
    probe: str = "gaussian",
) -> torch.Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019, eqs. 7 and 8):

    ``J_SSM(s) = E_p E_v[ vᵀ (∇ₓ s(x)) v + ½ (vᵀ s(x))² ]``

    with random directions ``v`` (``E[v vᵀ] = I``), ``n_projections`` of them per sample.
    Since ``E_v[(vᵀ s)²] = ‖s‖²``, the variance-reduced form (SSM-VR) replaces
    ``½ (vᵀ s)²`` by ``½ ‖s‖²``; it is then :func:`implicit_score_matching` with the
    Hutchinson trace. ``vᵀ(∇ₓ s)v`` costs one backward pass of ``vᵀ s``.

    Args:
        score_fn: the model ``s``, ``(B, D) -> (B, D)``.
        x: samples of ``p``, shape ``(B, D)``.
        n_projections: directions per sample.
        variance_reduced: use SSM-VR.
        generator: for the directions.
        probe: law of ``v``, ``"gaussian"`` (the paper's) or ``"rademacher"``.

    Returns:
        Scalar loss.
    """
    if n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections}")
    b = x.shape[0]
    create_graph = torch.is_grad_enabled()  # differentiable only when the caller trains
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        x_rep = x.repeat(n_projections, *((1,) * (x.ndim - 1)))
        score = score_fn(x_rep)
        v = probe_vectors(score.shape, score, probe, generator)
        v_score = (v * score).reshape(score.shape[0], -1).sum(1)  # vᵀ s, (P·B,)
        (g,) = torch.autograd.grad(v_score.sum(), x_rep, create_graph=create_graph)
    v_jac_v = (g * v).reshape(score.shape[0], -1).sum(1)
    square = sq_norm(score) if variance_reduced else v_score**2
    return (v_jac_v + 0.5 * square).reshape(n_projections, b).mean()


def denoising_score_matching(
    score_fn: NoiseScoreFn,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoising score matching (Vincent 2011):

    ``J_DSM(s) = ½ E_{x, ε} ‖s(x̃, σ) + ε / σ‖²``,  ``x̃ = x + σ ε``,  ``ε ~ N(0, I)``,

    since ``∇_x̃ log N(x̃; x, σ² I) = −ε / σ``. It equals the Fisher divergence to the
    noised density ``p_σ = p * N(0, σ² I)`` plus a constant (:func:`dsm_minimum`), so its
    minimiser is ``∇ log p_σ``.

    Args:
        score_fn: ``s(x̃, σ)``, called with ``sigma`` of shape ``(B,)``.
        x: clean samples, ``(B, D)``.
        sigma: noise level, a number or one per sample ``(B,)``.
        generator: for ``ε``.

    Returns:
        Scalar loss.
    """
    sigma = batch_time(sigma, x)
    eps = randn_like(x, generator)
    sigma_x = expand_like(sigma, x)
    x_tilde = x + sigma_x * eps
    return 0.5 * sq_norm(score_fn(x_tilde, sigma) + eps / sigma_x).mean()


def multi_noise_dsm(
    score_fn: NoiseScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The NCSN objective (Song & Ermon 2019, eqs. 5–6): DSM at ``L`` noise levels with
    weights ``λ(σ) = σ²``, one level drawn uniformly per sample:

    ``ℓ = (1/L) Σ_i ½ σ_i² E ‖s(x̃, σ_i) + ε/σ_i‖² = (1/L) Σ_i ½ E ‖σ_i s(x̃, σ_i) + ε‖²``.

    The weighting makes every level contribute about equally (``σ s`` is of order one).

    Args:
        score_fn: ``s(x̃, σ)``, called with ``sigma`` of shape ``(B,)``.
        x: clean samples, ``(B, D)``.
        sigmas: the noise levels ``σ_1 .. σ_L``.
        generator: for the levels and ``ε``.

    Returns:
        Scalar loss.
    """
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype).reshape(-1)
    device = generator.device if generator is not None else sigmas.device
    idx = torch.randint(sigmas.shape[0], (x.shape[0],), generator=generator, device=device)
    sigma = sigmas.to(device)[idx].to(x.device)
    eps = randn_like(x, generator)
    sigma_x = expand_like(sigma, x)
    x_tilde = x + sigma_x * eps
    return 0.5 * sq_norm(sigma_x * score_fn(x_tilde, sigma) + eps).mean()


# --------------------------------------------------------------------------- model
class NoiseConditionalScore(nn.Module):
    """A noise-conditional score ``s(x, σ) = net(x, c_noise(σ)) / σ`` with
    ``c_noise(σ) = log(σ) / 4``.

    Dividing by ``σ`` is technique 3 of improved NCSN (Song & Ermon 2020): the true score
    of ``p_σ`` scales like ``1/σ``, so the net only has to output something of order one.
    ``c_noise`` is EDM's conditioning input (Karras et al. 2022, Table 1). Any net called
    as ``net(x, t)`` serves: :class:`course_lib.nets.MLP` for the toys, the U-Net for
    images.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @staticmethod
    def c_noise(sigma: torch.Tensor) -> torch.Tensor:
        """The net's conditioning input, ``log(σ) / 4``."""
        return torch.log(sigma) / 4

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``s(x, σ)`` for ``x`` of shape ``(B, ...)`` and ``sigma`` a number or ``(B,)``."""
        sigma = batch_time(sigma, x)
        return self.net(x, self.c_noise(sigma)) / expand_like(sigma, x)


# --------------------------------------------------------------------------- exact facts
def tweedie_denoiser(
    score_fn: NoiseScoreFn, x_tilde: torch.Tensor, sigma: float | torch.Tensor
) -> torch.Tensor:
    """Tweedie's formula (Efron 2011; Robbins 1956): for ``x̃ = x + σ ε``,

    ``E[x | x̃] = x̃ + σ² ∇ log p_σ(x̃)``.

    Args:
        score_fn: ``s(x̃, σ) ≈ ∇ log p_σ(x̃)``, called with ``sigma`` of shape ``(B,)``.
        x_tilde: noisy points, ``(B, D)``.
        sigma: noise level, a number or ``(B,)``.

    Returns:
        The posterior mean, shape of ``x_tilde``.
    """
    sigma = batch_time(sigma, x_tilde)
    return x_tilde + expand_like(sigma, x_tilde) ** 2 * score_fn(x_tilde, sigma)


def dsm_minimum(
    gm: GaussianMixture,
    sigma: float,
    n: int = 100_000,
    generator: torch.Generator | None = None,
) -> float:
    """Monte-Carlo estimate of the smallest value of :func:`denoising_score_matching` on
    data ``x ~ gm``, reached by the exact score of ``p_σ`` (Vincent 2011, Sec. 4.2):

    ``min_s J_DSM = ½ (E‖ε/σ‖² − E_{p_σ}‖∇ log p_σ(x̃)‖²) = ½ (D/σ² − E_{p_σ}‖∇ log p_σ‖²)``.

    It follows from ``J_DSM(s) = ½ E‖s − ∇ log p_σ‖² + J_DSM(∇ log p_σ)``; a loss curve
    can be read against this floor. ``E‖ε/σ‖² = D/σ²`` is used exactly, so only the
    second term is estimated, from ``n`` exact samples of ``p_σ``.

    Args:
        gm: the data law.
        sigma: noise level.
        n: Monte-Carlo sample size.
        generator: for the samples.

    Returns:
        The estimated minimum.
    """
    x_tilde = gm.noised(1.0, sigma).sample(n, generator).double()
    score = gm.noised_score(x_tilde, 1.0, sigma)
    return 0.5 * (gm.dim / sigma**2 - float(sq_norm(score).mean()))


def sigma_weighted_dsm_minimum(
    gm: GaussianMixture,
    sigmas: torch.Tensor | Sequence[float],
    n: int = 100_000,
    generator: torch.Generator | None = None,
) -> float:
    """The minimum of :func:`multi_noise_dsm`: ``(1/L) Σ_i σ_i² min J_DSM(σ_i)``, each
    term from :func:`dsm_minimum`."""
    sigmas = [float(s) for s in torch.as_tensor(sigmas).reshape(-1)]
    return sum(s**2 * dsm_minimum(gm, s, n, generator) for s in sigmas) / len(sigmas)


__all__ = [
    "ESTIMATORS",
    "PROBES",
    "NoiseConditionalScore",
    "denoising_score_matching",
    "divergence",
    "dsm_minimum",
    "explicit_score_matching",
    "implicit_score_matching",
    "multi_noise_dsm",
    "probe_vectors",
    "sigma_weighted_dsm_minimum",
    "sliced_score_matching",
    "tweedie_denoiser",
]
