"""Chapter 6's figures and studies: paths, crossing trajectories, couplings, and quality
against NFE for flows, built on :mod:`course_lib.flow_matching`, :mod:`course_lib.couplings`
and chapter 5's tables (:func:`course_lib.sde_figures.quality_vs_nfe`).

Every function here measures or draws; the mathematics lives in the modules it calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from course_lib import couplings, edm, image_diffusion, plotting, solvers
from course_lib import flow_matching as fm
from course_lib import sde_figures as sf
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import SampleResult

#: the flow samplers of :func:`flow_samplers`, by name (knob: steps; dopri5: ``-log10 tol``)
EULER, MIDPOINT, HEUN, RK4, DOPRI5 = "Euler", "midpoint", "Heun", "RK4", "dopri5"
METHODS: tuple[str, ...] = (EULER, MIDPOINT, HEUN, RK4, DOPRI5)


# ------------------------------------------------------------------ paths
def plot_path_coefficients(paths: Mapping[str, fm.AffinePath], n: int = 201) -> Figure:
    """``α_t`` and ``σ_t`` of each path, and the signal-to-noise ratio ``log(α_t/σ_t)``."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, path in paths.items():
        t = torch.linspace(0, path.t_max, n, dtype=torch.float64)
        a, s = path.alpha(t).numpy(), path.sigma(t).numpy()
        (line,) = axes[0].plot(t, a, label=name)
        axes[1].plot(t, s, color=line.get_color(), label=name)
        inner = slice(1, -1) if path.t_max == 1.0 else slice(1, None)
        axes[2].plot(t[inner], np.log(a[inner] / s[inner]), color=line.get_color(), label=name)
    axes[0].set(title="α_t (weight of the data x1)", xlabel="flow time t")
    axes[1].set(title="σ_t (weight of the noise x0)", xlabel="flow time t")
    axes[2].set(title="log(α_t / σ_t), the log signal-to-noise ratio", xlabel="flow time t")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class ContinuityCheck:
    """Both sides of ``∂_t log p_t = -∇·u_t - u_t·∇log p_t`` (the continuity equation
    ``∂_t p_t = -∇·(p_t u_t)`` divided by ``p_t``) at points drawn from ``p_t``."""

    t: float
    lhs: torch.Tensor  # ∂_t log p_t by central differences, (B,)
    rhs: torch.Tensor  # -∇·u_t - u_t·∇log p_t by autograd, (B,)

    @property
    def max_error(self) -> float:
        return float((self.lhs - self.rhs).abs().max())

    @property
    def scale(self) -> float:
        return float(self.lhs.abs().max())


def continuity_check(
    gm: GaussianMixture,
    path: fm.AffinePath,
    velocity: fm.Velocity,
    t: float,
    n: int = 64,
    generator: torch.Generator | None = None,
    h: float = 1e-5,
) -> ContinuityCheck:
    """Evaluate both sides of the continuity equation for ``velocity`` and the exact
    densities of ``path`` (:func:`course_lib.flow_matching.exact_log_prob`), in float64:
    the time derivative by central differences with step ``h``, the divergence and the
    score by autograd."""
    log_p = fm.exact_log_prob(gm, path)
    tt = torch.tensor(float(t), dtype=torch.float64)
    x = gm.noised(float(path.alpha(tt)), float(path.sigma(tt))).sample(n, generator).double()
    lhs = (log_p(x, tt + h) - log_p(x, tt - h)) / (2 * h)
    xr = x.clone().requires_grad_(True)
    v = velocity(xr, tt.expand(n))
    div = sum(
        torch.autograd.grad(v[:, i].sum(), xr, retain_graph=True)[0][:, i]
        for i in range(x.shape[1])
    )
    xs = x.clone().requires_grad_(True)
    score = torch.autograd.grad(log_p(xs, tt).sum(), xs)[0]
    rhs = -(div + (v * score).sum(1))
    return ContinuityCheck(float(t), lhs.detach(), rhs.detach())


