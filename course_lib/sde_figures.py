"""Chapter 5's measurements and figures: the plain, tested functions behind its plots.

* :func:`plot_families` and :func:`forward_paths` / :func:`plot_forward_paths`: the
  three forward SDEs of Song et al. (2021), their closed-form marginals and simulated
  paths;
* :func:`reverse_family` and :func:`reverse_panel` (the widget): the reverse-time
  processes ``λ >= 0`` with the same marginals, from Anderson's SDE to the PF-ODE;
* :func:`corrector_repair` and :func:`pc_study`: what the Langevin corrector does, and
  predictor–corrector against predictor alone at equal cost;
* :func:`hutchinson_study` and :func:`likelihood_rows`: the PF-ODE likelihood against
  the truth, and the common mistakes with their measured size;
* :func:`plot_time_grids` and :func:`plot_preconditioning`: EDM's noise levels and
  its ``c_skip, c_out, c_in``;
* :func:`nfe_samplers`, :func:`quality_vs_nfe`, :func:`format_nfe_table` and
  :func:`plot_quality_vs_nfe`: every sampler of the chapter against the number of
  network calls (NFE), with a quality measure and its spread over seeds.

The samplers, solvers and likelihoods live in :mod:`course_lib.sde`,
:mod:`course_lib.solvers`, :mod:`course_lib.edm` and :mod:`course_lib.likelihood`; this
module only runs them and measures what they give.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from course_lib import ddim, ddpm, edm, likelihood, metrics, plotting, solvers
from course_lib import sde as sdes
from course_lib.ddim_figures import Entry
from course_lib.ddpm import Model
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import Recorder, SampleResult
from course_lib.schedules import DiscreteSchedule, respace

LogProb = Callable[[torch.Tensor], torch.Tensor]


def _gen(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------- forward SDEs
def plot_families(family: Mapping[str, sdes.SDE], n: int = 400) -> Figure:
    """The marginals ``x_t | x_0 ~ N(a(t) x_0, std(t)² I)`` of each SDE in ``family``:
    the mean scale ``a(t)``, the noise std ``std(t)`` and EDM's noise level
    ``σ(t) = std / a`` (log scale), against ``t ∈ [0, 1]``."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    fig, axes = plotting.figure_row(3, size=3.8)
    for name, sde in family.items():
        m = sde.marginal(t)
        axes[0].plot(t, m.a, label=name)
        axes[1].plot(t, m.std, label=name)
        axes[2].plot(t[1:], m.sigma[1:], label=name)
    axes[0].set(title="mean scale a(t) = s(t)", xlabel="t", ylabel="a(t)")
    axes[1].set(title="noise std(t)", xlabel="t", ylabel="std(t)", yscale="log")
    axes[2].set(title="EDM noise level σ(t) = std / a", xlabel="t", ylabel="σ(t)", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def forward_paths(
    sde: sdes.SDE,
    x0: torch.Tensor,
    n_steps: int = 200,
    generator: torch.Generator | None = None,
    keep: int = 1,
) -> SampleResult:
    """Simulate the forward SDE ``dx = f(x, t) dt + g(t) dw`` from ``x0`` at ``t = 0`` to
    ``t = 1`` with :func:`course_lib.solvers.euler_maruyama_step` on ``n_steps`` equal
    steps, recording every ``keep``-th state (``SampleResult.trajectory``, times in
    ``[0, 1]``). ``nfe`` counts drift evaluations."""
    grid = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64).tolist()
    rec = Recorder(keep)
    x = x0
    rec(x, grid[0])
    for i in range(n_steps):
        x = solvers.euler_maruyama_step(
            sde.drift, sde.diffusion, x, grid[i], grid[i + 1], generator
        )
        rec(x, grid[i + 1], last=i == n_steps - 1)
    return rec.result(x, nfe=n_steps)


