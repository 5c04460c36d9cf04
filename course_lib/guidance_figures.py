"""Chapter 8's studies: what guided samplers sample, measured against exact densities of a
:class:`course_lib.guidance.LabelledMixture`. Every function measures; the mathematics
lives in :mod:`course_lib.guidance`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from course_lib import guidance, metrics

LogProb = Callable[[torch.Tensor], torch.Tensor]


def tilted_log_prob(
    lm: guidance.LabelledMixture,
    y: int,
    w: float,
    lim: tuple[float, float] = (-4.0, 4.0),
    n: int = 400,
) -> LogProb:
    """``x -> log p_w(x | y)`` for the tilted density ``p(x|y)^{1+w} p(x)^{-w} / Z`` at the
    data level, with ``Z`` computed on an ``n × n`` grid over ``lim²`` (the density must put
    its mass inside the box; the mixtures of the course do)."""
    g = torch.linspace(lim[0], lim[1], n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    area = float((g[1] - g[0]) ** 2)
    log_z = float(torch.logsumexp(lm.tilted_log_density(grid, y, w), 0)) + math.log(area)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        return lm.tilted_log_density(x.double(), y, w) - log_z

    return log_prob


@dataclass(frozen=True)
class GuidanceRow:
    """Guided samples at strength ``w``: their KL divergence (chapter 5's yardstick) to the
    tilted density and to ``p(x | y)``, the fraction classified ``y`` by the exact
    classifier, and their entropy (a diversity measure, nats)."""

    w: float
    kl_tilted: float
    kl_conditional: float
    in_class: float
    entropy: float


def guidance_study(
    lm: guidance.LabelledMixture,
    y: int,
    draw: Callable[[float], torch.Tensor],
    ws: Sequence[float],
) -> list[GuidanceRow]:
    """For each ``w``, draw guided samples with ``draw(w)`` and measure a
    :class:`GuidanceRow` against the exact densities."""
    conditional = lm.conditional(y).log_prob
    rows = []
    for w in ws:
        x = draw(w).detach().double().cpu()
        in_class = float((lm.classify(x) == y).double().mean())
        rows.append(
            GuidanceRow(
                float(w),
                metrics.kl_divergence(x, tilted_log_prob(lm, y, w)),
                metrics.kl_divergence(x, conditional),
                in_class,
                metrics.knn_entropy(x),
            )
        )
    return rows


def format_guidance_rows(rows: Sequence[GuidanceRow]) -> str:
    """The study as a text table."""
    lines = [f"{'w':>6} {'KL to tilted':>13} {'KL to p(x|y)':>13} {'in class':>9} {'entropy':>8}"]
    for r in rows:
        lines.append(
            f"{r.w:>6.2f} {r.kl_tilted:>13.3f} {r.kl_conditional:>13.3f} {r.in_class:>9.3f} "
            f"{r.entropy:>8.3f}"
        )
    return "\n".join(lines)
