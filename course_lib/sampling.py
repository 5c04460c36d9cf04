"""What every sampler returns, and how it records its trajectory.

Samplers in the course are pure functions of ``(model or score, x_init, grid, knobs,
generator)``; each returns a :class:`SampleResult`. With ``keep`` set, the result also
holds the intermediate states (every ``keep``-th step, plus the first and the last) for
plots and animations; without it, nothing but the final samples is kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleResult:
    """Samples and, optionally, their path.

    Attributes:
        x: final samples, ``(B, ...)``.
        trajectory: ``(S, B, ...)`` recorded states, first = ``x_init``, last = ``x``;
            ``None`` unless asked for.
        times: the time (or noise level) of each recorded state, ``(S,)``.
        nfe: number of model evaluations used.
        info: sampler-specific figures (e.g. MALA's acceptance rate).
    """

    x: torch.Tensor
    trajectory: torch.Tensor | None = None
    times: torch.Tensor | None = None
    nfe: int = 0
    info: dict[str, float] = field(default_factory=dict)


class Recorder:
    """Collects every ``keep``-th state of a sampler (``keep=None``: none)."""

    def __init__(self, keep: int | None) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be a positive step interval or None, got {keep}")
        self.keep = keep
        self.states: list[torch.Tensor] = []
        self.times: list[float] = []
        self._step = 0

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor, last: bool = False) -> None:
        if self.keep is not None and (self._step % self.keep == 0 or last):
            self.states.append(x.detach().cpu().clone())
            self.times.append(float(t))
        self._step += 1

    def result(self, x: torch.Tensor, nfe: int, **info: float) -> SampleResult:
        traj = torch.stack(self.states) if self.states else None
        times = torch.tensor(self.times) if self.states else None
        return SampleResult(x=x, trajectory=traj, times=times, nfe=nfe, info=dict(info))
