"""The course's 2D flow-matching models: a velocity field ``v_θ(x, t)`` per toy, coupling
and path, trained once with the same network and budget as chapter 3's diffusion model.

``coupling`` is ``"independent"`` (I-CFM / 1-rectified flow on the linear path), ``"ot"``
(minibatch OT-CFM, Tong et al. 2023) or ``"reflow"`` (2-rectified flow: pairs ``(x0, x̂1)``
sampled from a trained ``teacher``, Liu et al. 2023). Like
:func:`course_lib.toy_diffusion.train_toy_diffusion`, a checkpoint named by a hash of
the recipe makes the second call a load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_lib import couplings, recipes, toy_diffusion, toys, train
from course_lib import flow_matching as fm
from course_lib.config import Config
from course_lib.nets import MLP

COUPLINGS: tuple[str, ...] = ("independent", "ot", "reflow")


@dataclass(frozen=True)
class FlowRecipe:
    """A trained 2D flow: chapter 3's network and budget (``base``), the path, the
    coupling, for reflow the number of ODE steps that make the pairs, and the time scale
    of the network's time embedding (chapter 3's 1000 by default; chapter 7 compares with
    a CNF at 1, where ``v`` varies slowly in ``t`` and adaptive solvers take few steps)."""

    base: toy_diffusion.ToyRecipe
    path: str = "linear"
    coupling: str = "independent"
    reflow_steps: int = 100
    time_scale: float = 1000.0


def recipe(cfg: Config, toy: str, **overrides: object) -> FlowRecipe:
    """The flow recipe for ``toy`` in ``cfg``'s profile; ``overrides`` may name fields of
    :class:`FlowRecipe` (``path``, ``coupling``, ``reflow_steps``, ``time_scale``) or of its
    base."""
    own = {k: v for k, v in overrides.items() if k in FlowRecipe.__dataclass_fields__}
    base = toy_diffusion.recipe(cfg, toy, **{k: v for k, v in overrides.items() if k not in own})
    r = FlowRecipe(base, **own)  # type: ignore[arg-type]
    fm.get_path(r.path)
    if r.coupling not in COUPLINGS:
        raise ValueError(f"Unknown coupling {r.coupling!r}; valid: {', '.join(COUPLINGS)}.")
    return r


@dataclass
class ToyFlow:
    """A trained 2D flow: ``model(x, t)`` (EMA weights, eval mode) is ``v_θ`` at flow time
    ``t``; ``x1`` are its training points (data, ``t = 1``)."""

    recipe: FlowRecipe
    model: nn.Module
    path: fm.AffinePath
    x1: torch.Tensor
    result: train.TrainResult
    checkpoint: Path

    @property
    def resumed_at(self) -> int:
        return self.result.resumed_at

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v_θ(x, t)`` in the input's dtype (the net runs in float32)."""
        t = torch.as_tensor(t).expand(x.shape[0])
        return self.model(x.float(), t.float()).to(x.dtype)


def train_toy_flow(
    cfg: Config,
    toy: str,
    r: FlowRecipe | None = None,
    teacher: ToyFlow | None = None,
    progress: bool = True,
) -> ToyFlow:
    """Train (or load) ``v_θ`` with :func:`course_lib.flow_matching.cfm_loss` through the
    course's one :func:`course_lib.train.train`. For ``coupling="reflow"`` pass the
    ``teacher`` whose ODE makes the pairs (its checkpoint key joins this one's)."""
    r = r or recipe(cfg, toy)
    b = r.base
    if b.toy != toy:
        raise ValueError(f"recipe is for {b.toy!r}, not {toy!r}")
    if (r.coupling == "reflow") != (teacher is not None):
        raise ValueError("coupling='reflow' needs a teacher flow, and only reflow takes one")
    path = fm.get_path(r.path)
    g = torch.Generator().manual_seed(b.seed)
    x1 = toys.sample(toy, b.n_points, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(b.seed)
        model = MLP(dim=2, hidden=b.hidden, depth=b.depth, time_scale=r.time_scale)
    name = f"flow-toy-{toy}-{r.coupling}-{recipes.key(r)}"
    if teacher is not None:
        name += f"-from-{recipes.key(teacher.recipe)}"
        noise = torch.randn(b.n_points, 2, generator=g)
        x0, x1 = fm.reflow_pairs(teacher.velocity, noise, r.reflow_steps)
        pairs = torch.stack([x0, x1], 1)  # (N, 2, 2): a batch keeps its pairs together

        def loss_fn(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
            t = path.t_max * torch.rand(batch.shape[0], generator=g, dtype=torch.float64)
            return fm.cfm_loss_at(net, batch[:, 0], batch[:, 1], t, path)

        data = pairs
    else:
        coupling = couplings.get_coupling(r.coupling)

        def loss_fn(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
            return fm.cfm_loss(net, batch, path, coupling, g)

        data = x1
    result, ckpt = toy_diffusion.fit(
        model, loss_fn, data, b, name, g, progress, f"flow ({r.coupling}) on {toy}"
    )
    assert result.ema is not None
    return ToyFlow(r, result.ema.eval(), path, x1, result, ckpt)
