"""Chapter 4's measurements and figures: the plain, tested functions behind its plots.

* :func:`samplers`: DDIM (``eta = 0``, ``eta = 1``) and DDPM's ancestral sampler on a
  respaced grid, each a function ``steps -> samples`` that starts from the *same* noise
  ``x_T`` and draws its own noise from a freshly seeded generator (common random
  numbers), so that two entries of a table differ by the sampler only;
* :func:`quality_vs_steps`: the loop behind the chapter's tables in the shape of DDIM's
  Table 1 (samplers x numbers of steps -> quality and wall time), for 2D and for images;
  :func:`format_table` and :func:`plot_quality_vs_steps` print and draw it;
* :func:`naive_skip_sample`: the *wrong* way to take fewer steps (DDPM's one-step update
  applied at strided steps), the chapter's motivating failure;
* :func:`ddim_panel`: the widget's update function (steps, ``eta``, grid -> samples and
  trajectories);
* :func:`plot_time_grids`: uniform and quadratic grids in ``t`` and in log-SNR;
* :func:`inversion_study`, :func:`interpolation_norms`, :func:`lerp_and_slerp`:
  deterministic inversion and latent interpolation;
* :func:`fid_floor`: the classifier-feature FID of real images at a given sample size,
  the image analogue of the two-sample floor of :func:`course_lib.metrics.floor`.

The samplers themselves live in :mod:`course_lib.ddim` and :mod:`course_lib.ddpm`; this
module only runs them and measures what they give.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from course_lib import ddim, ddpm, metrics, plotting
from course_lib.ddpm import Model
from course_lib.sampling import SampleResult
from course_lib.schedules import DiscreteSchedule, respace
from course_lib.tensors import randn_like

#: the names of the samplers of :func:`samplers`, used as the rows of every table
DDIM0 = "DDIM, η = 0"
DDIM1 = "DDIM, η = 1"
DDPM = "DDPM ancestral, σ² = β"
DDIM0_QUADRATIC = "DDIM, η = 0, quadratic grid"

Sampler = Callable[[int], torch.Tensor]


# --------------------------------------------------------------------------- samplers
def _generator(x: torch.Tensor, seed: int) -> torch.Generator:
    """A generator on ``x``'s device (the samplers draw their noise there)."""
    return torch.Generator(device=x.device).manual_seed(seed)


def samplers(
    model: Model,
    schedule: DiscreteSchedule,
    x_T: torch.Tensor,
    seed: int = 0,
    clip_x0: float | None = None,
    quadratic: bool = False,
) -> dict[str, Sampler]:
    """The samplers of DDIM's Table 1 for one trained ``model``, as ``steps -> samples``.

    * :data:`DDIM0`: :func:`course_lib.ddim.ddim_sample` with ``eta = 0`` on the uniform
      grid ``ddim.timesteps(T, S)`` (deterministic);
    * :data:`DDIM1`: the same with ``eta = 1``, i.e. ancestral sampling with the posterior
      variance ``beta_tilde`` of the respaced chain;
    * :data:`DDPM`: :func:`course_lib.ddpm.ancestral_sample` with ``sigma_t^2 = beta_t``
      on ``respace(schedule, ddim.timesteps(T, S))`` (the paper's ``sigma_hat`` row; for
      ``S = T`` this is DDPM's own sampler);
    * with ``quadratic=True`` also :data:`DDIM0_QUADRATIC`, ``eta = 0`` on the quadratic grid.

    Every sampler starts from the same ``x_T`` and seeds a new generator with ``seed`` at
    each call, so a run is reproducible and two samplers share their random numbers.
    """
    T = schedule.T

    def run_ddim(eta: float, kind: str) -> Sampler:
        def run(steps: int) -> torch.Tensor:
            grid = ddim.timesteps(T, steps, kind)
            g = _generator(x_T, seed)
            return ddim.ddim_sample(
                model, x_T, schedule, grid, eta=eta, generator=g, clip_x0=clip_x0
            ).x

        return run

    def run_ddpm(steps: int) -> torch.Tensor:
        sub = respace(schedule, ddim.timesteps(T, steps))
        g = _generator(x_T, seed)
        return ddpm.ancestral_sample(model, x_T, sub, "beta", generator=g, clip_x0=clip_x0).x

    out = {DDIM0: run_ddim(0.0, "uniform"), DDIM1: run_ddim(1.0, "uniform"), DDPM: run_ddpm}
    if quadratic:
        out[DDIM0_QUADRATIC] = run_ddim(0.0, "quadratic")
    return out


