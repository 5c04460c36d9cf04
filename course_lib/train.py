"""The one training loop of the course.

Every chapter trains through :func:`train`: a model, a loss ``loss_fn(model, batch)``
and a function that returns the next batch. The loop brings what a real run needs and
nothing else: Adam with an optional linear warm-up, gradient clipping, an exponential
moving average (EMA) of the weights, bf16 autocast and ``torch.compile`` on a GPU, a
``tqdm`` progress bar with the running loss (and images/s), a clear error on a NaN or
infinite loss naming the step, and atomic, resumable checkpoints so that an interrupted
run (a Colab session that ends) loses nothing: a checkpoint holds the weights, the
optimiser, the EMA, the losses, and the state of every random generator the run draws
from, so a resumed run continues with the batches and noise it would have drawn.

Under ``torchrun`` (a process group is initialised, :mod:`course_lib.distributed`) the
same loop runs as PyTorch's DDP: the forward pass goes through
``DistributedDataParallel``, which averages the gradients over the processes, the
logged losses are averaged over them too, and only rank 0 writes the checkpoint.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from course_lib import distributed

Batch = Any  # a tensor, or a tuple of tensors (e.g. images and labels)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (the raw weights).
        ema: the EMA copy of the model, or ``None`` without ``ema_decay``.
        losses: the loss of every step, ``losses[i]`` for step ``i``.
        seconds: wall time of the steps run in this call.
        steps: total steps done, including those before a resume.
        resumed_at: the step the checkpoint held when this call started (0 without one;
            ``steps`` when the run was already complete and nothing was trained).
    """

    model: nn.Module
    ema: nn.Module | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    resumed_at: int = 0

    @property
    def best(self) -> nn.Module:
        """The weights to sample with: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    @property
    def steps_per_second(self) -> float:
        return len(self.losses) / self.seconds if self.seconds else float("nan")


def random_batches(
    *tensors: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Callable[[int], Batch]:
    """A ``next_batch(step)`` that draws ``batch_size`` random rows of ``tensors``
    (same first dimension), sampled with replacement on the tensors' own device, so a
    data set that fits on the GPU never goes through a Python data loader."""
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("all tensors must have the same number of rows")
    device = tensors[0].device

    def next_batch(step: int) -> Batch:
        # the generator's state is part of the run: pass it to train(generators=...)
        # so that a resumed run draws the batches an uninterrupted run would have drawn
        idx = torch.randint(n, (batch_size,), generator=generator).to(device)
        out = tuple(t[idx] for t in tensors)
        return out[0] if len(out) == 1 else out

    return next_batch


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees a
    half-written checkpoint, and an interruption leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _check_finite(losses: torch.Tensor, first_step: int) -> None:
    bad = ~torch.isfinite(losses)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise FloatingPointError(
            f"the loss became {losses[i].item()} at step {first_step + i}. Lower the "
            "learning rate, enable gradient clipping (grad_clip), or check the data "
            "and the loss for NaNs or divisions by zero."
        )


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    next_batch: Callable[[int], Batch],
    *,
    steps: int,
    lr: float = 1e-3,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    ema_decay: float | None = None,
    ema_warmup: bool = True,
    amp: bool = False,
    compile: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    progress: bool = True,
    log_every: int | None = None,
    desc: str = "training",
    generators: Sequence[torch.Generator] = (),
    batch_size: int | None = None,
) -> TrainResult:
    """Train ``model`` for ``steps`` steps of Adam(W) on ``loss_fn(model, next_batch(step))``.

    Args:
        model: any ``nn.Module``; it is trained in place.
        loss_fn: returns a scalar loss for a batch.
        next_batch: returns the batch for a step (see :func:`random_batches`).
        steps: total number of optimisation steps (including steps resumed from a
            checkpoint).
        lr: peak learning rate; ``warmup_steps`` ramps it linearly from zero (DDPM
            used 5000 warm-up steps on CIFAR-10).
        weight_decay: AdamW's decoupled weight decay.
        grad_clip: clip the global gradient norm to this value (``None`` = off).
        ema_decay: keep ``ema = decay * ema + (1 - decay) * weights`` after each step
            (DDPM: 0.9999); ``None`` = no EMA.
        ema_warmup: use ``min(ema_decay, (1 + k) / (10 + k))`` at step ``k`` (as in
            TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so that in a
            short run the average forgets the random initial weights: with a fixed
            0.995, 28% of the EMA is still the initial net after 255 steps.
        amp: run the forward pass under bf16 autocast (use on CUDA).
        compile: ``torch.compile`` the model for the forward pass (GPU).
        checkpoint: a file to save to every ``checkpoint_every`` steps and at the end;
            if it exists, training resumes from it. Under DDP only rank 0 writes it,
            and every rank resumes from it (whatever number of processes wrote it).
        progress: show a ``tqdm`` bar with the running loss.
        log_every: how often the bar is updated and the loss checked for NaN/inf
            (default ``steps // 100``).
        desc: label of the progress bar.
        generators: the generators ``next_batch`` and ``loss_fn`` draw from (batch
            indices, noise); their states are saved with the checkpoint and restored on
            resume, with torch's global (and CUDA) generator, so that a resumed run
            is the uninterrupted run.
        batch_size: the global batch size, to show images/s on the progress bar.

    Returns:
        A :class:`TrainResult` with the loss of every step.

    Raises:
        FloatingPointError: the loss is NaN or infinite; the message names the step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor update instead of a Python loop over the parameters (PyTorch
    # only picks it by itself on CUDA; on the CPU it saves a few percent of a U-Net step)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    ema = copy.deepcopy(model).requires_grad_(False).eval() if ema_decay is not None else None
    losses: list[float] = []
    start = 0
    rank, world = distributed.current()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(
                f"The checkpoint {ckpt} was written for a different model ({err}). "
                "Delete it to train from scratch, or pass another checkpoint path."
            ) from err
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        losses, start = list(state["losses"]), int(state["step"])
        torch.set_rng_state(state["rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        # checkpoints written before generator states were saved hold none: they still
        # load (a finished run needs none; an unfinished one resumes approximately)
        saved_gens = state.get("generators", [g.get_state() for g in generators])
        if len(saved_gens) != len(generators):
            raise ValueError(
                f"The checkpoint {ckpt} holds {len(saved_gens)} generator state(s) but this "
                f"run draws from {len(generators)}: it was written by a different training "
                "set-up. Delete it to train from scratch, or pass another checkpoint path."
            )
        for g, g_state in zip(generators, saved_gens, strict=True):
            g.set_state(g_state)

    def save(step: int) -> None:
        if ckpt is not None and rank == 0:
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "losses": losses,
                    "step": step,
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else None,
                    "generators": [g.get_state() for g in generators],
                },
                ckpt,
            )

    device = next(model.parameters()).device
    forward: nn.Module = model
    if world > 1:  # DDP averages the gradients over the processes in backward()
        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    forward = torch.compile(forward) if compile else forward
    log_every = log_every or max(1, (steps - start) // 100)
    buffer = torch.zeros(log_every, device=device)
    # the lists are built once: walking the modules every step costs more than the update
    ema_params = list(ema.parameters()) if ema is not None else []
    model_params = list(model.parameters())
    buffer_pairs = list(zip(ema.buffers(), model.buffers(), strict=True)) if ema is not None else []
    next_save = (start // checkpoint_every + 1) * checkpoint_every if checkpoint_every else 0
    model.train()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress, leave=False)
    t0 = time.perf_counter()
    for step in range(start, steps):
        if warmup_steps:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(forward, next_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():  # in place on the EMA's tensors: ema += (1 - decay)(w - ema)
                decay = min(ema_decay, (1 + step) / (10 + step)) if ema_warmup else ema_decay
                torch._foreach_lerp_(ema_params, model_params, 1 - decay)
                for b_ema, b in buffer_pairs:
                    b_ema.copy_(b)
        buffer[(step - start) % log_every] = loss.detach().float()
        done = step + 1
        if (done - start) % log_every == 0 or done == steps:
            # one host sync per log interval, not per step
            n_new = (done - start - 1) % log_every + 1
            chunk = buffer[:n_new]
            if world > 1:  # every rank logs (and checks) the mean over the processes
                chunk = chunk.clone()
                tdist.all_reduce(chunk)
                chunk /= world
            chunk = chunk.cpu()
            _check_finite(chunk, done - n_new)
            losses.extend(chunk.tolist())
            bar.update(n_new)
            post = {"loss": f"{sum(losses[-n_new:]) / n_new:.4f}"}
            if batch_size:
                rate = (done - start) * batch_size / (time.perf_counter() - t0)
                post["img/s"] = f"{rate:.0f}"
            bar.set_postfix(post)
            if checkpoint_every and done >= next_save:
                save(done)
                next_save = (done // checkpoint_every + 1) * checkpoint_every
    seconds = time.perf_counter() - t0
    bar.close()
    save(steps)
    distributed.barrier()  # no rank reads the checkpoint before rank 0 has written it
    model.eval()
    return TrainResult(
        model=model, ema=ema, losses=losses, seconds=seconds, steps=steps, resumed_at=start
    )


def moving_average(values: Sequence[float], window: int = 50) -> list[float]:
    """Trailing mean of ``values`` over ``window`` steps (for loss plots)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
