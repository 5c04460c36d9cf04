"""Chapter 7: a discrete normalizing flow in one page — affine coupling layers (RealNVP,
Dinh, Sohl-Dickstein & Bengio 2017).

A normalizing flow is an invertible map ``x = f(z)`` from noise ``z ~ N(0, I)`` to data;
by the change of variables

    log p(x) = log N(f⁻¹(x); 0, I) + log |det ∂f⁻¹(x)/∂x|.

The whole design problem is a map that is expressive, invertible in closed form, and
has a cheap Jacobian determinant. An affine coupling layer keeps one part ``x_A`` of
the coordinates and transforms the rest with a scale and shift computed from it,

    y_A = x_A,    y_B = x_B ⊙ exp(s(x_A)) + t(x_A),

so the Jacobian is triangular, ``log |det ∂y/∂x| = Σ_j s_j(x_A)`` (Dinh et al. 2017,
eq. 6–8), and the inverse is ``x_B = (y_B - t(y_A)) ⊙ exp(-s(y_A))``. Stacking layers
with alternating masks lets every coordinate be transformed. A CNF (:mod:`course_lib.cnf`)
is the continuous-time limit: many infinitesimal steps, each with log-determinant
``-∇·v dt``, and no architectural constraint on ``v`` at all.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib import cnf


class AffineCoupling(nn.Module):
    """One affine coupling layer on ``(B, D)`` data; ``mask`` (``D`` booleans) marks the
    coordinates ``A`` that are kept and condition the others. The log-scale is
    ``scale_bound · tanh(·)``, bounded so that an untrained layer cannot blow up."""

    def __init__(
        self, dim: int, mask: torch.Tensor, hidden: int = 64, scale_bound: float = 2.0
    ) -> None:
        super().__init__()
        if mask.shape != (dim,) or mask.dtype != torch.bool or mask.all() or not mask.any():
            raise ValueError(
                f"mask must be {dim} booleans with both kept and transformed coordinates, "
                f"got {tuple(mask.shape)} {mask.dtype}"
            )
        self.register_buffer("mask", mask)
        self.scale_bound = scale_bound
        n_in, n_out = int(mask.sum()), int((~mask).sum())
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2 * n_out),
        )  # fmt: skip
        nn.init.zeros_(self.net[-1].weight)  # start at the identity map
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(x_a).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(s / self.scale_bound), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log|det ∂y/∂x|)`` per sample."""
        x_a, x_b = x[:, self.mask], x[:, ~self.mask]
        s, t = self._scale_shift(x_a)
        y = x.clone()
        y[:, ~self.mask] = x_b * torch.exp(s) + t
        return y, s.sum(1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log|det ∂x/∂y|)`` per sample: the exact inverse of :meth:`forward`."""
        y_a, y_b = y[:, self.mask], y[:, ~self.mask]
        s, t = self._scale_shift(y_a)
        x = y.clone()
        x[:, ~self.mask] = (y_b - t) * torch.exp(-s)
        return x, -s.sum(1)


class CouplingFlow(nn.Module):
    """``x = f(z)``: ``n_layers`` affine couplings with alternating masks (even
    coordinates kept, then odd, ...)."""

    def __init__(self, dim: int = 2, n_layers: int = 6, hidden: int = 64) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 dimensions, got {dim}")
        even = torch.arange(dim) % 2 == 0
        self.dim = dim
        self.layers = nn.ModuleList(
            AffineCoupling(dim, even if k % 2 == 0 else ~even, hidden) for k in range(n_layers)
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log|det ∂x/∂z|)``: noise to data."""
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det ∂z/∂x|)``: data to noise."""
        logdet = x.new_zeros(x.shape[0])
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(f⁻¹(x)) + log|det ∂f⁻¹/∂x|`` per sample."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (B, {self.dim}), got {tuple(x.shape)}")
        z, logdet = self.inverse(x)
        return cnf.standard_normal_log_prob(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``f(z)``, ``z ~ N(0, I)``."""
        p = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=p.dtype)
        return self(z.to(p.device))[0]
