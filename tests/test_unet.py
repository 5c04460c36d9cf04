"""Tests for the image U-Net in :mod:`course_lib.unet` (tiny nets, CPU, a few seconds)."""

from __future__ import annotations

import pytest
import torch

from course_lib import nets, unet
from course_lib.nets import count_parameters
from course_lib.unet import UNet

TINY = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter: the zero-initialised convs would hide t, y and gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((2, 1, 28, 28), dict(base_channels=16)),
        ((2, 1, 28, 28), dict(base_channels=16, attention_levels=(), num_res_blocks=2)),
        ((2, 1, 28, 28), dict(base_channels=16, channel_mults=(1, 2), attention_levels=(0, 1))),
        ((2, 3, 32, 32), dict(in_channels=3, base_channels=16, num_res_blocks=2)),
        ((2, 3, 32, 32), dict(in_channels=3, base_channels=16, channel_mults=(1, 2, 2, 2))),
        ((2, 3, 32, 32), dict(in_channels=3, out_channels=6, **TINY, num_heads=2)),
    ],
)
def test_output_shape(shape: tuple[int, ...], kwargs: dict) -> None:
    model = UNet(**kwargs)
    out = model(torch.randn(shape), torch.rand(shape[0]))
    out_ch = kwargs.get("out_channels", shape[1])
    assert out.shape == (shape[0], out_ch, *shape[2:])


def test_zero_init_and_scalar_t() -> None:
    model = UNet(**TINY)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x, torch.tensor(0.5)), torch.zeros_like(x))


def test_time_and_class_conditioning_matter() -> None:
    torch.manual_seed(0)
    model = _randomise(UNet(**TINY, num_classes=10)).eval()
    x = torch.randn(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        a = model(x, torch.full((4,), 0.1), y)
        b = model(x, torch.full((4,), 0.9), y)
        c = model(x, torch.full((4,), 0.1), (y + 5) % 10)
        null = model(x, torch.full((4,), 0.1))  # y=None: the "null" class
    for other in (b, c, null):
        assert (a - other).abs().max() > 1e-3


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    kwargs = dict(TINY, num_res_blocks=2, attention_levels=(0, 1), num_classes=3)
    model = _randomise(UNet(**kwargs))
    x, t, y = torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([0, 2])
    model(x, t, y).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_can_fit_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = UNet(**TINY, attention_levels=())
    x, t = torch.randn(8, 1, 28, 28), torch.rand(8)
    tt = t[:, None, None, None]  # (8, 1, 1, 1)
    target = torch.cos(3 * tt) * x + tt  # needs both x and t
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_bad_inputs_raise() -> None:
    model = UNet(base_channels=16)  # 3 levels: sizes divisible by 4
    with pytest.raises(ValueError, match=r"divisible by 4.*28 or 32.*pad"):
        model(torch.randn(1, 1, 30, 30), torch.rand(1))
    with pytest.raises(ValueError, match=r"x of shape \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 28, 28), torch.rand(1))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.randn(2, 1, 28, 28), torch.rand(3))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.randn(2, 1, 28, 28), torch.rand(2, 1))
    with pytest.raises(ValueError, match="num_classes"):
        model(torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channel_mults=(1, 2), attention_levels=(2,))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_bf16_autocast_and_channels_last() -> None:
    torch.manual_seed(0)
    model = _randomise(UNet(in_channels=3, **TINY)).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    with torch.no_grad():
        ref = model(x, t)
        out_cl = model.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last), t
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x.to(memory_format=torch.channels_last), t)
    assert out_cl.shape == out_bf16.shape == ref.shape
    assert _rel_err(out_cl, ref) < 1e-4
    assert torch.isfinite(out_bf16.float()).all()
    assert _rel_err(out_bf16, ref) < 5e-2


def test_batch_independence() -> None:
    torch.manual_seed(0)
    model = _randomise(UNet(**TINY, num_classes=4)).eval()
    x, t, y = torch.randn(4, 1, 28, 28), torch.rand(4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        batch = model(x, t, y)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)


def test_traces_without_graph_breaks() -> None:
    # fullgraph=True fails on any graph break; the eager backend keeps the test fast.
    model = UNet(**TINY)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    torch.testing.assert_close(compiled(x, t), model(x, t))


def test_reexport_and_parameter_count() -> None:
    assert nets.UNet is unet.UNet
    # Documented in the module docstring of course_lib.unet: 1,302,209 for the MNIST default.
    assert 1.2e6 < count_parameters(UNet()) < 1.4e6