@torch.no_grad()
def naive_skip_sample(
    model: Model, x_T: torch.Tensor, schedule: DiscreteSchedule, n_steps: int, seed: int = 0
) -> SampleResult:
    """The *wrong* way to sample with fewer steps, for the chapter's motivation: DDPM's
    one-step update of step ``t`` (Algorithm 2 with the full schedule's ``beta_t``),

    ``x <- mu_tilde(x0_hat(x, t), x, t) + sqrt(beta_t) z``,

    applied only at the strided steps ``tau_S > ... > tau_1`` of ``ddim.timesteps(T, S)``,
    as if each of them were one step of the chain. Each update removes only the noise
    of *one* step (``~ beta_t``), so after ``S << T`` updates the samples are still
    almost pure noise. (The right way, :func:`course_lib.schedules.respace`, recomputes
    the betas of the strided chain.)
    """
    grid = ddim.timesteps(schedule.T, n_steps).tolist()
    g = _generator(x_T, seed)
    x = x_T
    for t in reversed(grid):
        pred = ddpm.predict(model, x, t, schedule)
        x = ddpm.q_posterior(pred.x0, x, t, schedule).mean
        if t > 1:
            x = x + math.sqrt(float(schedule.beta[t])) * randn_like(x, g)
    return SampleResult(x=x, nfe=len(grid))


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Entry:
    """One cell of a quality-vs-steps table: the quality of ``n`` samples drawn in
    ``seconds``, and the samples themselves ``x`` (on the CPU)."""

    quality: float
    seconds: float
    n: int
    x: torch.Tensor = field(repr=False)

    @property
    def per_second(self) -> float:
        """Sampler throughput in samples per second."""
        return self.n / self.seconds if self.seconds > 0 else float("inf")


Table = dict[str, dict[int, Entry]]


def quality_vs_steps(
    sampler_fns: Mapping[str, Sampler],
    steps: Sequence[int] | Mapping[str, Sequence[int]],
    metric: Callable[[torch.Tensor], float],
) -> Table:
    """Run every sampler at every number of steps and measure its samples (DDIM's
    Table 1: rows are samplers, columns are numbers of steps).

    Args:
        sampler_fns: ``name -> (steps -> samples)``, e.g. :func:`samplers`.
        steps: the numbers of steps, one list for all samplers or one per sampler
            (a sampler missing from the mapping is not run).
        metric: ``samples -> quality`` (lower is better: an MMD, an FID).

    Returns:
        ``table[name][steps]`` = :class:`Entry` with the quality, the wall time of the
        sampler alone (not of the metric) and the samples.
    """
    table: Table = {}
    for name, fn in sampler_fns.items():
        todo = steps.get(name, []) if isinstance(steps, Mapping) else steps
        row: dict[int, Entry] = {}
        for s in todo:
            start = time.perf_counter()
            x = fn(int(s))
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            seconds = time.perf_counter() - start
            x = x.detach().cpu()
            row[int(s)] = Entry(float(metric(x)), seconds, x.shape[0], x)
        if row:
            table[name] = row
    return table


def format_table(
    table: Table,
    floor: float | None = None,
    digits: int = 4,
    label: str = "sampler",
) -> str:
    """The table as aligned text: one row per sampler, one column per number of steps
    (``—`` where a sampler was not run), and the floor (if given) as a last line."""
    cols = sorted({s for row in table.values() for s in row})
    width = max(len(label), *(len(name) for name in table))
    cell = max(digits + 6, 9)
    lines = [f"{label:<{width}} | " + " | ".join(f"{s:>{cell}d}" for s in cols)]
    lines.append("-" * len(lines[0]))
    for name, row in table.items():
        values = [
            f"{row[s].quality:>{cell}.{digits}g}" if s in row else f"{'—':>{cell}}" for s in cols
        ]
        lines.append(f"{name:<{width}} | " + " | ".join(values))
    if floor is not None:
        lines.append(f"{'floor (two samples of the truth)':<{width}} | {floor:>{cell}.{digits}g}")
    return "\n".join(lines)


