"""Profiles, device choice and seeding: how big each run of the course is.

A chapter never branches on the profile itself. It asks for a size with
``cfg.pick(smoke=..., cpu=..., gpu=...)`` and the active profile answers:

* ``smoke``: continuous integration; each chapter runs in well under a minute on two
  CPU cores and still takes every code path.
* ``cpu``: the default without a GPU; good results on a laptop in minutes.
* ``gpu``: the default when CUDA is present; real MNIST / CIFAR-10 runs.

The profile comes from the ``COURSE_PROFILE`` environment variable. ``COURSE_THREADS``
sets how many CPU threads torch uses (torch's default is one per core): on a shared
machine, or with several notebooks running at once, ``COURSE_THREADS=1`` is often faster.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

PROFILES: tuple[str, ...] = ("smoke", "cpu", "gpu")
T = TypeVar("T")


def default_device() -> torch.device:
    """The fastest device present: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_profile() -> str:
    """``gpu`` when CUDA is present, else ``cpu`` (``smoke`` is only ever asked for)."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def check_profile(name: str) -> str:
    """Return ``name`` if it is a valid profile, else raise an error listing them."""
    if name not in PROFILES:
        raise ValueError(
            f"Unknown course profile {name!r}. Valid profiles are "
            f"{', '.join(PROFILES)}; set COURSE_PROFILE to one of them "
            "(or unset it to get the default for this machine)."
        )
    return name


@dataclass(frozen=True)
class Config:
    """The active run configuration.

    Attributes:
        profile: one of :data:`PROFILES`.
        device: where tensors and models live.
        train_split: the image split chapters train on (``COURSE_TRAIN_SPLIT``,
            default ``"train"``; ``"test"`` lets an offline machine that only has
            the test split run the image chapters).
        seed: the seed chapters pass to :func:`seed_everything`.
        threads: CPU threads for torch (``COURSE_THREADS``); ``None`` keeps torch's
            default of one per core.
    """

    profile: str
    device: torch.device = field(default_factory=default_device)
    train_split: str = "train"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_profile(self.profile)
        if self.train_split not in ("train", "test"):
            raise ValueError(
                f"COURSE_TRAIN_SPLIT must be 'train' or 'test', not {self.train_split!r}."
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"COURSE_THREADS must be a positive integer, not {self.threads}.")

    def pick(self, *, smoke: T, cpu: T, gpu: T) -> T:
        """The value for the active profile, e.g. ``cfg.pick(smoke=200, cpu=5_000,
        gpu=50_000)`` training steps."""
        return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[self.profile]

    @property
    def use_amp(self) -> bool:
        """bf16 autocast pays off on CUDA only; on the CPU it is slower for small nets."""
        return self.device.type == "cuda"

    def describe(self) -> str:
        """One line for a chapter's header and results card."""
        name = self.device.type
        if name == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        if name == "cpu":
            name += f" ({torch.get_num_threads()} threads)"
        return f"profile={self.profile}, device={name}, torch={torch.__version__}"


def _threads_from_env() -> int | None:
    raw = os.environ.get("COURSE_THREADS", "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"COURSE_THREADS must be a positive integer such as 1 or 4, not {raw!r}."
        ) from None


def get_config(profile: str | None = None) -> Config:
    """The active config: ``profile`` if given, else ``COURSE_PROFILE``, else the
    machine's default (:func:`default_profile`). Applies ``COURSE_THREADS`` to torch."""
    name = profile or os.environ.get("COURSE_PROFILE") or default_profile()
    cfg = Config(
        profile=check_profile(name.strip().lower()),
        train_split=os.environ.get("COURSE_TRAIN_SPLIT", "train"),
        threads=_threads_from_env(),
    )
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    return cfg


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator with that
    seed for code that takes an explicit ``generator``."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds code that uses NumPy's global RNG)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
