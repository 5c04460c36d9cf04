"""Chapter 8: class-conditional 2D models trained with label dropout, for classifier-free
guidance, on a labelled Gaussian mixture whose every conditional quantity is exact.

The data are drawn from a :class:`course_lib.guidance.LabelledMixture` (``gaussians8`` with
its modes split into classes), so each learned conditional, unconditional and guided
prediction has an exact twin (:func:`course_lib.guidance.exact_guided_eps`,
:func:`course_lib.guidance.exact_guided_velocity`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_lib import ddpm, guidance, recipes, schedules, toy_diffusion, toys, train
from course_lib import flow_matching as fm
from course_lib.config import Config
from course_lib.nets import MLP

OBJECTIVES: tuple[str, ...] = ("flow", "ddpm")


def labelled_twin(toy: str = "gaussians8", n_classes: int = 2) -> guidance.LabelledMixture:
    """``toy``'s Gaussian-mixture twin with component ``k`` in class ``k mod n_classes``
    (for ``gaussians8`` and two classes: alternate modes around the circle)."""
    gm = toys.twin(toy)
    if not 1 <= n_classes <= gm.n_components:
        raise ValueError(f"n_classes must lie in [1, {gm.n_components}], got {n_classes}")
    return guidance.LabelledMixture(gm, torch.arange(gm.n_components) % n_classes)


@dataclass(frozen=True)
class GuidanceRecipe:
    """A conditional toy model: chapter 3's network and budget (``base``), the objective
    (flow matching on the linear path, or chapter 3's ε-loss), the number of classes and
    the label-dropout probability ``p_uncond`` (Ho & Salimans 2022 use 0.1–0.2)."""

    base: toy_diffusion.ToyRecipe
    objective: str = "flow"
    n_classes: int = 2
    p_uncond: float = 0.2


def recipe(cfg: Config, toy: str = "gaussians8", **overrides: object) -> GuidanceRecipe:
    """The recipe in ``cfg``'s profile; ``overrides`` may name fields of
    :class:`GuidanceRecipe` or of its base."""
    own = {k: v for k, v in overrides.items() if k in GuidanceRecipe.__dataclass_fields__}
    rest = {k: v for k, v in overrides.items() if k not in own}
    r = GuidanceRecipe(toy_diffusion.recipe(cfg, toy, **rest), **own)  # type: ignore[arg-type]
    if r.objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {r.objective!r}; valid: {', '.join(OBJECTIVES)}.")
    if not 0.0 < r.p_uncond < 1.0:
        raise ValueError(
            f"p_uncond must lie strictly between 0 and 1 (the network must see both "
            f"conditional and null labels), got {r.p_uncond}"
        )
    return r


@dataclass
class ConditionalToy:
    """A trained conditional model ``model(x, t, y)`` (EMA weights, eval mode): a velocity
    in flow time for ``objective="flow"``, a noise prediction ``ε(x_t, t / T, y)`` on
    ``schedule`` for ``"ddpm"``; label ``null_label`` is "no label"."""

    recipe: GuidanceRecipe
    model: nn.Module
    twin: guidance.LabelledMixture
    schedule: schedules.DiscreteSchedule | None
    result: train.TrainResult
    checkpoint: Path

    @property
    def null_label(self) -> int:
        return self.recipe.n_classes

    def guided(self, y: int, w: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided prediction ``(x, t) -> (1 + w) f(x, t, y) − w f(x, t, ∅)``."""

        def net(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.model(x.float(), t.float(), labels).to(x.dtype)

        return guidance.guided_model(net, y, w, self.null_label)


def train_conditional(
    cfg: Config, toy: str = "gaussians8", r: GuidanceRecipe | None = None, progress: bool = True
) -> ConditionalToy:
    """Train (or load) a conditional model with per-sample label dropout
    (:func:`course_lib.guidance.drop_labels`) through the course's one training loop."""
    r = r or recipe(cfg, toy)
    b = r.base
    if b.toy != toy:
        raise ValueError(f"recipe is for {b.toy!r}, not {toy!r}")
    lm = labelled_twin(toy, r.n_classes)
    g = torch.Generator().manual_seed(b.seed)
    x, y = lm.sample(b.n_points, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(b.seed)
        model = MLP(dim=2, hidden=b.hidden, depth=b.depth, num_classes=r.n_classes)
    schedule = schedules.by_name(b.schedule, b.T) if r.objective == "ddpm" else None
    path = fm.linear_path()

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        labels = guidance.drop_labels(yb, r.p_uncond, r.n_classes, g)

        def conditional(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return net(xt, t.float(), labels)

        if schedule is not None:
            return ddpm.loss(conditional, xb, schedule, "eps", g)
        return fm.cfm_loss(conditional, xb, path, None, g)

    name = f"guided-{r.objective}-toy-{toy}-{recipes.key(r)}"
    result, ckpt = toy_diffusion.fit(
        model, loss_fn, (x, y), b, name, g, progress, f"conditional {r.objective} on {toy}"
    )
    assert result.ema is not None
    return ConditionalToy(r, result.ema.eval(), lm, schedule, result, ckpt)


def train_noisy_classifier(
    cfg: Config,
    toy: str = "gaussians8",
    n_classes: int = 2,
    progress: bool = True,
    **overrides: object,
) -> tuple[nn.Module, schedules.DiscreteSchedule, train.TrainResult]:
    """A noise-aware classifier for classifier guidance (Dhariwal & Nichol 2021, §4.1):
    chapter 3's MLP with ``n_classes`` outputs (logits) and its time input, trained with
    the cross-entropy of ``y`` given ``x_t = √ᾱ_t x + √(1 − ᾱ_t) ε`` at uniformly drawn steps
    of chapter 3's schedule. Returns the EMA network ``(x_t, t / T) -> logits``, the
    schedule and the training result."""
    # chapter 3's learning rate of 2e-3 collapses this classifier to the prior within a few
    # steps (most of its inputs are uninformative noise; measured): a quarter of it works
    b = toy_diffusion.recipe(cfg, toy, **({"lr": 5e-4} | overrides))
    lm = labelled_twin(toy, n_classes)
    schedule = schedules.by_name(b.schedule, b.T)
    g = torch.Generator().manual_seed(b.seed)
    x, y = lm.sample(b.n_points, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(b.seed)
        model = MLP(dim=2, hidden=b.hidden, depth=b.depth, out_dim=n_classes)

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        t = torch.randint(1, schedule.T + 1, (xb.shape[0],), generator=g)
        xt = ddpm.q_sample(xb, t, schedule, torch.randn(xb.shape, generator=g))
        return nn.functional.cross_entropy(net(xt, t.float() / schedule.T), yb)

    name = f"classifier-toy-{toy}-{n_classes}-{recipes.key(b)}"
    result, _ = toy_diffusion.fit(
        model, loss_fn, (x, y), b, name, g, progress, f"noisy classifier on {toy}"
    )
    assert result.ema is not None
    return result.ema.eval(), schedule, result