def plot_forward_paths(
    family: Mapping[str, sdes.SDE],
    x0: Sequence[float] = (-1.0, 1.0),
    n_paths: int = 12,
    n_steps: int = 200,
    seed: int = 0,
) -> Figure:
    """One panel per SDE: paths of the forward SDE in 1D from the data points ``x0``
    (``n_paths`` from each, Euler–Maruyama), over the closed-form band
    ``a(t) x_0 ± 2 std(t)`` of each point's marginal. The VE panel is drawn on a
    symmetric log scale, since its noise grows to ``σ_max``."""
    g = _gen(seed)
    start = torch.tensor(x0, dtype=torch.float64).repeat_interleave(n_paths)[:, None]
    t = torch.linspace(0, 1, 200, dtype=torch.float64)
    fig, axes = plotting.figure_row(len(family), size=3.8)
    colors = [plotting.COLORS["model"], plotting.COLORS["truth"]]
    for ax, (name, sde) in zip(axes, family.items(), strict=True):
        res = forward_paths(sde, start, n_steps, g)
        m = sde.marginal(t)
        for j, point in enumerate(x0):
            c = colors[j % 2]
            mean = m.a * point
            ax.fill_between(t, mean - 2 * m.std, mean + 2 * m.std, color=c, alpha=0.15)
            paths = res.trajectory[:, j * n_paths : (j + 1) * n_paths, 0]
            ax.plot(res.times, paths, color=c, lw=0.6, alpha=0.7)
        ax.set(title=f"{name}: paths and a(t) x0 ± 2 std(t)", xlabel="t", ylabel="x_t")
        if float(m.std[-1]) > 5:
            ax.set_yscale("symlog", linthresh=1.0)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------- reverse processes
def reverse_family(
    sde: sdes.SDE,
    score: sdes.Score,
    x_T: torch.Tensor,
    lams: Sequence[float],
    steps: int = 100,
    t_min: float = 1e-3,
    seed: int = 0,
    keep: int | None = 1,
) -> dict[float, SampleResult]:
    """:func:`course_lib.sde.reverse_sde_sample` from the same ``x_T`` for each ``λ`` in
    ``lams`` (``1`` Anderson's reverse SDE, ``0`` the PF-ODE), ``steps`` Euler(–Maruyama)
    steps on the uniform grid from ``t = 1`` to ``t_min``; every run draws its noise from
    a generator seeded with ``seed`` (common random numbers)."""
    grid = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    return {
        float(lam): sdes.reverse_sde_sample(sde, score, x_T, grid, lam, _gen(seed), keep)
        for lam in lams
    }


def reverse_panel(
    sde: sdes.SDE,
    gm: GaussianMixture,
    lam: float = 1.0,
    steps: int = 100,
    n: int = 1000,
    n_paths: int = 25,
    seed: int = 0,
) -> Figure:
    """The widget of chapter 5: sample the exact reverse process of ``gm`` with noise
    coefficient ``λ g(t)`` (``λ = 0`` PF-ODE, ``λ = 1`` Anderson) and ``steps`` Euler
    steps, from the same prior draw whatever the knobs.

    Left: the samples over exact samples of ``gm``, titled with their KL to ``gm``
    (:func:`course_lib.metrics.kl_divergence`). Right: the paths of ``n_paths`` of them.
    """
    x_T = sde.prior_sample((n, gm.dim), _gen(seed))
    res = reverse_family(sde, sdes.exact_score(sde, gm), x_T, [lam], steps, seed=seed + 1)[
        float(lam)
    ]
    kl = metrics.kl_divergence(res.x, gm.log_prob)
    fig, (left, right) = plotting.figure_row(2)
    plotting.scatter(
        res.x.clamp(-3, 3),
        data=gm.sample(n, _gen(seed + 2)),
        ax=left,
        label="samples",
        title=f"λ = {lam:g}, {steps} steps: KL {kl:.3f} nats",
    )
    traj = res.trajectory
    plotting.trajectories(traj.clamp(-3, 3), ax=right, title=f"paths of {n_paths}", n=n_paths)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ predictor-corrector
