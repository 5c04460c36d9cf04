"""Chapter 7's studies: the estimator's variance, the solver's tolerance, likelihoods
against the exact answer, and the NFE a CNF costs during training. Every function here
measures; the mathematics lives in :mod:`course_lib.cnf`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import nn

from course_lib import cnf


@dataclass(frozen=True)
class HutchinsonRow:
    """One probe distribution: the empirical mean and variance of ``εᵀ A ε`` over
    ``n`` probes, beside ``tr A`` and the closed-form variance."""

    probe: str
    mean: float
    variance: float
    trace: float
    closed_form: float
    n: int


def hutchinson_rows(a: torch.Tensor, n: int, generator: torch.Generator) -> list[HutchinsonRow]:
    """Draw ``n`` probes of each kind and measure Hutchinson's estimate of ``tr A``."""
    rows = []
    for probe in cnf.PROBES:
        e = cnf.draw_probe((n, a.shape[0]), probe, generator, a.dtype)
        v = ((e @ a) * e).sum(1)
        rows.append(
            HutchinsonRow(
                probe,
                float(v.mean()),
                float(v.var()),
                float(torch.trace(a)),
                cnf.hutchinson_variance(a, probe),
                n,
            )
        )
    return rows


@dataclass(frozen=True)
class ToleranceRow:
    """An adaptive solve at tolerance ``tol``: the largest error of ``log p`` against the
    exact answer, the NFE and the wall time."""

    tol: float
    max_error: float
    nfe: int
    seconds: float


def tolerance_study(
    net: nn.Module,
    x: torch.Tensor,
    log_p_true: torch.Tensor,
    tolerances: Sequence[float],
    method: str = "dopri5",
) -> list[ToleranceRow]:
    """:func:`course_lib.cnf.log_prob` (exact divergence) at each ``rtol = atol = tol``."""
    rows = []
    for tol in tolerances:
        start = time.perf_counter()
        with torch.no_grad():
            res = cnf.log_prob(net, x, method=method, rtol=tol, atol=tol)
        secs = time.perf_counter() - start
        err = float((res.log_p.double() - log_p_true.double()).abs().max())
        rows.append(ToleranceRow(tol, err, res.nfe, secs))
    return rows


@dataclass(frozen=True)
class KLEstimate:
    """``KL(p‖q) = E_p[log p(x) - log q(x)]`` on given points: its mean, standard error,
    and the NFE of the solve that produced ``log q``."""

    kl: float
    se: float
    nfe: int


def kl_to_model(
    log_q: Callable[[torch.Tensor], tuple[torch.Tensor, int]],
    x: torch.Tensor,
    log_p_true: torch.Tensor,
) -> KLEstimate:
    """Estimate ``KL(p‖q)`` for the model ``log_q(x) -> (log q, nfe)`` on data ``x`` with
    the exact ``log p``: the same points in both terms, so only the noise of the
    difference counts."""
    lq, nfe = log_q(x)
    diff = log_p_true.double() - lq.double()
    return KLEstimate(float(diff.mean()), float(diff.std() / math.sqrt(len(diff))), nfe)


def cnf_log_q(
    net: nn.Module, rtol: float = 1e-5, atol: float = 1e-5
) -> Callable[[torch.Tensor], tuple[torch.Tensor, int]]:
    """``x -> (log q(x), nfe)`` of a CNF or flow network, exact divergence, dopri5."""

    def log_q(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            res = cnf.log_prob(net, x, rtol=rtol, atol=atol)
        return res.log_p, res.nfe

    return log_q


def plot_nfe_history(
    histories: Mapping[str, Sequence[int]], ax: Axes | None = None, window: int = 10
) -> Axes:
    """The NFE of each training step's forward solve (moving average), one line per run."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    for label, nfe in histories.items():
        v = np.asarray(nfe, dtype=float)
        if len(v) >= window:
            v = np.convolve(v, np.ones(window) / window, mode="valid")
        ax.plot(v, label=label)
    ax.set(xlabel="training step", ylabel="NFE of the forward solve", title="NFE during training")
    ax.legend(fontsize=8)
    return ax
