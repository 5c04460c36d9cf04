"""Couplings for flow matching: which noise sample is paired with which data point.

Conditional flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling";
Tong et al. 2023, "Improving and generalizing flow-based generative models with minibatch
optimal transport") trains on pairs ``(x0, x1)`` with ``x0`` noise (``t = 0``) and ``x1``
data (``t = 1``). A *coupling* is a joint law ``pi(x0, x1)`` with the right marginals; in a
minibatch it decides how the ``B`` noise samples are matched with the ``B`` data points.

* :func:`independent` keeps the product coupling ``q0(x0) q1(x1)`` (I-CFM).
* :func:`minibatch_ot` re-pairs the batch by an exact optimal assignment for the squared
  Euclidean cost (OT-CFM, Tong et al. 2023, Sec. 3.2 and Alg. 1).

For Gaussians the population optimum is known in closed form (:func:`gaussian_w2_squared`,
:func:`gaussian_ot_map`), which the tests use as ground truth for the minibatch estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.optimize
import torch

__all__ = [
    "COUPLINGS",
    "Coupling",
    "gaussian_ot_map",
    "gaussian_w2_squared",
    "get_coupling",
    "independent",
    "minibatch_ot",
    "ot_assignment",
    "transport_cost",
]

Coupling = Callable[
    [torch.Tensor, torch.Tensor, torch.Generator | None], tuple[torch.Tensor, torch.Tensor]
]
"""A coupling takes ``x0`` (B, ...) and ``x1`` (B, ...) and returns the re-paired ``(x0, x1)``."""


def _check_pair(x0: torch.Tensor, x1: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x0`` and ``x1`` are batches of the same size and shape."""
    if x0.ndim < 1 or x1.ndim < 1:
        raise ValueError(
            f"x0 and x1 must have a batch dimension, got shapes {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        )
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"x0 and x1 must have the same batch size, got shapes {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        )
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"x0 and x1 must have the same trailing shape, got shapes {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        )


def independent(
    x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product coupling ``pi(x0, x1) = q0(x0) q1(x1)``: return the pairs unchanged.

    Independent draws of ``x0`` and ``x1`` already sample the product law, so this is the
    coupling of I-CFM (Tong et al. 2023, Sec. 3.1) and of Lipman et al. (2023), Eq. (21) with
    ``sigma_min = 0``. ``generator`` is unused; it is accepted to match :data:`Coupling`.
    """
    _check_pair(x0, x1)
    return x0, x1


def _cost_matrix(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """Float64 matrix ``M[i, j] = ||x0[i] - x1[j]||^2`` (trailing dims flattened), on the CPU.

    Uses ``||a||^2 + ||b||^2 - 2 a.b`` so the memory is ``O(B^2 + B D)``, not ``O(B^2 D)``; in
    float64 the cancellation error is about ``1e-16 * ||a||^2``, clamped at zero.
    """
    a = x0.detach().reshape(x0.shape[0], -1).to(device="cpu", dtype=torch.float64)
    b = x1.detach().reshape(x1.shape[0], -1).to(device="cpu", dtype=torch.float64)
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return cost.clamp_min(0.0).numpy()


def ot_assignment(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Optimal assignment ``perm`` minimising ``sum_i ||x0[i] - x1[perm[i]]||^2``.

    This is the discrete Monge problem between the two empirical measures with uniform
    weights ``1/B``. By Birkhoff's theorem an optimal plan of the Kantorovich linear program
    can be taken to be a permutation matrix, so it is solved exactly by the Hungarian-type
    algorithm of :func:`scipy.optimize.linear_sum_assignment` on the float64 squared-distance
    cost matrix (trailing dimensions flattened).

    Returns:
        A ``LongTensor`` of shape ``(B,)`` on ``x1.device``; the pairs are
        ``(x0[i], x1[perm[i]])``.

    Raises:
        ValueError: if the batch sizes or trailing shapes differ, or a cost is not finite.
    """
    _check_pair(x0, x1)
    cost = _cost_matrix(x0, x1)
    if not np.isfinite(cost).all():
        raise ValueError("the cost matrix has non-finite entries (NaN or inf in x0 or x1)")
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    # For a square matrix ``rows`` is arange(B), so ``cols`` is the permutation itself.
    perm = np.empty(cost.shape[0], dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x1.device)


def minibatch_ot(
    x0: torch.Tensor, x1: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact minibatch OT coupling: return ``(x0, x1[perm])`` with ``perm = ot_assignment``.

    This is OT-CFM (Tong et al. 2023, Sec. 3.2, Alg. 1) with the squared Euclidean cost, except
    that the pairs are the exact optimal assignment rather than ``B`` draws from the OT plan.
    With uniform weights and equal batch sizes the plan is ``1/B`` times a permutation matrix
    (Birkhoff), so the assignment *is* the plan, with every point used exactly once.

    Two bugs this avoids:

    * Sampling ``B`` pairs from the plan *with replacement* (as a well-known implementation
      does) duplicates some points and drops others, so the batch no longer has the right
      marginals and its cost is not the OT cost.
    * Applying the permutation to the wrong side, ``(x0[perm], x1)``, pairs ``x0[perm[i]]``
      with ``x1[i]``, i.e. uses the inverse permutation; that is not optimal in general.

    ``generator`` is unused (the assignment is deterministic up to ties); it is accepted to
    match :data:`Coupling`.
    """
    perm = ot_assignment(x0, x1)
    return x0, x1[perm]


def transport_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """Mean squared distance of the pairs, ``(1/B) sum_i ||x0[i] - x1[i]||^2`` (flattened)."""
    _check_pair(x0, x1)
    diff = (x0.detach().to(torch.float64) - x1.detach().to(torch.float64)).reshape(x0.shape[0], -1)
    return float((diff * diff).sum(1).mean())


COUPLINGS: dict[str, Coupling] = {"independent": independent, "ot": minibatch_ot}


def get_coupling(name: str) -> Coupling:
    """Return the coupling registered as ``name`` in :data:`COUPLINGS`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return COUPLINGS[name]
    except KeyError:
        valid = ", ".join(sorted(COUPLINGS))
        raise ValueError(f"unknown coupling {name!r}; valid names: {valid}") from None


def _as_f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix via ``eigh``, negative eigenvalues clamped to 0."""
    c = 0.5 * (c + c.T)
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def gaussian_w2_squared(
    m0: torch.Tensor, C0: torch.Tensor, m1: torch.Tensor, C1: torch.Tensor
) -> float:
    """Squared 2-Wasserstein distance between ``N(m0, C0)`` and ``N(m1, C1)``.

    ``W2^2 = ||m0 - m1||^2 + tr(C0 + C1 - 2 (C1^{1/2} C0 C1^{1/2})^{1/2})`` (Dowson & Landau
    1982; Olkin & Pukelsheim 1982; Peyré & Cuturi 2019, "Computational Optimal Transport",
    Remark 2.31). Computed in float64 with PSD square roots from ``eigh``.
    """
    m0, C0, m1, C1 = (_as_f64(v) for v in (m0, C0, m1, C1))
    s1 = _psd_sqrt(C1)
    cross = _psd_sqrt(s1 @ C0 @ s1)
    value = ((m0 - m1) ** 2).sum() + torch.trace(C0 + C1 - 2.0 * cross)
    return max(float(value), 0.0)


def gaussian_ot_map(
    m0: torch.Tensor, C0: torch.Tensor, m1: torch.Tensor, C1: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Optimal (Monge) map from ``N(m0, C0)`` to ``N(m1, C1)`` for the squared Euclidean cost.

    ``T(x) = m1 + A (x - m0)`` with ``A = C0^{-1/2} (C0^{1/2} C1 C0^{1/2})^{1/2} C0^{-1/2}``
    (Peyré & Cuturi 2019, Remark 2.31). ``A`` is symmetric PSD, hence ``T`` is the gradient of
    a convex function (Brenier), and ``A C0 A = C1``. ``C0`` must be positive definite. The map
    acts on rows of ``x`` (shape ``(N, d)``) and returns ``x``'s dtype and device.
    """
    m0, C0, m1, C1 = (_as_f64(v) for v in (m0, C0, m1, C1))
    evals, evecs = torch.linalg.eigh(0.5 * (C0 + C0.T))
    if evals.min() <= 0:
        raise ValueError("C0 must be positive definite for the Gaussian OT map")
    s0 = (evecs * evals.sqrt()) @ evecs.T
    s0_inv = (evecs / evals.sqrt()) @ evecs.T
    A = s0_inv @ _psd_sqrt(s0 @ C1 @ s0) @ s0_inv
    A = 0.5 * (A + A.T)

    def T(x: torch.Tensor) -> torch.Tensor:
        y = m1.to(x.device) + (x.to(torch.float64) - m0.to(x.device)) @ A.to(x.device).T
        return y.to(x.dtype)

    return T