_STYLES = {
    DDIM0: dict(color=plotting.COLORS["model"], marker="o"),
    DDIM1: dict(color=plotting.COLORS["init"], marker="s"),
    DDPM: dict(color=plotting.COLORS["truth"], marker="^"),
    DDIM0_QUADRATIC: dict(color=plotting.COLORS["model"], marker="o", ls="--", mfc="white"),
}


def plot_quality_vs_steps(
    table: Table,
    ax: Axes | None = None,
    floor: float | None = None,
    title: str = "quality vs number of steps",
    ylabel: str = "MMD to the target (lower is better)",
) -> Axes:
    """Quality against the number of steps (log-log), one line per sampler, with the
    floor as a dashed grey line."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.0))
    for name, row in table.items():
        s = sorted(row)
        ax.plot(s, [row[k].quality for k in s], label=name, **_STYLES.get(name, {}))
    if floor is not None:
        ax.axhline(floor, color=plotting.COLORS["data"], ls="--", label="floor")
    ax.set(xscale="log", yscale="log", xlabel="number of steps S (network calls)", ylabel=ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


# ------------------------------------------------------------------ the widget
def ddim_panel(
    model: Model,
    schedule: DiscreteSchedule,
    data: torch.Tensor,
    steps: int = 20,
    eta: float = 0.0,
    grid: str = "uniform",
    n: int = 500,
    n_paths: int = 30,
    seed: int = 0,
) -> Figure:
    """The widget of chapter 4: sample a 2D model with DDIM for a number of steps, an
    ``eta`` and a grid (``"uniform"`` or ``"quadratic"``), all from the same noise.

    Left: the samples over the data, titled with their MMD to ``data``. Right: the
    paths of ``n_paths`` of them from ``x_T`` (green) to ``x_0`` (blue), at most about
    sixty recorded states each.
    """
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, data.shape[1], generator=g)
    res = ddim.ddim_sample(
        model,
        x_T,
        schedule,
        ddim.timesteps(schedule.T, steps, grid),
        eta=eta,
        generator=g,
        keep=max(1, steps // 60),
    )
    quality = metrics.mmd(res.x, data)
    fig, (left, right) = plotting.figure_row(2)
    plotting.scatter(
        res.x.clamp(-3, 3),
        data=data,
        ax=left,
        label="DDIM samples",
        title=f"{steps} steps, η = {eta:g}, {grid} grid\nMMD to the data {quality:.4f}",
    )
    plotting.trajectories(
        res.trajectory.clamp(-3, 3), ax=right, title=f"paths of {n_paths} samples", n=n_paths
    )
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ time grids
def plot_time_grids(schedule: DiscreteSchedule, n_steps: int = 10) -> Figure:
    """The uniform and quadratic grids of :func:`course_lib.ddim.timesteps` for
    ``n_steps`` steps: left, the steps ``tau_i`` against ``i``; right, where they fall on
    the schedule's log-SNR curve ``log(alpha_bar_t / (1 - alpha_bar_t))``."""
    fig, (left, right) = plotting.figure_row(2, size=4.4)
    t_all = torch.arange(1, schedule.T + 1)
    right.plot(t_all, schedule.log_snr[1:], color=plotting.COLORS["data"], lw=1, label="log-SNR")
    for kind, color, marker in [
        ("uniform", plotting.COLORS["model"], "o"),
        ("quadratic", plotting.COLORS["truth"], "s"),
    ]:
        tau = ddim.timesteps(schedule.T, n_steps, kind)
        i = torch.arange(1, n_steps + 1)
        left.plot(i, tau, marker=marker, color=color, label=kind)
        right.plot(tau, schedule.log_snr[tau], marker, color=color, label=f"{kind} grid")
    left.set(title=f"{n_steps}-step grids", xlabel="sampling step i", ylabel="training step τ_i")
    right.set(
        title="the same steps on the log-SNR curve",
        xlabel="training step t",
        ylabel="log SNR = log(ᾱ_t / (1 − ᾱ_t))",
    )
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------ inversion, interpolation
@dataclass(frozen=True)
class InversionRow:
    """Invert with ``steps`` DDIM steps and decode with the same grid: the root mean
    square error per coordinate, the latents' standard deviation, the reconstructions."""

    steps: int
    rmse: float
    latent_std: float
    reconstruction: torch.Tensor = field(repr=False)