def corrector_repair(
    score: sdes.Score,
    log_prob_t: LogProb,
    x: torch.Tensor,
    t: float,
    n_steps: int = 20,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Apply ``n_steps`` Langevin corrector steps
    (:func:`course_lib.sde.langevin_corrector_step`) at the fixed time ``t`` to the points
    ``x``; return their KL to the exact ``p_t`` (``log_prob_t``) before and after each
    step (``n_steps + 1`` values). The corrector's target is ``p_t``: from a wrong start
    the KL falls towards the floor of exact samples."""
    values = [metrics.kl_divergence(x, log_prob_t)]
    for _ in range(n_steps):
        x = sdes.langevin_corrector_step(score, x, t, snr, generator)
        values.append(metrics.kl_divergence(x, log_prob_t))
    return values


@dataclass(frozen=True)
class Measured:
    """A quality measured over seeds: mean, standard deviation, and the NFE."""

    mean: float
    std: float
    nfe: int


def _summary(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pc_study(
    sde: sdes.SDE,
    score: sdes.Score,
    log_prob: LogProb,
    n: int,
    steps: int,
    seeds: Sequence[int] = (0,),
    snr: float = 0.16,
    dim: int = 2,
) -> dict[str, Measured]:
    """Predictor alone against predictor–corrector (:func:`course_lib.sde.pc_sample`,
    reverse-diffusion predictor, Langevin corrector with the ``snr`` rule), KL to the
    target (``log_prob``) averaged over ``seeds``:

    * ``"P, N steps"``: ``N = steps`` predictor steps (``N + 1`` NFE with the final
      denoising step);
    * ``"PC, N steps"``: the same steps, each followed by a corrector step (``2 N + 1``);
    * ``"P, 2N steps"``: the predictor alone at the NFE of PC (``2 N + 1``).

    Each seed draws its own prior sample; the three runs of a seed share it."""
    plan = {
        f"P, {steps} steps": (steps, "none"),
        f"PC, {steps} steps": (steps, "langevin"),
        f"P, {2 * steps} steps": (2 * steps, "none"),
    }
    values: dict[str, list[float]] = {k: [] for k in plan}
    nfes: dict[str, int] = {}
    for seed in seeds:
        x_T = sde.prior_sample((n, dim), _gen(seed))
        for name, (k, corrector) in plan.items():
            res = sdes.pc_sample(
                sde, score, x_T, k, corrector=corrector, snr=snr, generator=_gen(seed + 1000)
            )
            values[name].append(metrics.kl_divergence(res.x, log_prob))
            nfes[name] = res.nfe
    return {k: Measured(*_summary(v), nfes[k]) for k, v in values.items()}


# --------------------------------------------------------------------- likelihoods
@dataclass(frozen=True)
class HutchinsonStudy:
    """Hutchinson estimates of ``log p`` against the exact divergence's value.

    Attributes:
        exact: ``log p`` with the exact divergence, ``(B,)``.
        estimates: ``(R, B)``: ``R`` independent probes per point.
        nfe_exact, nfe_hutchinson: evaluations of the augmented drift of each solve.
    """

    exact: torch.Tensor
    estimates: torch.Tensor
    nfe_exact: int
    nfe_hutchinson: int

    @property
    def mean(self) -> torch.Tensor:
        """The mean estimate per point, ``(B,)``."""
        return self.estimates.mean(0)

    @property
    def std(self) -> torch.Tensor:
        """The spread of one estimate per point, ``(B,)``."""
        return self.estimates.std(0)

    @property
    def standard_error(self) -> torch.Tensor:
        """The standard error of :attr:`mean`, ``(B,)``."""
        return self.std / math.sqrt(self.estimates.shape[0])


def hutchinson_study(
    drift: solvers.Drift,
    x: torch.Tensor,
    t0: float,
    t1: float,
    prior_log_prob: LogProb,
    repeats: int = 100,
    probe: str = "rademacher",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> HutchinsonStudy:
    """:func:`course_lib.likelihood.ode_log_likelihood` of the points ``x`` once with the
    exact divergence and ``repeats`` times with Hutchinson's estimator (each repeat a
    copy of ``x`` in one batch, so each has its own probe, fixed for the whole solve)."""
    b = x.shape[0]
    exact = likelihood.ode_log_likelihood(drift, x, t0, t1, prior_log_prob, rtol=rtol, atol=atol)
    hutch = likelihood.ode_log_likelihood(
        drift,
        x.repeat(repeats, *([1] * (x.ndim - 1))),
        t0,
        t1,
        prior_log_prob,
        divergence="hutchinson",
        probe=probe,
        rtol=rtol,
        atol=atol,
        generator=generator,
    )
    return HutchinsonStudy(exact.log_p, hutch.log_p.reshape(repeats, b), exact.nfe, hutch.nfe)


@dataclass(frozen=True)
class LikelihoodRow:
    """One line of a likelihood table: a recipe's value (mean and standard error over
    the points), its paired difference from the reference (mean and standard deviation
    over the points), and the NFE."""

    name: str
    value: float
    standard_error: float
    error: float
    error_spread: float
    nfe: int


def likelihood_rows(
    runs: Mapping[str, tuple[torch.Tensor, int]], reference: str
) -> list[LikelihoodRow]:
    """Tabulate per-point values (``name -> (values (B,), nfe)``, e.g. bits/dim or
    nats) against the row ``reference``: mean and standard error of the mean, and the
    difference from the reference point by point (the same points in every row), its
    mean and standard deviation."""
    if reference not in runs:
        raise ValueError(f"the reference {reference!r} is not among {list(runs)}")
    ref = runs[reference][0].detach().double().cpu()
    rows = []
    for name, (values, nfe) in runs.items():
        v = values.detach().double().cpu()
        diff = v - ref
        se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else 0.0
        spread = float(diff.std()) if v.numel() > 1 else 0.0
        rows.append(LikelihoodRow(name, float(v.mean()), se, float(diff.mean()), spread, int(nfe)))
    return rows


def format_likelihood_rows(rows: Sequence[LikelihoodRow], unit: str = "bits/dim") -> str:
    """The rows as an aligned text table."""
    width = max(len("recipe"), *(len(r.name) for r in rows))
    head = f"{'recipe':<{width}} | {unit + ' ± s.e.':>22} | {'− reference ± sd':>20} | {'NFE':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<{width}} | {r.value:>12.4f} ± {r.standard_error:<7.4f} | "
            f"{r.error:>+10.4f} ± {r.error_spread:<7.4f} | {r.nfe:>5d}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------- EDM
def plot_time_grids(
    n: int = 18,
    rhos: Sequence[float] = (1.0, 3.0, 7.0),
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> Figure:
    """EDM's noise levels :func:`course_lib.edm.time_grid` for several ``ρ``: left,
    ``σ_i`` against the step ``i`` (log scale; the final ``σ_N = 0`` is not drawn);
    right, the step sizes ``σ_i - σ_{i+1}`` relative to ``σ_i``."""
    fig, (left, right) = plotting.figure_row(2, size=4.4)
    for rho in rhos:
        s = edm.time_grid(n, sigma_min, sigma_max, rho)[:-1]
        i = torch.arange(n)
        left.plot(i, s, "o-", ms=3, label=f"ρ = {rho:g}")
        right.plot(i[:-1], (s[:-1] - s[1:]) / s[:-1], "o-", ms=3, label=f"ρ = {rho:g}")
    left.set(
        title=f"{n} steps from σ_max = {sigma_max:g} to σ_min = {sigma_min:g}",
        xlabel="step i",
        ylabel="σ_i",
        yscale="log",
    )
    right.set(title="relative step (σ_i − σ_{i+1}) / σ_i", xlabel="step i", ylabel="relative step")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_preconditioning(sigma_data: float = 0.5) -> Figure:
    """EDM's ``c_skip, c_out, c_in`` (:class:`course_lib.edm.Preconditioning`) against
    ``σ``, beside the VP column's ``c_skip = 1, c_out = -σ`` (an ``ε``-prediction)."""
    p = edm.Preconditioning(sigma_data)
    sigma = torch.logspace(-3, 2, 200, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.plot(sigma, p.c_skip(sigma), label="c_skip = σ_d² / (σ² + σ_d²)")
    ax.plot(sigma, p.c_out(sigma), label="c_out = σ σ_d / √(σ² + σ_d²)")
    ax.plot(sigma, p.c_in(sigma), label="c_in = 1 / √(σ² + σ_d²)")
    ax.plot(
        sigma, sigma, ls=":", color=plotting.COLORS["data"], label="|c_out| of ε-prediction = σ"
    )
    ax.axvline(sigma_data, color=plotting.COLORS["data"], ls="--", lw=0.8, label="σ = σ_data")
    ax.set(xscale="log", yscale="log", xlabel="σ", ylabel="coefficient", ylim=(1e-3, 1e2))
    ax.set_title(f"EDM preconditioning, σ_data = {sigma_data:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------- samplers vs NFE
#: the samplers of :func:`nfe_samplers`, the rows of every NFE table
EULER = "Euler (EDM grid)"
HEUN = "EDM Heun"
RK4 = "RK4 (EDM grid)"
DOPRI5 = "dopri5 (adaptive)"
PC = "PC (VP, RD + Langevin)"
DDIM = "DDIM, η = 0"
DDPM = "DDPM ancestral, σ² = β"

NFESampler = Callable[[int, torch.Tensor, torch.Generator], SampleResult]


def nfe_samplers(
    denoiser: edm.Denoiser,
    eps_model: Model,
    schedule: DiscreteSchedule,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    sde: sdes.SDE | None = None,
    snr: float = 0.16,
    clip_x0: float | None = None,
) -> dict[str, NFESampler]:
    """Every sampler of chapter 5 for one model, as ``(knob, z, generator) -> result``,
    started from the same standard normal ``z`` (``(B, ...)``).

    The model is given twice, as the same function in two parameterisations: the EDM
    ``denoiser`` ``D(x̂; σ)`` and chapter 3's ``eps_model(x_t, t / T)`` on ``schedule``
    (:func:`course_lib.edm.denoiser_from_ddpm` converts one into the other).

    * :data:`EULER`, :data:`HEUN`, :data:`RK4` (knob: steps ``N``): the PF-ODE
      ``dx̂/dσ = (x̂ - D)/σ`` from ``x̂ = σ_max z`` on
      ``edm.time_grid(N, sigma_min, sigma_max, rho)``, last step Euler: ``N``,
      ``2N - 1`` and ``4N - 3`` NFE (:func:`course_lib.edm.euler_sample`,
      :func:`course_lib.edm.heun_sample`, :func:`course_lib.solvers.solve_ode`);
    * :data:`DOPRI5` (knob: ``k``, tolerance ``rtol = atol = 10^-k``): the same ODE from
      ``σ_max`` to ``σ_min`` with :func:`course_lib.solvers.solve_ode_adaptive`, then the
      final Euler step into ``σ = 0``, ``x̂ = D(x̂; σ_min)`` (one more NFE);
    * :data:`PC` (knob: predictor steps ``N``): :func:`course_lib.sde.pc_sample` of
      ``sde`` (default the VP SDE) with the score of the denoiser
      (:func:`course_lib.edm.score_fn_from_denoiser`), reverse diffusion + Langevin,
      ``2N + 1`` NFE;
    * :data:`DDIM` (knob: steps): :func:`course_lib.ddim.ddim_sample`, ``η = 0``, uniform
      grid;
    * :data:`DDPM` (knob: steps): :func:`course_lib.ddpm.ancestral_sample` with
      ``σ_t² = β_t`` on the respaced chain (chapter 4's reference at 1000 steps).

    ``clip_x0`` is passed to DDIM and DDPM (images); the EDM samplers never clip.
    """
    sde = sde or sdes.VPSDE()
    score = edm.score_fn_from_denoiser(denoiser, sde)
    drift = edm.ode_drift(denoiser)

    def grid(n: int) -> torch.Tensor:
        return edm.time_grid(n, sigma_min, sigma_max, rho)

    def euler(n: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        return edm.euler_sample(denoiser, sigma_max * z, grid(n))

    def heun(n: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        return edm.heun_sample(denoiser, sigma_max * z, grid(n))

    def rk4(n: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        return solvers.solve_ode(drift, sigma_max * z, grid(n), "rk4", final_euler=True)

    def dopri5(k: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        tol = 10.0 ** (-k)
        res = solvers.solve_ode_adaptive(
            drift, sigma_max * z, sigma_max, sigma_min, rtol=tol, atol=tol
        )
        x, nfe = solvers.euler_step(drift, res.x, sigma_min, 0.0)
        return SampleResult(x=x, nfe=res.nfe + nfe)

    def pc(n: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        return sdes.pc_sample(sde, score, z, n, snr=snr, generator=g)

    def run_ddim(steps: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        return ddim.ddim_sample(eps_model, z, schedule, steps, clip_x0=clip_x0)

    def run_ddpm(steps: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        sub = respace(schedule, ddim.timesteps(schedule.T, steps))
        return ddpm.ancestral_sample(eps_model, z, sub, "beta", generator=g, clip_x0=clip_x0)

    return {
        EULER: euler,
        HEUN: heun,
        RK4: rk4,
        DOPRI5: dopri5,
        PC: pc,
        DDIM: run_ddim,
        DDPM: run_ddpm,
    }


@dataclass(frozen=True)
class Point(Entry):
    """One sampler at one knob: chapter 4's table entry (:class:`~course_lib.ddim_figures.
    Entry`: quality, wall time of one run, batch size, samples of the first seed, and
    ``per_second``) plus the knob, the mean NFE and the quality's standard deviation
    over seeds (``quality`` is then their mean)."""

    knob: int = 0
    nfe: float = 0.0
    spread: float = 0.0


NFETable = dict[str, list[Point]]


def quality_vs_nfe(
    samplers: Mapping[str, NFESampler],
    plan: Mapping[str, Sequence[int]],
    metric: Callable[[torch.Tensor], float],
    shape: tuple[int, ...],
    seeds: Sequence[int] = (0,),
    device: torch.device | str = "cpu",
) -> NFETable:
    """Run every sampler of ``plan`` at each of its knobs for every seed and measure it.

    Seed ``s`` draws ``z ~ N(0, I)`` of ``shape`` from a generator seeded with ``s``
    (shared by all samplers: common random numbers) and gives the sampler a second
    generator seeded with ``s + 1`` for its own noise.

    Args:
        samplers: ``name -> (knob, z, generator) -> SampleResult`` (:func:`nfe_samplers`).
        plan: ``name -> knobs``; samplers not in ``plan`` are not run.
        metric: ``samples -> quality`` (lower is better: a KL, an FID).
        shape: the shape of ``z``, ``(B, ...)``.
        seeds: one run per seed.
        device: where ``z`` lives.

    Returns:
        ``table[name]`` = one :class:`Point` per knob, in the order of ``plan[name]``.
    """
    table: NFETable = {}
    for name, knobs in plan.items():
        if name not in samplers:
            raise ValueError(f"no sampler named {name!r}; valid: {', '.join(samplers)}")
        points = []
        for knob in knobs:
            values, nfes, secs, first = [], [], [], None
            for seed in seeds:
                z = torch.randn(shape, generator=_gen(seed)).to(device)
                start = time.perf_counter()
                res = samplers[name](int(knob), z, _gen(seed + 1, z.device))
                if res.x.device.type == "cuda":
                    torch.cuda.synchronize(res.x.device)
                secs.append(time.perf_counter() - start)
                x = res.x.detach().cpu()
                values.append(float(metric(x)))
                nfes.append(res.nfe)
                first = x if first is None else first
            mean, std = _summary(values)
            points.append(
                Point(
                    quality=mean,
                    seconds=float(np.mean(secs)),
                    n=shape[0],
                    x=first,
                    knob=int(knob),
                    nfe=float(np.mean(nfes)),
                    spread=std,
                )
            )
        table[name] = points
    return table


def find(table: NFETable, name: str, knob: int) -> Point:
    """The point of sampler ``name`` at ``knob``."""
    for p in table.get(name, []):
        if p.knob == knob:
            return p
    raise KeyError(f"{name!r} was not run at {knob}")


def format_nfe_table(
    table: NFETable,
    floor: tuple[float, float] | None = None,
    digits: int = 3,
    label: str = "sampler",
) -> str:
    """The table as text: one line per sampler, its entries ``quality ± spread @ NFE``;
    the floor (mean ± spread of exact samples), if given, as the last line."""
    width = max(len(label), *(len(name) for name in table), 5)
    lines = [f"{label:<{width}} | quality ± spread over seeds @ NFE"]
    lines.append("-" * (width + 60))
    for name, points in table.items():
        cells = [f"{p.quality:.{digits}f} ± {p.spread:.{digits}f} @ {p.nfe:.0f}" for p in points]
        lines.append(f"{name:<{width}} | " + " | ".join(cells))
    if floor is not None:
        lines.append(f"{'floor':<{width}} | {floor[0]:.{digits}f} ± {floor[1]:.{digits}f}")
    return "\n".join(lines)


_STYLES = {
    EULER: dict(color="#9467bd", marker="v"),
    HEUN: dict(color=plotting.COLORS["model"], marker="o", lw=2),
    RK4: dict(color="#8c564b", marker="D"),
    DOPRI5: dict(color="#e377c2", marker="*", ms=9),
    PC: dict(color=plotting.COLORS["init"], marker="s"),
    DDIM: dict(color="#17becf", marker="^"),
    DDPM: dict(color=plotting.COLORS["truth"], marker="x"),
}


def plot_quality_vs_nfe(
    table: NFETable,
    ax: Axes | None = None,
    floor: tuple[float, float] | None = None,
    title: str = "quality against NFE",
    ylabel: str = "KL(q ‖ p), nats (lower is better)",
    ymin: float = 1e-3,
) -> Axes:
    """Quality against NFE (log-log), one line per sampler with error bars (spread over
    seeds), and the floor as a grey band (mean ± spread). Values are drawn no lower
    than ``ymin`` (a KL estimate can dip below zero near the floor)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 4.5))
    for name, points in table.items():
        nfe = [p.nfe for p in points]
        q = [max(p.quality, ymin) for p in points]
        ax.errorbar(
            nfe, q, yerr=[p.spread for p in points], label=name, capsize=2, **_STYLES.get(name, {})
        )
    if floor is not None:
        lo, hi = max(floor[0] - floor[1], ymin), floor[0] + floor[1]
        ax.axhspan(lo, hi, color=plotting.COLORS["data"], alpha=0.25, label="floor ± spread")
        ax.axhline(max(floor[0], ymin), color=plotting.COLORS["data"], ls="--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="NFE (network calls per sample)", ylabel=ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax
