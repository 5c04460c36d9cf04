import pytest
import torch
from torch import nn

from course_lib import train


def linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    y = x @ w + 0.3
    return x, y, w


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_train_fits_a_linear_model():
    torch.manual_seed(0)
    x, y, w = linear_problem()
    model = nn.Linear(3, 1)
    result = train.train(
        model, mse, train.random_batches(x, y, batch_size=64), steps=600, lr=0.05, progress=False
    )
    assert len(result.losses) == 600
    assert result.losses[-1] < 1e-3 < result.losses[0]
    assert torch.allclose(model.weight.T, w, atol=0.02)


def test_ema_tracks_the_weights():
    torch.manual_seed(0)
    x, y, w = linear_problem()
    model = nn.Linear(3, 1)
    result = train.train(
        model,
        mse,
        train.random_batches(x, y, batch_size=64),
        steps=800,
        lr=0.05,
        ema_decay=0.99,
        progress=False,
    )
    assert result.ema is not None and result.best is result.ema
    assert torch.allclose(result.ema.weight.T, w, atol=0.05)
    assert not result.ema.weight.requires_grad


def test_ema_formula_one_step():
    """ema <- decay * ema + (1 - decay) * w after one step, exactly."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    result = train.train(
        model,
        lambda m, b: m(b).sum(),
        lambda s: torch.ones(4, 2),
        steps=1,
        lr=0.1,
        ema_decay=0.9,
        ema_warmup=False,
        grad_clip=None,
        progress=False,
    )
    assert torch.allclose(result.ema.weight, 0.9 * before + 0.1 * model.weight, atol=1e-6)


def test_ema_warmup_forgets_the_initial_weights():
    """With warm-up the decay at step k is min(decay, (1 + k) / (10 + k)): 0.1 at the
    first step, so the average is mostly the trained weights from the start."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    before = model.weight.detach().clone()
    result = train.train(
        model,
        lambda m, b: m(b).sum(),
        lambda s: torch.ones(4, 2),
        steps=1,
        lr=0.1,
        ema_decay=0.999,
        grad_clip=None,
        progress=False,
    )
    assert torch.allclose(result.ema.weight, 0.1 * before + 0.9 * model.weight, atol=1e-6)


def test_nan_loss_names_the_step():
    model = nn.Linear(1, 1)

    def loss_fn(m, step_tensor):
        value = m(torch.ones(1, 1)).sum() * 0
        return value + (float("nan") if step_tensor.item() == 7 else 1.0)

    with pytest.raises(FloatingPointError, match="step 7"):
        train.train(
            model, loss_fn, lambda s: torch.tensor(s), steps=20, log_every=5, progress=False
        )


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    """Stop after 30 steps, resume to 60: same weights as 60 steps in one go."""
    x, y, _ = linear_problem()

    def run(steps, ckpt):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        batches = lambda s: (x[s % 8 * 64 : s % 8 * 64 + 64], y[s % 8 * 64 : s % 8 * 64 + 64])  # noqa: E731
        return train.train(
            model,
            mse,
            batches,
            steps=steps,
            lr=0.01,
            ema_decay=0.9,
            checkpoint=ckpt,
            checkpoint_every=10,
            progress=False,
            log_every=10,
        )

    full = run(60, None)
    ckpt = tmp_path / "run.pt"
    run(30, ckpt)
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp"))
    resumed = run(60, ckpt)
    assert resumed.resumed_at == 30 and full.resumed_at == 0
    assert len(resumed.losses) == 60
    assert torch.allclose(resumed.model.weight, full.model.weight, atol=1e-6)
    assert torch.allclose(resumed.ema.weight, full.ema.weight, atol=1e-6)
    assert resumed.losses[:30] == pytest.approx(full.losses[:30])


def test_resume_restores_the_batch_and_noise_generators(tmp_path):
    """random_batches with a generator, and a loss that draws noise from another: the
    resumed run must draw the batches and noise of the uninterrupted run, not replay
    those of the first steps (which is what a fresh generator would do)."""
    x, y, _ = linear_problem()

    def run(steps, ckpt, restore=True):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        g_batch, g_noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        batches = train.random_batches(x, y, batch_size=16, generator=g_batch)

        def loss(m, batch):
            xb, yb = batch
            return mse(m, (xb + 0.1 * torch.randn(xb.shape, generator=g_noise), yb))

        return train.train(
            model, loss, batches, steps=steps, lr=0.01, checkpoint=ckpt, checkpoint_every=10,
            progress=False, log_every=10, generators=(g_batch, g_noise) if restore else (),
        )  # fmt: skip

    full = run(40, None)
    run(20, tmp_path / "a.pt")
    resumed = run(40, tmp_path / "a.pt")
    assert torch.equal(resumed.model.weight, full.model.weight)
    assert resumed.losses == pytest.approx(full.losses, abs=1e-7)
    # without the generators' states the resumed run replays the first batches and noise,
    # and ends elsewhere: the states are what makes the resumption exact
    run(20, tmp_path / "b.pt", restore=False)
    replayed = run(40, tmp_path / "b.pt", restore=False)
    assert not torch.allclose(replayed.model.weight, full.model.weight, atol=1e-4)


def test_nan_loss_leaves_the_last_good_checkpoint(tmp_path):
    """A loss that turns NaN after a checkpoint raises, and the checkpoint on disk is the
    last good one: the run can go back to it with a lower learning rate."""
    x, y, _ = linear_problem()
    ckpt = tmp_path / "run.pt"

    calls = []

    def counted(m, batch):  # finite for 12 steps, then NaN
        calls.append(1)
        out = mse(m, batch)
        return out * float("nan") if len(calls) > 12 else out

    model = nn.Linear(3, 1)
    with pytest.raises(FloatingPointError, match="step 12"):
        train.train(
            model, counted, train.random_batches(x, y, batch_size=16), steps=40, lr=0.01,
            checkpoint=ckpt, checkpoint_every=5, progress=False, log_every=5,
        )  # fmt: skip
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.pt"
    model = nn.Linear(1, 1)
    train.train(
        model,
        lambda m, b: m(b).pow(2).mean(),
        lambda s: torch.ones(2, 1),
        steps=5,
        checkpoint=ckpt,
        progress=False,
    )
    good = ckpt.read_bytes()

    def broken_save(obj, f):
        open(f, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        train._save_atomic({"x": 1}, ckpt)
    assert ckpt.read_bytes() == good


def test_warmup_and_clipping_run():
    model = nn.Linear(3, 1)
    x, y, _ = linear_problem()
    result = train.train(
        model,
        mse,
        train.random_batches(x, y, batch_size=32),
        steps=50,
        warmup_steps=10,
        grad_clip=0.5,
        progress=False,
    )
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_random_batches_checks_lengths():
    with pytest.raises(ValueError, match="same number of rows"):
        train.random_batches(torch.zeros(3), torch.zeros(4), batch_size=2)


def test_moving_average():
    assert train.moving_average([1, 2, 3, 4], window=2) == [1, 1.5, 2.5, 3.5]
