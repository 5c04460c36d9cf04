"""Several processes, one run: DDP under torchrun on the CPU (gloo), checkpoints that
resume with any process count, and a run killed with SIGKILL that resumes exactly."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import capstone, distributed, objectives

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ batches and draws
@pytest.mark.parametrize("world", [2, 3, 4])
def test_local_batches_together_are_the_global_batch(world: int) -> None:
    n, B, seed = 50, 12, 3
    one = distributed.EpochBatches(n, B, seed)
    ranks = [distributed.EpochBatches(n, B, seed, r, world) for r in range(world)]
    for step in range(3 * one.steps_per_epoch + 1):  # crosses epoch boundaries
        glob = one(step)
        parts = [b(step) for b in ranks]
        assert all(len(p) == B // world for p in parts)
        # rank r holds positions r, r + W, ... of the global batch
        merged = torch.stack(parts, 1).reshape(-1)
        assert torch.equal(merged, glob)


def test_epochs_are_permutations_without_repeats() -> None:
    n, B = 40, 8
    batches = distributed.EpochBatches(n, B, seed=0)
    epoch0 = torch.cat([batches(k) for k in range(5)])
    epoch1 = torch.cat([batches(k) for k in range(5, 10)])
    assert len(set(epoch0.tolist())) == n and len(set(epoch1.tolist())) == n
    assert not torch.equal(epoch0, epoch1)  # set_epoch reshuffles


def test_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        distributed.local_batch_size(128, 3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        distributed.EpochBatches(10, 16, seed=0)


def test_draws_are_rows_of_the_global_draw() -> None:
    full = objectives.draw(5, 7, 6, (3, 4, 4))
    for r in range(3):
        part = objectives.draw(5, 7, 6, (3, 4, 4), rank=r, world_size=3)
        assert torch.equal(part.noise, full.noise[r::3])
        assert torch.equal(part.u, full.u[r::3]) and torch.equal(part.flip, full.flip[r::3])
    assert not torch.equal(objectives.draw(5, 8, 6, (3, 4, 4)).noise, full.noise)


def test_too_many_processes_per_gpu_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="--nproc_per_node=2"):
        distributed.from_env()


def test_without_torchrun_it_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.from_env("cpu")
    assert (d.rank, d.world_size, d.is_main, d.active) == (0, 1, True, False)


# ------------------------------------------------------------- runs under torchrun
@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with ``cifar10/test.zip``: 64 random 32x32 PNGs in ten class folders."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cifar_root")
    (root / "cifar10").mkdir()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(root / "cifar10" / "test.zip", "w") as zf:
        for i in range(64):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
            zf.writestr(f"test/class{i % 10}/{i:04d}.png", buf.getvalue())
    return root


def _env(root: Path) -> dict[str, str]:
    return {
        "COURSE_DATA": str(root),
        "COURSE_TRAIN_SPLIT": "test",
        "COURSE_PROFILE": "smoke",
        "OMP_NUM_THREADS": "1",
        "COURSE_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


def _train_args(steps: int, ckpt: Path, *extra: str) -> list[str]:
    return ["train", "--objective", "eps", "--steps", str(steps), "--checkpoint", str(ckpt), *extra]


def _train(root: Path, procs: int, steps: int, ckpt: Path, *extra: str) -> dict:
    return capstone.run_cli(_train_args(steps, ckpt, *extra), procs, _env(root))


@pytest.fixture(scope="module")
def one_process_run(tiny_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt = tmp_path_factory.mktemp("one") / "ckpt.pt"
    report = _train(tiny_cifar, 1, 4, ckpt, "--float64")
    assert (report["steps"], report["processes"]) == (4, 1)
    return ckpt


def test_two_gloo_processes_take_the_one_process_steps(
    tiny_cifar: Path, one_process_run: Path, tmp_path: Path
) -> None:
    report = _train(tiny_cifar, 2, 4, tmp_path / "two.pt", "--float64")
    assert report["processes"] == 2
    # the all-reduce sums in another order; in float64 that rounding is about 1e-12
    # (in float32 Adam's first steps amplify it to ~1e-4: see capstone.train_capstone)
    assert capstone.max_weight_difference(one_process_run, tmp_path / "two.pt") < 1e-9
    # and the runs did move the weights (a test that cannot fail would pass without it)
    init = _train(tiny_cifar, 1, 1, tmp_path / "first_step.pt", "--float64")
    assert (
        init["steps"] == 1
        and capstone.max_weight_difference(one_process_run, tmp_path / "first_step.pt") > 1e-4
    )


def test_sampling_sharded_over_two_processes_is_the_one_process_sampling(
    tiny_cifar: Path, one_process_run: Path, tmp_path: Path
) -> None:
    outs, fids = [], []
    for procs in (1, 2):
        out = tmp_path / f"samples{procs}.pt"
        args = ["--sampler", "DDIM, η = 0", "--knob", "2", "-n", "6", "--batch-size", "2", "--fid"]
        sample_args = ["sample", "--objective", "eps", "--steps", "4", "--checkpoint",
                       str(one_process_run), "--float64", *args, "--out", str(out)]  # fmt: skip
        printed = capstone.run_cli(sample_args, procs, _env(tiny_cifar))["output"]
        outs.append(torch.load(out))
        fids.append(float(printed.split("FID ")[1].split(":")[0]))
    assert outs[0].shape == (6, 3, 32, 32)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)  # three batches: ranks 0, 1, 0
    # the features were extracted by two processes (rows 0, 2, 4 and 1, 3, 5): same FID
    assert fids[0] == pytest.approx(fids[1], rel=1e-6) and fids[0] > 0


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_with_another_process_count(
    tiny_cifar: Path, one_process_run: Path, tmp_path: Path, first: int, then: int
) -> None:
    ckpt = tmp_path / "ckpt.pt"
    assert _train(tiny_cifar, first, 2, ckpt, "--float64")["steps"] == 2
    report = _train(tiny_cifar, then, 4, ckpt, "--float64")
    assert (report["resumed_at"], report["steps"], report["processes"]) == (2, 4, then)
    assert capstone.max_weight_difference(one_process_run, ckpt) < 1e-9


def test_a_killed_run_resumes_to_the_uninterrupted_weights(
    tiny_cifar: Path, tmp_path: Path
) -> None:
    steps, every = 60, 5
    full = tmp_path / "full.pt"
    _train(tiny_cifar, 1, steps, full)
    ckpt = tmp_path / "killed.pt"
    cmd = capstone.cli_command(_train_args(steps, ckpt, "--checkpoint-every", str(every)))
    proc = subprocess.Popen(cmd, env={**os.environ, **_env(tiny_cifar)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = int(torch.load(ckpt, weights_only=False)["step"])
    assert 0 < killed_at < steps, "the run ended before it could be killed: make it longer"
    report = _train(tiny_cifar, 1, steps, ckpt)
    assert report["resumed_at"] == killed_at
    assert (
        capstone.max_weight_difference(full, ckpt) == 0.0
    )  # the same batches, noise and order of operations


def test_bad_sampler_and_missing_checkpoint_name_the_fix(
    tiny_cifar: Path, one_process_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in _env(tiny_cifar).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = [
        "sample",
        "--objective",
        "eps",
        "--steps",
        "4",
        "--float64",
        "--out",
        str(tmp_path / "x.pt"),
    ]
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'; choose one of .*EDM Heun"):
        capstone.main([*base, "--checkpoint", str(one_process_run), "--sampler", "nope"])
    with pytest.raises(FileNotFoundError, match="train it first"):
        capstone.main([*base, "--checkpoint", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit):  # argparse lists the objectives
        capstone.main(["train", "--objective", "score"])
