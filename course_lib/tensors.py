"""Small tensor helpers shared by every method: one way to broadcast time.

Every model in the course is called as ``model(x, t)`` with ``x`` of shape ``(B, ...)``
and ``t`` of shape ``(B,)``. Formulas such as ``x_t = alpha_t * x0 + sigma_t * eps``
need ``alpha_t`` shaped ``(B, 1, ..., 1)``; :func:`expand_like` does exactly that.
"""

from __future__ import annotations

import torch


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``t`` of shape ``(B,)`` (or a scalar) to
    ``(B, 1, ..., 1)`` so that it broadcasts against ``x`` of shape ``(B, ...)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.reshape((1,) * x.ndim)
    if t.ndim != 1 or t.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"expected a time tensor of shape ({x.shape[0]},) for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(t.shape)}"
        )
    return t.reshape(t.shape[0], *((1,) * (x.ndim - 1)))


def batch_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A time given as a float or a scalar tensor, as a ``(B,)`` tensor for ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    return t


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``N(0, I)`` noise shaped like ``x``, drawn from ``generator`` when given (on the
    generator's device, then moved, so that a CPU generator also seeds GPU runs)."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def sq_norm(v: torch.Tensor) -> torch.Tensor:
    """``||v_b||^2`` per sample, shape ``(B,)``."""
    return v.reshape(v.shape[0], -1).pow(2).sum(1)