def inversion_study(
    model: Model,
    x0: torch.Tensor,
    schedule: DiscreteSchedule,
    steps_list: Sequence[int],
    eps_at: str = "source",
) -> list[InversionRow]:
    """For each number of steps ``S``: ``x_T = ddim_invert(x0)`` (with the network
    evaluated where ``eps_at`` says, see :func:`course_lib.ddim.ddim_invert`) then
    ``x0' = ddim_sample(x_T, eta = 0)`` on the same uniform grid, and the error
    ``sqrt(mean (x0' - x0)^2)`` averaged over the batch."""
    rows = []
    for s in steps_list:
        z = ddim.ddim_invert(model, x0, schedule, int(s), eps_at=eps_at).x
        back = ddim.ddim_sample(model, z, schedule, int(s)).x
        rmse = (back - x0).flatten(1).pow(2).mean(1).sqrt().mean()
        rows.append(InversionRow(int(s), float(rmse), float(z.std()), back.detach().cpu()))
    return rows


def interpolation_norms(
    z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms ``||z(alpha)||`` along the straight line ``(1 - alpha) z0 + alpha z1`` and
    along :func:`course_lib.ddim.slerp`, each ``(n, B)`` for ``alpha`` of shape ``(n,)``
    and latents ``(B, ...)``."""
    a = alpha.to(z0).reshape(-1, *([1] * z0.ndim))
    lerp = (1 - a) * z0 + a * z1
    slerp = ddim.slerp(z0, z1, alpha.to(z0))
    return lerp.flatten(2).norm(dim=2), slerp.flatten(2).norm(dim=2)


@dataclass(frozen=True)
class LerpAndSlerp:
    """Decoded interpolants ``(n, B, ...)`` along slerp and along the straight line
    between the same two latents, and the weights ``alpha`` ``(n,)``."""

    slerp: torch.Tensor
    lerp: torch.Tensor
    z_slerp: torch.Tensor
    z_lerp: torch.Tensor
    alpha: torch.Tensor


@torch.no_grad()
def lerp_and_slerp(
    model: Model,
    x0_a: torch.Tensor,
    x0_b: torch.Tensor,
    schedule: DiscreteSchedule,
    steps: int = 50,
    n: int = 8,
) -> LerpAndSlerp:
    """:func:`course_lib.ddim.interpolate` (invert, slerp, decode) beside the straight
    line ``(1 - alpha) z_a + alpha z_b`` between the *same* latents, decoded the same way."""
    interp = ddim.interpolate(model, x0_a, x0_b, schedule, steps, n)
    z_a, z_b = interp.z[0], interp.z[-1]  # slerp at alpha = 0 and 1: the two latents
    a = interp.alpha.reshape(-1, *([1] * z_a.ndim))
    z_lerp = (1 - a) * z_a + a * z_b  # (n, B, ...)
    flat = z_lerp.reshape(-1, *z_a.shape[1:])
    lerp = ddim.ddim_sample(model, flat, schedule, steps).x.reshape(z_lerp.shape)
    return LerpAndSlerp(interp.x, lerp, interp.z, z_lerp, interp.alpha)


# ------------------------------------------------------------------ images
def fid_floor(
    fid: Callable[[torch.Tensor], float],
    images: torch.Tensor,
    n: int,
    repeats: int = 5,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """The FID that ``n`` *real* images get (mean and standard deviation over
    ``repeats`` random subsets of ``images``): what a perfect sampler would score with
    ``n`` samples. FID is biased upwards at small ``n``, so every entry of a table must
    use the same ``n`` and be read against this floor."""
    values = []
    for _ in range(repeats):
        idx = torch.randperm(images.shape[0], generator=generator)[:n]
        values.append(fid(images[idx.to(images.device)]))
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if repeats > 1 else 0.0
