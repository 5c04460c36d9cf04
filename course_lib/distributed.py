"""Several processes, one model: PyTorch's own DDP, as ``torchrun`` starts it.

``torchrun --nproc_per_node=N`` starts ``N`` copies of a script and tells each, through
environment variables, who it is (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) and where to meet the others (``MASTER_ADDR``, ``MASTER_PORT``).
:func:`from_env` reads them, checks them against the machine and joins the process
group (NCCL on GPUs, gloo on the CPU); without ``torchrun`` it returns a one-process
:class:`Dist` and nothing is initialised, so the same code runs in a notebook.

The course's rule for several processes: *the run must not depend on how many there
are*. A global batch of ``B`` images is split into ``W`` local batches of ``B / W``;
which images form global batch ``k`` depends only on the seed and ``k``
(:class:`EpochBatches`, built on ``torch.utils.data.DistributedSampler`` with
``set_epoch``), and so does every random number drawn for them (:func:`step_generator`,
:func:`shard_rows`). DDP averages the gradients of the ``W`` local mean losses, which is
the gradient of the global mean loss, so ``W`` processes take the same optimisation
steps as one process with the same global batch (tested to ``1e-6`` with two gloo
processes), and a checkpoint written by either resumes in the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch.utils.data import DistributedSampler

# torchrun's variables; a process started without them is a one-process run
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Dist:
    """Who this process is in a run of ``world_size`` processes.

    Attributes:
        rank: this process's index, ``0 .. world_size - 1`` (rank 0 writes checkpoints).
        world_size: the number of processes ``W``.
        local_rank: the index among the processes of this machine (its GPU).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and figures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1


def from_env(device: torch.device | str | None = None) -> Dist:
    """Join the process group ``torchrun`` set up, or return a one-process :class:`Dist`.

    On CUDA each process takes GPU ``LOCAL_RANK`` and the NCCL backend; on the CPU,
    gloo. Raises a ``RuntimeError`` naming the fix when ``torchrun`` asked for more
    processes per machine than there are GPUs (``--nproc_per_node`` too large).
    """
    env = {k: os.environ.get(k) for k in _ENV}
    if env["WORLD_SIZE"] is None or int(env["WORLD_SIZE"]) == 1:
        dev = torch.device(device) if device is not None else _default_device()
        return Dist(device=dev)
    missing = [k for k, v in env.items() if v is None]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is set but {', '.join(missing)} are not: start several processes "
            "with torchrun (torchrun --nproc_per_node=N script.py), which sets all of them."
        )
    rank, world, local = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    local_world = int(env["LOCAL_WORLD_SIZE"])  # type: ignore[arg-type]
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if want_cuda:
        n_gpus = torch.cuda.device_count()
        if local_world > n_gpus:
            raise RuntimeError(
                f"torchrun started {local_world} processes on this machine but it has "
                f"{n_gpus} GPU(s). Use --nproc_per_node={n_gpus} (one process per GPU)."
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend, rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shutdown() -> None:
    """Leave the process group (a no-op in a one-process run)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def current() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def local_batch_size(global_batch: int, world_size: int) -> int:
    """``B / W``: the images each of ``W`` processes takes from a global batch of ``B``.

    Raises a ``ValueError`` naming the fix when ``W`` does not divide ``B``: unequal
    local batches would weight the processes' mean losses unequally, and the run would
    depend on ``W``."""
    if global_batch < 1 or world_size < 1:
        raise ValueError(f"need positive sizes, got B = {global_batch}, W = {world_size}")
    if global_batch % world_size:
        fits = [w for w in range(1, global_batch + 1) if global_batch % w == 0 and w <= 16]
        raise ValueError(
            f"the global batch {global_batch} does not split evenly over {world_size} "
            f"processes. Pick a batch size divisible by {world_size}, or a process count "
            f"among {fits}."
        )
    return global_batch // world_size


class EpochBatches:
    """Indices of this process's share of global batch ``k``, epoch by epoch.

    Every epoch is a fresh permutation of the ``n`` training images, seeded by
    ``(seed, epoch)``; ``DistributedSampler`` (with ``set_epoch``, ``drop_last``) deals
    it out, rank ``r`` taking positions ``r, r + W, r + 2W, ...``. Local batch ``k`` of
    rank ``r`` is then positions ``kB + r + W j`` (``j < B / W``) of the permutation, so
    the ``W`` local batches together are exactly global batch ``k`` of a one-process
    run: the run does not depend on ``W``, and a resumed run continues with the batch it
    would have drawn (there is no iterator state to lose). Within an epoch no image is
    seen twice; the last ``n mod B`` images of each permutation are skipped.

    Call it as ``batches(step) -> LongTensor (B / W,)``.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        self.local_batch = local_batch_size(global_batch, world_size)
        if n < global_batch:
            raise ValueError(
                f"{n} training images are fewer than one global batch of {global_batch}: "
                "lower the batch size or use more images."
            )
        self.steps_per_epoch = n // global_batch
        self._sampler = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._sampler.set_epoch(epoch)
            self._order = torch.tensor(list(self._sampler), dtype=torch.long)
            self._epoch = epoch
        b = self.local_batch
        return self._order[k * b : (k + 1) * b]


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by ``(seed, step)`` alone: the random numbers of a training step
    are the same in every process and after a restart, which is what makes a resumed or
    a several-process run take exactly the steps of an uninterrupted one-process run."""
    # a large odd multiplier keeps (seed, step) pairs of nearby runs from colliding
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % 2**63)


def shard_rows(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rows ``rank, rank + W, ...`` of a tensor drawn for the whole global batch: this
    process's share, in the order :class:`EpochBatches` deals images out."""
    return x[rank::world_size]


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``x`` (equal shapes) along dimension 0, rank order
    (``x`` itself in a one-process run): for sampling and FID sharded across ranks."""
    world = current()[1]
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    """Wait for every process (a no-op in a one-process run)."""
    if current()[1] > 1:
        tdist.barrier()
