"""Chapter 2's measurements and figures: the plain, tested functions behind its plots.

* :func:`two_mode_mixture`: the chapter's running example, two far-apart modes with
  weights 0.8 / 0.2, and :func:`broad_init`, the uniform start that hides the weights;
* :func:`exact_noise_score`: a mixture's exact ``∇ log p_σ``, called like a learned
  noise-conditional score, the reference every learned sampler is compared with;
* :func:`mode_fractions` and :func:`mode_weight_error`: how much mass a sampler puts in
  each mode, and how far that is from the true weights;
* :func:`ula_gaussian_variance` and :func:`gaussian_bias_table`: ULA's step-size bias on
  ``N(0, σ²)`` in closed form, beside ULA and MALA measured;
* :func:`langevin_panel`: the widget's update function (step size, number of steps ->
  samples and trajectories).

The samplers themselves live in :mod:`course_lib.langevin`; this module only runs them
and measures what they give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from course_lib import langevin, plotting
from course_lib.gaussian_mixture import GaussianMixture


def two_mode_mixture(
    weights: tuple[float, float] = (0.8, 0.2), offset: float = 1.5, std: float = 0.35
) -> GaussianMixture:
    """``w_1 N((-a, -a), s² I) + w_2 N((a, a), s² I)``: two isotropic modes on the
    diagonal, ``2√2 a`` apart (4.2 for ``a = 1.5``, twelve standard deviations ``s``),
    so that a Langevin chain practically never crosses from one to the other."""
    return GaussianMixture.isotropic(list(weights), [[-offset, -offset], [offset, offset]], std)


def exact_noise_score(gm: GaussianMixture):
    """The exact noise-conditional score ``s(x, σ) = ∇ log p_σ(x)`` of ``p_σ = p * N(0, σ² I)``
    for a Gaussian mixture ``p``, called like a learned one (``sigma`` of shape ``(B,)``,
    as :func:`~course_lib.langevin.annealed_langevin` passes it).

    Annealed Langevin passes one noise level for the whole batch; the mixture's
    scalar-level path (one factorisation of the ``K`` covariances) is then used.
    """

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        if sigma.ndim == 0 or bool((sigma == sigma.reshape(-1)[0]).all()):
            return gm.noised_score(x, 1.0, float(sigma.reshape(-1)[0]))
        return gm.noised_score(x, 1.0, sigma)

    return score


def broad_init(n: int, generator: torch.Generator | None = None, lim: float = 3.0) -> torch.Tensor:
    """``n`` points uniform on the square ``[-lim, lim]²``, shape ``(n, 2)``: a start that
    knows nothing about the target (and, for :func:`two_mode_mixture`, puts half of
    the points on each side of the line between the modes)."""
    return (2 * torch.rand(n, 2, generator=generator) - 1) * lim


def mode_fractions(x: torch.Tensor, gm: GaussianMixture) -> torch.Tensor:
    """The fraction of the samples ``x`` (``(B, D)``) assigned to each component of
    ``gm``, each sample going to its most responsible component ``argmax_k r_k(x)``;
    shape ``(K,)``, summing to one."""
    labels = gm.responsibilities(x).argmax(1)
    return torch.bincount(labels, minlength=gm.n_components).double() / x.shape[0]


def mode_weight_error(x: torch.Tensor, gm: GaussianMixture) -> float:
    """Total-variation distance between the sampled mode fractions ``f_k`` and the true
    weights ``w_k``: ``½ Σ_k |f_k − w_k|``. For two modes it is ``|f_1 − w_1|``."""
    return float(0.5 * (mode_fractions(x, gm) - gm.weights).abs().sum())


def ula_gaussian_variance(step_size: float, sigma: float = 1.0) -> float:
    """The stationary variance of ULA on ``p = N(0, σ²)``.

    One step is ``x' = (1 − h/(2σ²)) x + √h z``; a stationary variance ``v`` satisfies
    ``v = (1 − h/(2σ²))² v + h``, hence

    ``v = σ² / (1 − h/(4σ²))``,

    finite for ``0 < h < 4σ²`` (beyond, the chain diverges) and ``σ² (1 + h/(4σ²) + ...)``
    for small ``h``: a bias of order ``h``.
    """
    if not 0 < step_size < 4 * sigma**2:
        raise ValueError(
            f"ULA on N(0, sigma^2) is stable only for 0 < h < 4 sigma^2 = {4 * sigma**2}, "
            f"got h = {step_size}"
        )
    return sigma**2 / (1 - step_size / (4 * sigma**2))


@dataclass(frozen=True)
class BiasRow:
    """One step size of :func:`gaussian_bias_table`."""

    step_size: float
    formula: float  # σ² / (1 − h/(4σ²))
    ula: float  # measured variance of ULA's samples
    mala: float  # measured variance of MALA's samples
    acceptance: float  # MALA's acceptance rate


def gaussian_bias_table(
    step_sizes: list[float],
    sigma: float = 1.0,
    n: int = 20_000,
    n_steps: int = 200,
    generator: torch.Generator | None = None,
) -> list[BiasRow]:
    """Run ULA and MALA on ``N(0, σ²)`` (1D, ``n`` chains started at exact samples, so no
    burn-in is needed) for ``n_steps`` steps at each step size, and return the measured
    variances beside :func:`ula_gaussian_variance`."""
    score = lambda x: -x / sigma**2  # noqa: E731
    log_prob = lambda x: -0.5 * (x[:, 0] / sigma) ** 2  # noqa: E731  (up to a constant)
    rows = []
    for h in step_sizes:
        x0 = sigma * torch.randn(n, 1, generator=generator, dtype=torch.float64)
        u = langevin.ula(score, x0, h, n_steps, generator=generator).x
        m = langevin.mala(log_prob, score, x0, h, n_steps, generator=generator)
        rows.append(
            BiasRow(
                step_size=h,
                formula=ula_gaussian_variance(h, sigma),
                ula=float(u.var()),
                mala=float(m.x.var()),
                acceptance=m.info["acceptance_rate"],
            )
        )
    return rows


def fractions_along(trajectory: torch.Tensor, gm: GaussianMixture) -> torch.Tensor:
    """:func:`mode_fractions` of every recorded state of a trajectory ``(S, B, D)``;
    shape ``(S, K)``."""
    return torch.stack([mode_fractions(x, gm) for x in trajectory])


def langevin_panel(
    step_size: float = 0.01,
    n_steps: int = 200,
    n: int = 500,
    n_paths: int = 30,
    seed: int = 0,
    gm: GaussianMixture | None = None,
) -> Figure:
    """The widget of chapter 2: ULA with the exact score of :func:`two_mode_mixture`
    from :func:`broad_init`, for a given step size ``h`` and number of steps.

    Left: the final samples over the density, titled with the fraction in the heavy
    mode (true weight 0.8). Right: the paths of ``n_paths`` chains. Chains that ran
    away (``h`` too large for the stiffness of the modes) are counted, not drawn.
    """
    gm = gm if gm is not None else two_mode_mixture()
    g = torch.Generator().manual_seed(seed)
    x0 = broad_init(n, g)
    keep = max(1, n_steps // 60)
    res = langevin.ula(gm.score, x0, step_size, n_steps, generator=g, keep=keep)
    x = res.x
    finite = torch.isfinite(x).all(1) & (x.norm(dim=1) < 1e3)  # the rest diverged
    heavy = float(mode_fractions(x[finite], gm)[0]) if finite.any() else float("nan")
    fig, (left, right) = plotting.figure_row(2)
    plotting.density(gm.log_prob, ax=left, title="")
    plotting.scatter(
        x[finite].clamp(-3, 3),
        ax=left,
        title=f"ULA, h = {step_size:g}, {n_steps} steps\nheavy mode: {heavy:.2f} (true 0.80)",
        label="ULA samples",
    )
    plotting.trajectories(
        res.trajectory.clamp(-3, 3), ax=right, title=f"paths of {n_paths} chains", n=n_paths
    )
    if not finite.all():
        right.text(0, 0, f"{int((~finite).sum())} chains diverged", ha="center", color="red")
    fig.tight_layout()
    return fig