# ---------------------------------------------------------- crossing paths
def plot_crossing(
    x0: torch.Tensor,
    x1: torch.Tensor,
    trajectory: torch.Tensor,
    times: torch.Tensor,
    titles: tuple[str, str] = ("conditional paths of independent pairs", "the marginal flow"),
) -> Figure:
    """One-dimensional data in the ``(t, x)`` plane. Left: the straight conditional paths
    ``x_t = t x1 + (1 - t) x0`` of the pairs ``(x0, x1)`` (shape ``(B, 1)``); right: the
    ODE trajectories ``(S, B, 1)`` of the marginal velocity at ``times`` from the same
    ``x0``. Where two lines cross, two particles are at one point at one time."""
    fig, axes = plotting.figure_row(2, size=4.4)
    a, b = x0[:, 0].detach().cpu().numpy(), x1[:, 0].detach().cpu().numpy()
    axes[0].plot([0.0, 1.0], np.stack([a, b]), "k-", lw=0.6, alpha=0.5)
    paths = trajectory[:, :, 0].detach().cpu().numpy()
    axes[1].plot(times.numpy(), paths, "k-", lw=0.6, alpha=0.5)
    for ax, title in zip(axes, titles, strict=True):
        start = np.zeros_like(a)
        ax.scatter(start, a, s=8, c=plotting.COLORS["init"], zorder=3, label="x0 (noise)")
        ax.set(xlabel="flow time t", ylabel="x", title=title, xlim=(-0.02, 1.02))
    axes[0].scatter(np.ones_like(b), b, s=8, c=plotting.COLORS["model"], zorder=3, label="x1")
    end = trajectory[-1, :, 0].detach().cpu().numpy()
    axes[1].scatter(np.ones_like(end), end, s=8, c=plotting.COLORS["model"], zorder=3, label="x̂1")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def count_crossings(x0: torch.Tensor, x1: torch.Tensor) -> int:
    """For one-dimensional pairs ``(B, 1)``: the number of pairs of straight paths
    ``x_t = t x1 + (1 - t) x0`` that meet at some ``0 < t < 1``, i.e. of pairs ``i < j``
    whose order is reversed, ``(x0_i - x0_j)(x1_i - x1_j) < 0``. Zero for the optimal
    (monotone) coupling; about half of all pairs for independent ones."""
    if x0.ndim != 2 or x0.shape[1] != 1 or x0.shape != x1.shape:
        raise ValueError(
            f"count_crossings takes one-dimensional pairs of shape (B, 1), got "
            f"{tuple(x0.shape)} and {tuple(x1.shape)}; in more dimensions straight paths "
            "almost never meet at the same time"
        )
    d0 = x0[:, 0, None] - x0[None, :, 0]
    d1 = x1[:, 0, None] - x1[None, :, 0]
    return int(((d0 * d1) < 0).triu(1).sum())


# ------------------------------------------------------------- couplings
@dataclass(frozen=True)
class BatchCost:
    """The mean squared distance per pair, ``E‖x1 - x0‖²``, of the independent coupling
    and of the exact OT assignment within batches of size ``batch``, averaged over
    batches; ``ot_se`` is the standard error of the OT average."""

    batch: int
    independent: float
    ot: float
    ot_se: float


def ot_cost_vs_batch(
    sample_x1: Callable[[int, torch.Generator], torch.Tensor],
    batch_sizes: Sequence[int],
    repeats: int | Callable[[int], int],
    generator: torch.Generator,
) -> list[BatchCost]:
    """How the minibatch OT coupling approaches the OT plan as the batch grows: its cost
    per pair falls towards ``W₂²(N(0, I), p_data)`` from above (Tong et al. 2023, §3.2;
    a batch's optimal assignment is no better than the true plan in expectation, and the
    gap closes as ``B → ∞``). ``repeats`` is a number of batches, or a function of the
    batch size (small batches are cheap and noisy: give them more)."""
    rows = []
    for b in batch_sizes:
        ind, ot = [], []
        for _ in range(repeats(b) if callable(repeats) else repeats):
            x1 = sample_x1(b, generator).double()
            x0 = torch.randn(x1.shape, generator=generator, dtype=torch.float64)
            ind.append(couplings.transport_cost(x0, x1))
            perm = couplings.ot_assignment(x0, x1)
            ot.append(couplings.transport_cost(x0, x1[perm]))
        se = float(np.std(ot, ddof=1) / math.sqrt(len(ot))) if len(ot) > 1 else math.nan
        rows.append(BatchCost(b, float(np.mean(ind)), float(np.mean(ot)), se))
    return rows


