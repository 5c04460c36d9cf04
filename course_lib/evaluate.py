"""Sample quality for images: a Fréchet distance on the features of a small classifier.

The standard FID (Heusel et al. 2017) compares Inception-v3 features of generated and
real images: ``FD = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2})``,
the 2-Wasserstein distance between the two Gaussians fitted to the features. The
Inception weights are downloaded at run time, so that FID cannot run offline. The course
therefore computes the *same formula* on the penultimate-layer features of a small
classifier it trains itself on MNIST or CIFAR-10 (:class:`FeatureNet`, cached under
``data/classifiers``). Call the result what it is: a **classifier-feature FID**, useful
to compare runs of this course, and *not* comparable with papers' Inception FID. Where
``torch-fidelity`` is installed and its weights can be fetched (Colab),
:func:`inception_fid` computes the standard number.

:func:`nearest_training_images` shows, for a few samples, the closest training image, so
that a learner can see whether a model copies its data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from course_lib import data as data_module
from course_lib import train as train_module
from course_lib.config import Config


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(F,)`` and covariance ``(F, F)`` of features ``(N, F)``, in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features of shape (N >= 2, F), got {tuple(features.shape)}")
    f = features.detach().double().cpu()
    return f.mean(0), torch.cov(f.T)


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """``||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^{1/2} C2 C1^{1/2})^{1/2})``.

    The matrix in the last term is symmetric positive semi-definite, so its square root
    comes from one symmetric eigendecomposition (stabler than ``sqrtm(C1 C2)``).
    """
    s1 = _sqrtm_psd(cov1.double())
    middle = s1 @ cov2.double() @ s1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    diff = (mu1.double() - mu2.double()).pow(2).sum()
    return float(diff + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * tr_sqrt)


class FeatureNet(nn.Module):
    """A small CNN classifier whose penultimate layer (``dim`` features) feeds the
    Fréchet distance. Three conv blocks (16, 32, 64 channels, GroupNorm, SiLU, 2x
    downsampling; small enough to train in a minute on a laptop CPU), global average
    pooling, a ``dim``-wide layer, then 10 logits."""

    def __init__(self, in_channels: int = 1, dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (16, 32, 64):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.features_head = nn.Sequential(nn.Linear(c, dim), nn.SiLU())
        self.classifier = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, dim)`` of images in ``[-1, 1]``."""
        return self.features_head(self.body(x).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class Evaluator:
    """A trained :class:`FeatureNet` and the reference statistics of real images."""

    net: FeatureNet
    name: str
    accuracy: float
    ref_mu: torch.Tensor
    ref_cov: torch.Tensor

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        device = next(self.net.parameters()).device
        self.net.eval()
        chunks = [
            self.net.features(images[i : i + batch_size].to(device).float()).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(chunks)

    def fid(self, samples: torch.Tensor) -> float:
        """Classifier-feature FID of ``samples`` (in ``[-1, 1]``) against the reference."""
        if not torch.isfinite(samples).all():
            raise ValueError("samples contain NaN or inf: the sampler diverged")
        mu, cov = gaussian_stats(self.features(samples.clamp(-1, 1)))
        return frechet_distance(mu, cov, self.ref_mu, self.ref_cov)


def _cache_path(name: str, split: str, steps: int, max_images: int | None) -> Path:
    """One file per training budget: a quick smoke-profile classifier must never be
    reused where a full one was asked for."""
    size = "all" if max_images is None else str(max_images)
    return data_module.data_root() / "classifiers" / f"{name}-{split}-{steps}steps-{size}.pt"


def train_evaluator(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 1500,
    batch_size: int = 128,
    holdout: float = 0.1,
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> Evaluator:
    """Train a :class:`FeatureNet` on ``images`` in ``[-1, 1]`` with cross-entropy,
    keeping ``holdout`` of them aside to report an honest accuracy; reference statistics
    are the features of all ``images``."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(images.shape[0], generator=g)
    n_test = max(1, int(holdout * images.shape[0]))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed)
    net = FeatureNet(in_channels=images.shape[1]).to(device)
    x_train, y_train = images[train_idx].to(device), labels[train_idx].to(device)

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if x.shape[1] == 3:  # random horizontal flips help the CIFAR classifier
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return F.cross_entropy(model(x), y)

    train_module.train(
        net,
        loss_fn,
        train_module.random_batches(x_train, y_train, batch_size=batch_size, generator=g),
        steps=steps,
        lr=2e-3,
        warmup_steps=100,
        progress=progress,
        desc=f"{name} classifier",
    )
    net.eval()
    with torch.no_grad():
        logits = torch.cat(
            [net(images[test_idx][i : i + 500].to(device)).cpu() for i in range(0, n_test, 500)]
        )
    accuracy = float((logits.argmax(1) == labels[test_idx]).float().mean())
    ev = Evaluator(net, name, accuracy, torch.zeros(0), torch.zeros(0, 0))
    ev.ref_mu, ev.ref_cov = gaussian_stats(ev.features(images))
    return ev


def load_evaluator(
    name: str,
    split: str = "train",
    steps: int = 1500,
    max_images: int | None = None,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Evaluator:
    """The evaluator for a data set: loaded from
    ``data/classifiers/<name>-<split>-<steps>steps-<max_images>.pt`` if cached, else
    trained on ``data.load(name, split)`` and cached (atomically)."""
    path = _cache_path(name, split, steps, max_images)
    ds = data_module.load(name, split)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=False)
        net = FeatureNet(in_channels=ds.images.shape[1])
        net.load_state_dict(state["net"])
        return Evaluator(net.to(device), name, state["accuracy"], state["mu"], state["cov"])
    if max_images is not None:
        ds = ds.subset(min(max_images, len(ds)), torch.Generator().manual_seed(0))
    ev = train_evaluator(
        name, ds.to_float(), ds.labels, steps=steps, device=device, progress=progress
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(
        {"net": ev.net.state_dict(), "accuracy": ev.accuracy, "mu": ev.ref_mu, "cov": ev.ref_cov},
        tmp,
    )
    os.replace(tmp, path)
    return ev


def course_evaluator(cfg: Config, name: str = "mnist") -> Evaluator:
    """The evaluator every chapter uses for ``name`` in ``cfg``'s profile (one place for
    its budget, so chapters 3, 4 and later report the same classifier-feature FID)."""
    return load_evaluator(
        name,
        split=cfg.train_split,
        steps=cfg.pick(smoke=40, cpu=300, gpu=1500),
        max_images=cfg.pick(smoke=1000, cpu=None, gpu=None),
        device=cfg.device,
    )


def inception_fid(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """The standard Inception FID via ``torch-fidelity`` (needs its weights, which it
    downloads on first use: online only). Images in ``[-1, 1]``, 1 or 3 channels."""
    try:
        import torch_fidelity
    except ImportError as err:
        raise RuntimeError(
            "Inception FID needs the package torch-fidelity (pip install -e '.[fid]' in the "
            "course's folder, or pip install torch-fidelity) and internet access for its "
            "Inception weights. Offline, use the course's classifier-feature FID "
            "(evaluate.course_evaluator(cfg, name).fid(samples))."
        ) from err

    class _Images(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor) -> None:
            x = data_module.to_uint8(x)
            self.x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

        def __len__(self) -> int:
            return self.x.shape[0]

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.x[i]

    try:
        out = torch_fidelity.calculate_metrics(
            input1=_Images(samples),
            input2=_Images(reference),
            fid=True,
            cuda=torch.cuda.is_available(),
            verbose=False,
        )
    except OSError as err:  # the weights could not be fetched
        raise RuntimeError(
            f"torch-fidelity could not load its Inception weights ({err}); they are "
            "downloaded on first use, which needs internet access."
        ) from err
    return float(out["frechet_inception_distance"])


@torch.no_grad()
def nearest_training_images(
    samples: torch.Tensor, train_images: torch.Tensor, batch_size: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the index of and the L2 distance to the closest training image
    (pixel space, both in ``[-1, 1]``). Returns ``(indices (B,), distances (B,))``."""
    s = samples.flatten(1).float()
    best_d = torch.full((s.shape[0],), float("inf"))
    best_i = torch.zeros(s.shape[0], dtype=torch.long)
    for start in range(0, train_images.shape[0], batch_size):
        chunk = train_images[start : start + batch_size].flatten(1).float().to(s.device)
        d, i = torch.cdist(s, chunk).min(1)
        better = d.cpu() < best_d
        best_d[better], best_i[better] = d.cpu()[better], i.cpu()[better] + start
    return best_i, best_d
