"""Exercises of chapter 8: guidance."""

from __future__ import annotations

import torch

from course_lib.exercises import Mistake, exercise, expect_close


# --------------------------------------------------------------- the CFG combination
def _cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    return (1 + w) * eps_cond - w * eps_uncond


def _wrong_cfg_combine(eps_cond, eps_uncond, w):
    return w * eps_cond + (1 - w) * eps_uncond  # the "scale" form, with w put in for s


@exercise(
    "ch08.cfg_combine",
    solution=_cfg_combine,
    wrong=_wrong_cfg_combine,
    hint="w = 0 must give the conditional prediction, w = −1 the unconditional one.",
)
def check_cfg_combine(fn) -> str:
    """``fn(eps_cond, eps_uncond, w)`` returns the classifier-free-guided prediction in
    the course's convention (Ho & Salimans 2022): ``(1 + w) ε_c − w ε_∅``."""
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    u = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    for w in (3.0, 1.0, 0.0, -1.0):  # the tailored messages look at w = 3 first
        got = fn(c.clone(), u.clone(), w)
        if got is None:
            raise Mistake("return the guided prediction instead of None.")
        got = torch.as_tensor(got, dtype=torch.float64)
        if got.shape == c.shape and w == 3.0:
            if torch.allclose(got, _wrong_cfg_combine(c, u, w)):
                raise Mistake(
                    "that is the other convention, ε_∅ + s (ε_c − ε_∅) with s in place of w. "
                    "In the course's w, w = 0 is the plain conditional model: s = 1 + w."
                )
            if torch.allclose(got, (1 + w) * u - w * c):
                raise Mistake("the roles are swapped: extrapolate *away from* ε_∅, towards ε_c.")
        expect_close(got, _cfg_combine(c, u, w), f"the guided prediction at w = {w:g}")
    return (
        "(1 + w) ε_c − w ε_∅ = ε_c + w (ε_c − ε_∅): start at the conditional prediction and "
        "move further along the direction that the label adds. diffusers' guidance_scale is "
        "s = 1 + w."
    )


# ----------------------------------------------------------------- label dropout
def _drop_labels(y: torch.Tensor, p: float, null: int, generator: torch.Generator) -> torch.Tensor:
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, null), y)


def _wrong_drop_labels(y, p, null, generator):
    if float(torch.rand((), generator=generator)) < p:  # one coin for the whole batch
        return torch.full_like(y, null)
    return y


@exercise(
    "ch08.drop_labels",
    solution=_drop_labels,
    wrong=_wrong_drop_labels,
    hint="draw one Bernoulli(p) per sample, not one per batch.",
)
def check_drop_labels(fn) -> str:
    """``fn(y, p, null, generator)`` replaces each label of ``y`` (shape ``(B,)``) by
    ``null`` independently with probability ``p``, leaving the others unchanged."""
    import math

    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (1000,), generator=gen)
    p, fractions = 0.2, []
    for _ in range(30):
        out = fn(y.clone(), p, 10, gen)
        if out is None:
            raise Mistake("return the labels after dropout instead of None.")
        out = torch.as_tensor(out)
        if out.shape != y.shape:
            raise Mistake(f"return labels of shape {tuple(y.shape)}, got {tuple(out.shape)}.")
        kept = out != 10
        if not torch.equal(out[kept], y[kept]):
            raise Mistake("labels that are not dropped must stay as they were.")
        fractions.append(float((~kept).double().mean()))
    if all(f in (0.0, 1.0) for f in fractions):
        raise Mistake(
            "every batch was either fully conditional or fully unconditional: that is one coin "
            "per batch. Each sample needs its own coin, so that every step trains both tasks."
        )
    se = math.sqrt(p * (1 - p) / 1000)
    for f in fractions:
        if abs(f - p) > 5 * se:
            raise Mistake(
                f"a batch had {f:.1%} null labels; with p = {p:.0%} expect {p:.0%} ± {se:.1%}."
            )
    return (
        "each label is dropped with its own probability p: every batch trains the conditional "
        "and the unconditional task together, in the ratio 1 − p : p."
    )


# ------------------------------------------------------------ predict: w = 4
W4_CHOICES = {
    "a": "as concentrated as the guided ODE's samples",
    "b": "close to p(x|y): in class, with little loss of spread",
    "c": "pushed out of class y",
    "d": "more concentrated than the guided ODE's samples",
}


@exercise(
    "ch08.predict_w4",
    solution="b",
    wrong="a",
    hint="after the noise level where p_t(y | x_t) ≈ 1 on the class, the guided field is the "
    "conditional one; what does the SDE's fresh noise do to a mode that guidance squeezed?",
)
def check_predict_w4(prediction) -> str:
    """The learner predicts what DDPM's ancestral sampler (an SDE) with the exact guided
    noise predictor produces at ``w = 4`` on two well-separated, symmetric classes,
    compared with the guided ODE (a letter of :data:`W4_CHOICES`)."""
    if prediction is None:
        raise NotImplementedError
    choice = str(prediction).strip().lower().strip("()")
    if choice not in W4_CHOICES:
        raise Mistake(f"answer with one letter of {', '.join(W4_CHOICES)}.")
    if choice in ("a", "d"):
        raise Mistake(
            "both samplers follow the same guided field, but only the ODE carries the squeeze "
            "to the data unchanged: late in the chain the guided field equals the conditional "
            "one, and the SDE's noise re-spreads each mode towards p(x|y)."
        )
    if choice == "c":
        raise Mistake("the guided score points *up* p_t(y | x_t): deeper into class y, not out.")
    return (
        "close to p(x|y): once p_t(y | x_t) ≈ 1 on the class the guided field is the "
        "conditional one, and the SDE's noise undoes the squeeze within each mode (the data-"
        "processing inequality). What guidance does to the *weights* of modes survives in "
        "both samplers — the symmetric modes here have none to change."
    )
