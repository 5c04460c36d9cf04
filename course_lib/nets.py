"""Networks: a sinusoidal time / noise-level embedding and a time-conditioned MLP.

Every network is called the same way, ``model(x, t)``, with ``x`` of shape ``(B, D)``
(or ``(B, C, H, W)`` for images) and ``t`` of shape ``(B,)``. What ``t`` means (a
diffusion time, a noise level ``sigma``, a flow time) is up to the method that trains
the net; the net only embeds it. The image U-Net lives in :mod:`course_lib.unet` and
is re-exported here as ``nets.UNet``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style embedding of a scalar per sample (Vaswani et al. 2017; used
    for time in DDPM, Ho et al. 2020).

    ``emb[:, k] = cos(t * f_k)`` and ``emb[:, dim/2 + k] = sin(t * f_k)`` with
    frequencies ``f_k = max_period^(-k / (dim/2))``, ``k = 0 .. dim/2 - 1``.

    Args:
        t: shape ``(B,)``, any real values (scale them to roughly ``[0, 1000]``).
        dim: embedding width, even.
        max_period: the slowest period.

    Returns:
        Tensor of shape ``(B, dim)``.
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    # a float64 model (the CNF gradient checks) gets float64 features; others float32
    return emb.double() if t.dtype == torch.float64 else emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``scale * t`` followed by a two-layer MLP.

    ``scale`` maps the method's time range onto the embedding's: 1000 for ``t`` in
    ``[0, 1]``; for a noise level one usually embeds ``log(sigma) / 4`` (EDM's
    ``c_noise``) and passes ``scale=1000`` too.
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(self.scale * t, self.dim))  # (B, dim)


class MLP(nn.Module):
    """A time-conditioned MLP for 2D (or any ``D``-dimensional) data.

    ``h = SiLU(W_in x) + emb(t)``, then ``depth`` residual blocks
    ``h = h + W2 SiLU(W1 LayerNorm(h) + U emb(t))``, then ``W_out h``. The output has
    the shape of ``x``: it is a score, a noise prediction or a velocity, depending on
    what it is trained for.

    Args:
        dim: data dimension ``D``.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        time_scale: see :class:`TimeEmbedding`.
        out_dim: output dimension (default ``dim``).
        num_classes: if set, a label embedding is added to the time embedding; label
            ``num_classes`` is the "null" class of classifier-free guidance (used when
            ``y`` is None), as in :class:`course_lib.unet.UNet`.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        time_scale: float = 1000.0,
        out_dim: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.embed = TimeEmbedding(hidden, scale=time_scale)
        # one extra row: label ``num_classes`` is the null label
        self.label_embed = None if num_classes is None else nn.Embedding(num_classes + 1, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_dim or dim))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.embed(t)  # (B, hidden)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y).to(emb.dtype)
        elif y is not None:
            raise ValueError("y was given but the MLP was built without num_classes")
        h = self.inp(x) + emb
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)  # (B, out_dim)


class _ResBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.cond = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.silu(self.fc1(self.norm(h)) + self.cond(emb))
        return h + self.fc2(z)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def __getattr__(name: str) -> type:
    # Lazy re-export (PEP 562) of nets.UNet: unet.py imports TimeEmbedding from here, so a
    # top-level import would be circular.
    if name == "UNet":
        from course_lib.unet import UNet

        return UNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
