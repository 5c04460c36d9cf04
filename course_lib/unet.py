"""A small time-conditioned U-Net for 28x28 (MNIST) and 32x32 (CIFAR-10) images.

The architecture follows DDPM (Ho et al. 2020) and improved DDPM (Nichol & Dhariwal
2021), which build on the U-Net of Ronneberger et al. (2015) and PixelCNN++. An input
conv lifts the image to ``base_channels``; the *down path* then runs, at each resolution
level, ``num_res_blocks`` residual blocks (plus self-attention at ``attention_levels``)
and halves the resolution with a strided conv (28 -> 14 -> 7). A *middle* block
(res, attention, res) works at the coarsest resolution; the *up path* mirrors the down
path, doubling the resolution and concatenating the saved down-path activations (the
skip connections) so fine detail need not squeeze through the bottleneck. The time ``t``
(and, optionally, a class label) is embedded once and fed to every residual block, which
uses it to scale and shift its normalised features (FiLM, as in improved DDPM). The last
conv of every residual branch and the output conv start at zero, so a fresh net outputs 0.

With the defaults (``in_channels=1``) the net has 1,302,209 parameters; the CIFAR-10 config
``UNet(3, base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2)`` has 10,036,675.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.nets import TimeEmbedding


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer, so the residual branch it ends starts as 0 (DDPM's init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``x + conv(SiLU(FiLM(GroupNorm(conv(SiLU(GroupNorm(x))))))``, with FiLM from ``emb``.

    FiLM: the embedding is projected to a per-channel ``(scale, shift)`` and the second
    GroupNorm's output becomes ``norm(h) * (1 + scale) + shift`` (improved DDPM).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))  # (B, out, H, W)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` pixels, as a residual branch."""

    def __init__(self, ch: int, groups: int, num_heads: int = 1):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"{ch} channels cannot be split into {num_heads} heads")
        self.heads = num_heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # 3 x (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class _Stage(nn.Module):
    """A residual block followed by self-attention (or nothing)."""

    def __init__(self, res: ResBlock, attn: nn.Module):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 conv (``emb`` is accepted and ignored)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)  # (B, ch, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2 then a 3x3 conv (avoids checkerboards)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, ch, 2H, 2W)


class UNet(nn.Module):
    """DDPM-style U-Net, called as ``model(x, t)`` or ``model(x, t, y)``.

    Args:
        in_channels: image channels (1 for MNIST, 3 for CIFAR-10).
        out_channels: output channels (default ``in_channels``).
        base_channels: width of the first level.
        channel_mults: level ``i`` has ``base_channels * channel_mults[i]`` channels; every
            level but the last halves H and W, so H, W must be divisible by
            ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level in the down path (up path: one more).
        attention_levels: indices of the levels that get self-attention; the middle block
            has attention unless this is ``()`` (no attention at all).
        dropout: dropout rate inside the residual blocks.
        time_scale: the net embeds ``time_scale * t``, see :class:`TimeEmbedding`.
        num_classes: if set, a label embedding is added to the time embedding; label
            ``num_classes`` is the "null" class (used when ``y`` is None), for
            classifier-free guidance.
        groups: GroupNorm groups; every level's width must be divisible by it.
        num_heads: attention heads.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (1,),
        dropout: float = 0.0,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
        groups: int = 8,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        levels = len(channel_mults)
        if any(not 0 <= i < levels for i in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must lie in 0..{levels - 1}")
        self.in_channels, self.num_classes, self.levels = in_channels, num_classes, levels
        self.factor = 2 ** (levels - 1)  # total downsampling
        emb_dim = 4 * base_channels  # DDPM's time-embedding width
        self.time_embed = TimeEmbedding(emb_dim, scale=time_scale)
        # One extra row: label ``num_classes`` is the "null" class of classifier-free guidance.
        self.label_embed = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)

        def stage(cin: int, cout: int, level: int) -> _Stage:
            attn = AttentionBlock(cout, groups, num_heads) if level in attention_levels else None
            return _Stage(ResBlock(cin, cout, emb_dim, dropout, groups), attn or nn.Identity())

        ch = base_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_chs = [ch]  # widths of the activations the up path will concatenate
        self.down = nn.ModuleList()
        for i, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(stage(ch, base_channels * mult, i))
                ch = base_channels * mult
                skip_chs.append(ch)
            if i < levels - 1:
                self.down.append(Downsample(ch))
                skip_chs.append(ch)

        mid_attn = AttentionBlock(ch, groups, num_heads) if attention_levels else nn.Identity()
        self.mid = _Stage(ResBlock(ch, ch, emb_dim, dropout, groups), mid_attn)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, groups)

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(stage(ch + skip_chs.pop(), base_channels * mult, i))
                ch = base_channels * mult
            if i > 0:
                self.up.append(Upsample(ch))

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch),
            nn.SiLU(),
            _zero(nn.Conv2d(ch, out_channels or in_channels, 3, padding=1)),
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        B, _, H, W = x.shape
        if H % self.factor or W % self.factor:
            raise ValueError(
                f"with {self.levels} levels H and W must be divisible by "
                f"{self.factor} (e.g. 28 or 32), got {H}x{W}: pad the images (F.pad) to a "
                f"multiple of {self.factor} or use fewer levels (shorter channel_mults)"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) or (), got {tuple(t.shape)}")

        emb = self.time_embed(t)  # (B, emb_dim)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise ValueError("y was given but the UNet was built without num_classes")

        hs = [self.conv_in(x)]  # (B, base, H, W)
        for block in self.down:
            hs.append(block(hs[-1], emb))
        h = self.mid2(self.mid(hs[-1], emb), emb)  # (B, ch, H/factor, W/factor)
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)  # (B, out_channels, H, W)
