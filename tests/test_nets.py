import pytest
import torch

from course_lib import nets
from course_lib.tensors import batch_time, expand_like


def test_sinusoidal_embedding_formula():
    t = torch.tensor([0.0, 1.0, 5.0])
    emb = nets.sinusoidal_embedding(t, 8, max_period=100.0)
    freqs = 100.0 ** (-torch.arange(4) / 4)
    want = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1)
    assert torch.allclose(emb, want, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        nets.sinusoidal_embedding(t, 7)


def test_mlp_shapes_and_time_dependence():
    torch.manual_seed(0)
    model = nets.MLP(dim=2, hidden=32, depth=2)
    x = torch.randn(5, 2)
    out0, out1 = model(x, torch.zeros(5)), model(x, torch.ones(5))
    assert out0.shape == (5, 2)
    assert not torch.allclose(out0, out1)
    assert torch.allclose(model(x, torch.tensor(0.0)), out0)


def test_mlp_rejects_bad_shapes():
    model = nets.MLP(dim=2, hidden=16, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.randn(4, 2), torch.zeros(3))


def test_expand_like_and_batch_time():
    x = torch.zeros(4, 3, 5, 5)
    t = torch.arange(4.0)
    e = expand_like(t, x)
    assert e.shape == (4, 1, 1, 1) and torch.equal((x + e)[:, 2, 1, 1], t)
    assert batch_time(0.5, x).shape == (4,)
    with pytest.raises(ValueError, match="time tensor"):
        expand_like(torch.zeros(3), x)


def test_count_parameters():
    assert nets.count_parameters(torch.nn.Linear(3, 2)) == 8