def plot_ot_cost(rows: Sequence[BatchCost], w2_squared: float, ax: Axes | None = None) -> Axes:
    """:func:`ot_cost_vs_batch` against the batch size, with the exact ``W₂²``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4))
    b = [r.batch for r in rows]
    ax.plot(
        b, [r.independent for r in rows], "s-", color=plotting.COLORS["init"], label="independent"
    )
    ax.errorbar(
        b, [r.ot for r in rows], yerr=[r.ot_se for r in rows], fmt="o-", capsize=2,
        color=plotting.COLORS["model"], label="minibatch OT",
    )  # fmt: skip
    ax.axhline(w2_squared, color="k", ls="--", lw=1, label=f"W₂² = {w2_squared:.3f} (exact)")
    ax.set(xscale="log", xlabel="batch size B", ylabel="mean ‖x1 - x0‖² per pair")
    ax.set_title("the minibatch coupling approaches the OT plan")
    ax.legend(fontsize=8)
    return ax


def plot_label_partition(
    x0: torch.Tensor, labels: torch.Tensor, ax: Axes | None = None, title: str = ""
) -> Axes:
    """Noise draws ``x0`` coloured by the label of the data point each is paired with."""
    ax = ax if ax is not None else plt.subplots(figsize=(4, 4))[1]
    a = x0.detach().cpu().numpy()
    ax.scatter(a[:, 0], a[:, 1], s=5, c=labels.cpu().numpy(), cmap="tab10", vmin=0, vmax=9)
    lim = (-3.5, 3.5)
    ax.set(xlim=lim, ylim=lim, aspect="equal", title=title, xlabel="x0[0]", ylabel="x0[1]")
    return ax


def label_mass(x0: torch.Tensor, labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """``‖E[x0 | label]‖`` for each label: zero when the noise paired with every label is
    still ``N(0, I)`` (independent coupling), large when the coupling carves the noise
    into regions, one per label (minibatch OT)."""
    means = torch.stack([x0[labels == k].double().mean(0) for k in range(n_labels)])
    return means.norm(dim=1)


# --------------------------------------------------- quality against NFE
def flow_samplers(
    velocity: fm.Velocity,
    path: fm.AffinePath | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, sf.NFESampler]:
    """The flow's samplers as chapter 5's ``(knob, z, generator) -> result``, from
    ``x0 = z`` at ``t = 0`` to ``path.t_max``:

    * :data:`EULER`, :data:`MIDPOINT`, :data:`HEUN`, :data:`RK4` (knob: steps ``N`` on the
      uniform grid :func:`course_lib.flow_matching.time_grid`): ``N``, ``2N``, ``2N``,
      ``4N`` NFE;
    * :data:`DOPRI5` (knob ``k``: ``rtol = atol = 10^-k``), chapter 5's adaptive solve.

    ``dtype`` casts ``z`` first (float64 for the exact fields); samples come back in it.
    """
    t_end = path.t_max if path else 1.0

    def fixed(method: str) -> sf.NFESampler:
        def run(n: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
            return fm.sample(velocity, z.to(dtype or z.dtype), n, method, path)

        return run

    def dopri5(k: int, z: torch.Tensor, g: torch.Generator) -> SampleResult:
        tol = 10.0 ** (-k)
        x = z.to(dtype or z.dtype)
        return solvers.solve_ode_adaptive(velocity, x, 0.0, t_end, rtol=tol, atol=tol)

    methods = {EULER: "euler", MIDPOINT: "midpoint", HEUN: "heun", RK4: "rk4"}
    out = {name: fixed(m) for name, m in methods.items()}
    out[DOPRI5] = dopri5
    return out


def flow_and_diffusion_samplers(
    velocity: fm.Velocity, diffusion: image_diffusion.ImageDiffusion, path: fm.AffinePath
) -> dict[str, sf.NFESampler]:
    """Chapter 6's image comparison in one table: the flow with Euler and Heun on the
    uniform grid (:func:`flow_samplers`), and the diffusion model with DDIM and EDM's
    Heun on its ``σ`` grid from ``σ_max = 80`` (:func:`course_lib.sde_figures.
    nfe_samplers`, ``x0`` clipped to ``[-1, 1]`` as in chapters 3–5)."""
    sigma_min = 1.001 * edm.sigma_range(diffusion.schedule)[0]  # inside the trained range
    diff = sf.nfe_samplers(
        edm.denoiser_from_ddpm(diffusion.model, diffusion.schedule),
        diffusion.model,
        diffusion.schedule,
        sigma_min,
        80.0,
        clip_x0=1.0,
    )
    flow = flow_samplers(velocity, path)
    return {
        "flow, Euler": flow[EULER],
        "flow, Heun": flow[HEUN],
        sf.DDIM: diff[sf.DDIM],
        sf.HEUN: diff[sf.HEUN],
    }


ByMethod = dict[str, sf.NFETable]  # method -> model -> points


def quality_by_method(
    models: Mapping[str, Mapping[str, sf.NFESampler]],
    plan: Mapping[str, Sequence[int]],
    metric: Callable[[torch.Tensor], float],
    shape: tuple[int, ...],
    seeds: Sequence[int] = (0,),
    device: torch.device | str = "cpu",
) -> ByMethod:
    """Run chapter 5's :func:`~course_lib.sde_figures.quality_vs_nfe` for every model
    (``name -> samplers``, e.g. :func:`flow_samplers`) and every method of ``plan``
    (``method -> knobs``) the model has; the result is regrouped by method, so that one
    panel compares the models at equal NFE with one integrator. Every model starts from
    the same noise (common random numbers)."""
    out: ByMethod = {}
    for model, samplers in models.items():
        own = {m: knobs for m, knobs in plan.items() if m in samplers}
        table = sf.quality_vs_nfe(samplers, own, metric, shape, seeds, device)
        for method, points in table.items():
            out.setdefault(method, {})[model] = points
    return out


def plot_by_method(
    by_method: ByMethod,
    floor: tuple[float, float] | None = None,
    ylabel: str = "KL(q ‖ p), nats (lower is better)",
    ymin: float = 1e-3,
    suptitle: str = "",
) -> Figure:
    """One panel per method of :func:`quality_by_method`, one line per model, the same
    colour for a model in every panel, the floor as a grey band."""
    models = list(dict.fromkeys(m for table in by_method.values() for m in table))
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(models)}
    fig, axes = plotting.figure_row(len(by_method), size=4.4)
    for ax, (method, table) in zip(np.atleast_1d(axes), by_method.items(), strict=True):
        for model, points in table.items():
            ax.errorbar(
                [p.nfe for p in points], [max(p.quality, ymin) for p in points],
                yerr=[p.spread for p in points], label=model, capsize=2, marker="o", ms=4,
                color=colors[model],
            )  # fmt: skip
        if floor is not None:
            lo, hi = max(floor[0] - floor[1], ymin), floor[0] + floor[1]
            ax.axhspan(lo, hi, color=plotting.COLORS["data"], alpha=0.25, label="floor ± spread")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=ylabel, title=method)
        ax.legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def format_by_method(by_method: ByMethod, floor: tuple[float, float] | None = None) -> str:
    """:func:`quality_by_method` as text, one block per method."""
    blocks = [
        f"{method}\n" + sf.format_nfe_table(table, floor=floor, label="model")
        for method, table in by_method.items()
    ]
    return "\n\n".join(blocks)


def nfe_to_reach(points: Sequence[sf.Point], level: float) -> float:
    """The smallest NFE at which ``points`` reach ``quality <= level`` (``inf`` if never)."""
    hits = [p.nfe for p in points if p.quality <= level]
    return min(hits) if hits else math.inf
