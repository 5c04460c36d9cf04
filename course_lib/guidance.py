"""Guidance (chapter 8): conditional scores, classifier guidance and classifier-free
guidance, with exact answers on a labelled Gaussian mixture.

Bayes' rule for scores at every noise level (Song et al. 2021, §I; Dhariwal & Nichol
2021, §4):

    ∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x).

*Classifier guidance* scales the classifier's term, ``∇ log p_t(x) + s ∇ log p_t(y | x)``
(Dhariwal & Nichol 2021, Algorithm 1); *classifier-free guidance* extrapolates from an
unconditional to a conditional prediction of the same network (Ho & Salimans 2022,
eq. 6, the course's ``w``):

    ε̃ = (1 + w) ε(x, c) − w ε(x, ∅),

the same combination for a score, an ``x₀``-prediction or a velocity, since each is an
affine function of the score at a fixed noise level. Both are the score of the *tilted*
density ``p_t(x | y)^{1+w} p_t(x)^{-w} ∝ p_t(x) p_t(y | x)^{1+w}`` (with ``s = 1 + w``) —
at every noise level separately, which is not the same as noising the tilted data
density: chapter 8 measures the difference exactly on a :class:`LabelledMixture`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from course_lib import ddpm
from course_lib import flow_matching as fm
from course_lib.flow_matching import AffinePath
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.schedules import DiscreteSchedule

#: the guidance strength conventions :func:`convert_guidance` knows:
#: ``"w"`` — Ho & Salimans 2022: ``(1 + w) ε_c − w ε_∅`` (``w = 0``: the conditional model);
#: ``"scale"`` — ``ε_∅ + s (ε_c − ε_∅) = (1 − s) ε_∅ + s ε_c`` (``s = 1 + w``: the
#: ``guidance_scale`` of the diffusers library, and the exponent of ``p(x|y)^s p(x)^{1−s}``);
#: ``"classifier"`` — Dhariwal & Nichol's classifier scale in
#: ``∇log p(x) + s ∇log p(y|x)``, the same number as ``"scale"`` for an exact classifier.
CONVENTIONS: tuple[str, ...] = ("w", "scale", "classifier")


def convert_guidance(value: float, source: str, target: str) -> float:
    """Convert a guidance strength between :data:`CONVENTIONS` (``s = 1 + w``)."""
    for name in (source, target):
        if name not in CONVENTIONS:
            raise ValueError(
                f"Unknown guidance convention {name!r}; valid: {', '.join(CONVENTIONS)}."
            )
    w = value if source == "w" else value - 1.0
    return w if target == "w" else w + 1.0


def guided(conditional: torch.Tensor, unconditional: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance in the course's convention: ``(1 + w) c − w u`` for any
    prediction that is affine in the score (``ε``, ``x₀``, velocity, score)."""
    return (1 + w) * conditional - w * unconditional


ConditionalModel = Callable[..., torch.Tensor]  # model(x, t, y) -> prediction


def guided_model(
    model: ConditionalModel, y: torch.Tensor | int, w: float, null_label: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A conditional network ``model(x, t, y)`` (ε, ``x₀`` or velocity) as the guided
    ``(x, t) -> (1 + w) model(x, t, y) − w model(x, t, ∅)`` that every sampler of the course
    accepts. The conditional and unconditional passes run as one batch of ``2B``; ``w = 0``
    skips the unconditional pass."""

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        labels = torch.as_tensor(y, device=x.device).long().expand(b)
        t_b = torch.as_tensor(t, device=x.device).expand(b)
        if w == 0:
            return model(x, t_b, labels)
        null = torch.full_like(labels, null_label)
        both = model(torch.cat([x, x]), torch.cat([t_b, t_b]), torch.cat([labels, null]))
        return guided(both[:b], both[b:], w)

    return predict


def classifier_guided_eps(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    log_classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: DiscreteSchedule,
    y: int,
    s: float,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Classifier guidance for a noise predictor (Dhariwal & Nichol 2021, §4):
    ``ε̃(x_t) = ε(x_t) − s √(1 − ᾱ_t) ∇ log p_φ(y | x_t)``, i.e. the score
    ``∇log p_t(x) + s ∇log p_φ(y | x_t)`` written as a noise prediction. ``log_classifier(x_t,
    t / T)`` returns ``log p_φ(· | x_t)`` of shape ``(B, C)``; its gradient is taken by
    autograd. Both models take chapter 3's ``t / T``."""

    def predict(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        tau_b = torch.as_tensor(tau, device=x.device).expand(x.shape[0])
        k = ddpm.step_index(schedule, tau_b)
        noise_scale = schedule.sigma[k]  # √(1 − ᾱ_t), chapter 3's noise scale of x_t
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            log_p = log_classifier(xr, tau_b)[:, y].sum()
            (grad,) = torch.autograd.grad(log_p, xr)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return eps_model(x, tau_b) - s * noise_scale.to(x).reshape(shape) * grad.detach()

    return predict


def drop_labels(
    y: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Label dropout for classifier-free guidance training: each label of the batch is
    replaced by ``null_label`` independently with probability ``p_uncond`` (Ho & Salimans
    2021, Algorithm 1). Per sample, never per batch: dropping the whole batch at once
    gives the unconditional task whole steps of its own, and the two tasks' gradients
    no longer share a batch."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


@dataclass(frozen=True)
class LabelledMixture:
    """A Gaussian mixture whose components carry class labels: ``labels[k]`` is the class
    of component ``k``, and class ``y`` is the mixture of its components, so that every
    conditional and unconditional quantity is exact at every noise level."""

    mixture: GaussianMixture
    labels: torch.Tensor  # (K,) integers in [0, n_classes)

    def __post_init__(self) -> None:
        labels = torch.as_tensor(self.labels, dtype=torch.long)
        if labels.shape != (self.mixture.n_components,):
            raise ValueError(
                f"labels must have one entry per component ({self.mixture.n_components}), "
                f"got shape {tuple(labels.shape)}"
            )
        if labels.min() < 0 or not set(range(int(labels.max()) + 1)) <= set(labels.tolist()):
            raise ValueError("labels must be 0, 1, ..., C - 1, each class with a component")
        object.__setattr__(self, "labels", labels)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1

    def prior(self) -> torch.Tensor:
        """``p(y)``, shape ``(C,)``: the total weight of each class's components."""
        return torch.zeros(self.n_classes, dtype=torch.float64).index_add_(
            0, self.labels, self.mixture.weights
        )

    def conditional(self, y: int) -> GaussianMixture:
        """``p(x | y)``: the components of class ``y`` with their weights renormalised."""
        keep = self.labels == y
        m = self.mixture
        return GaussianMixture(m.weights[keep], m.means[keep], m.covariances[keep])

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples and their class labels."""
        x, k = self.mixture.sample_with_labels(n, generator)
        return x, self.labels[k]

    def class_log_prob(self, x_t: torch.Tensor, a: float, s: float) -> torch.Tensor:
        """``log p_t(y | x_t)`` for every class, shape ``(B, C)``, where ``x_t = a x + s ε``:
        Bayes' rule on the noised components, ``p_t(y | x_t) = Σ_{k ∈ y} r_k(x_t)``."""
        r = self.mixture.noised(a, s).responsibilities(x_t.double())  # (B, K)
        onehot = torch.nn.functional.one_hot(self.labels, self.n_classes).double()
        return torch.log(r @ onehot)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The Bayes classifier of clean data, ``argmax_y p(y | x)``, shape ``(B,)``."""
        return self.class_log_prob(x, 1.0, 0.0).argmax(1)

    def conditional_score(self, x_t: torch.Tensor, a: float, s: float, y: int) -> torch.Tensor:
        """``∇ log p_t(x_t | y)``: the score of class ``y``'s noised mixture."""
        return self.conditional(y).noised_score(x_t, a, s)

    def classifier_grad(self, x_t: torch.Tensor, a: float, s: float, y: int) -> torch.Tensor:
        """``∇ log p_t(y | x_t) = ∇ log p_t(x_t | y) − ∇ log p_t(x_t)`` (Bayes' rule; the
        prior ``p(y)`` does not depend on ``x``)."""
        return self.conditional_score(x_t, a, s, y) - self.mixture.noised_score(x_t, a, s)

    def guided_score(self, x_t: torch.Tensor, a: float, s: float, y: int, w: float) -> torch.Tensor:
        """The exact classifier-free-guided score ``(1 + w) ∇log p_t(x|y) − w ∇log p_t(x)``."""
        return guided(self.conditional_score(x_t, a, s, y), self.mixture.noised_score(x_t, a, s), w)

    def tilted_log_density(self, x: torch.Tensor, y: int, w: float) -> torch.Tensor:
        """``log p(x | y)^{1+w} p(x)^{-w}`` *unnormalised*, at the data level: the density
        guided sampling would reach if guidance tilted the data distribution itself.
        Normalise it on a grid (:func:`normalise_on_grid`)."""
        return (1 + w) * self.conditional(y).log_prob(x) - w * self.mixture.log_prob(x)


def exact_guided_eps(
    lm: LabelledMixture, schedule: DiscreteSchedule, y: int, w: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact guided noise predictor of chapter 3's chain, ``model(x_t, t / T)``:
    ``ε̃ = (1 + w) ε*(x_t | y) − w ε*(x_t)`` with ``ε* = −√(1 − ᾱ_t) ∇log p_t``
    (:func:`course_lib.ddpm.exact_model` of the class and of the whole mixture)."""
    cond, uncond = (
        ddpm.exact_model(lm.conditional(y), schedule),
        ddpm.exact_model(lm.mixture, schedule),
    )
    return lambda x, t: guided(cond(x, t), uncond(x, t), w)


def exact_log_classifier(
    lm: LabelledMixture, schedule: DiscreteSchedule
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The Bayes-optimal noise-aware classifier of chapter 3's chain: ``(x_t, t / T) ->
    log p_t(y | x_t)`` for all classes, ``(B, C)``, one noise level per batch."""

    def log_classifier(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        k = ddpm.step_index(schedule, torch.as_tensor(tau).expand(x.shape[0]))
        if not (k == k[0]).all():
            raise ValueError("exact_log_classifier takes one noise level per batch")
        a, s = float(schedule.sqrt_alpha_bar[k[0]]), float(schedule.sigma[k[0]])
        return lm.class_log_prob(x, a, s).to(x.dtype)

    return log_classifier


def exact_guided_velocity(
    lm: LabelledMixture, path: AffinePath, y: int, w: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact guided velocity of a flow on ``path`` (chapter 6):
    ``(1 + w) u_t(x | y) − w u_t(x)``."""
    cond = fm.exact_velocity(lm.conditional(y), path)
    uncond = fm.exact_velocity(lm.mixture, path)
    return lambda x, t: guided(cond(x, t), uncond(x, t), w)


# ------------------------------------------------------------ inverse problems
def observation_posterior(
    gm: GaussianMixture, a_obs: torch.Tensor, y: torch.Tensor, noise_std: float
) -> GaussianMixture:
    """``p(x | y)`` for a mixture prior and a linear observation ``y = A x + n``,
    ``n ~ N(0, noise_std² I)``, in closed form: each component becomes
    ``N(m_k', C_k')`` with ``C_k' = (C_k⁻¹ + AᵀA/σ_y²)⁻¹``, ``m_k' = C_k'(C_k⁻¹ μ_k + Aᵀy/σ_y²)``,
    weighted by ``w_k N(y; A μ_k, A C_k Aᵀ + σ_y² I)`` (Bishop 2006, §2.3.3). Inpainting is
    ``A`` = the rows of the identity for the observed coordinates."""
    a_obs = torch.as_tensor(a_obs, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if a_obs.ndim != 2 or a_obs.shape[1] != gm.dim or y.shape != (a_obs.shape[0],):
        raise ValueError(
            f"A must be (M, {gm.dim}) and y (M,), got {tuple(a_obs.shape)} and {tuple(y.shape)}"
        )
    if noise_std <= 0:
        raise ValueError(
            f"noise_std must be positive (use a small value for exact data), got {noise_std}"
        )
    var = noise_std**2
    c_inv = torch.linalg.inv(gm.covariances)  # (K, D, D)
    post_cov = torch.linalg.inv(c_inv + (a_obs.T @ a_obs)[None] / var)
    rhs = torch.einsum("kij,kj->ki", c_inv, gm.means) + (a_obs.T @ y)[None] / var
    post_mean = torch.einsum("kij,kj->ki", post_cov, rhs)
    obs_cov = a_obs[None] @ gm.covariances @ a_obs.T[None] + var * torch.eye(len(y))[None]
    evidence = torch.distributions.MultivariateNormal(gm.means @ a_obs.T, obs_cov).log_prob(y)
    log_w = torch.log(gm.weights) + evidence
    weights = torch.softmax(log_w, 0)
    return GaussianMixture(weights, post_mean, 0.5 * (post_cov + post_cov.transpose(1, 2)))


def noised_observation_log_likelihood(
    gm: GaussianMixture,
    a_obs: torch.Tensor,
    y: torch.Tensor,
    noise_std: float,
    x_t: torch.Tensor,
    a: float,
    s: float,
) -> torch.Tensor:
    """``log p_t(y | x_t)`` for ``x_t = a x + s ε``: within component ``k``, ``x`` given
    ``x_t`` is Gaussian with mean ``m_k(x_t) = μ_k + a C_k S_k⁻¹(x_t − a μ_k)`` and covariance
    ``V_k = C_k − a² C_k S_k⁻¹ C_k`` (``S_k = a² C_k + s² I``), so
    ``p_t(y | x_t) = Σ_k r_k(x_t) N(y; A m_k(x_t), A V_k Aᵀ + σ_y² I)``. Its gradient is the
    term the conditional-score identity adds for an inverse problem,
    ``∇ log p_t(x_t | y) = ∇ log p_t(x_t) + ∇ log p_t(y | x_t)``; shape ``(B,)``."""
    a_obs = torch.as_tensor(a_obs, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    x = x_t.to(torch.float64)
    eye = torch.eye(gm.dim, dtype=torch.float64)
    big_s = a**2 * gm.covariances + s**2 * eye  # (K, D, D)
    gain = a * gm.covariances @ torch.linalg.inv(big_s)  # a C_k S_k⁻¹
    m = gm.means[None] + torch.einsum("kij,bkj->bki", gain, x[:, None] - a * gm.means[None])
    v = gm.covariances - a * gain @ gm.covariances
    obs_cov = a_obs[None] @ v @ a_obs.T[None] + noise_std**2 * torch.eye(len(y))[None]
    obs_cov = 0.5 * (obs_cov + obs_cov.transpose(1, 2))
    log_lik = torch.distributions.MultivariateNormal(m @ a_obs.T, obs_cov[None]).log_prob(y)
    log_r = torch.log(gm.noised(a, s).responsibilities(x))
    return torch.logsumexp(log_r + log_lik, 1)


@torch.no_grad()
def inpaint_flow(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    observed: torch.Tensor,
    mask: torch.Tensor,
    path: AffinePath,
    n_steps: int = 50,
) -> torch.Tensor:
    """Inpainting with an unconditional flow by *replacement* (the flow version of the
    imputation trick of Song et al. 2021, App. I.2, also used by RePaint): Euler steps of
    ``velocity`` from ``z`` at ``t = 0``, and after each step the observed entries (``mask``
    true) are overwritten by the conditional path of the observation itself,
    ``x_t = α_t x_obs + σ_t z``, with the same noise ``z``. Cheap and gradient-free, but an
    approximation: the unobserved entries are conditioned on the noisy observed entries
    ``α_t x_obs + σ_t z``, not on ``x_obs``, and never feel ``∇ log p_t(y | x_t)``;
    :func:`noised_observation_log_likelihood` gives the exact term on a mixture."""
    mask = mask.to(torch.bool).expand_as(z)
    grid = torch.linspace(0.0, path.t_max, n_steps + 1, dtype=torch.float64)
    observed = observed.expand_as(z).to(z.dtype)

    def replace(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        known = (path.alpha(t) * observed + path.sigma(t) * z).to(z.dtype)
        return torch.where(mask, known, x)

    x = replace(z, grid[0])
    for i in range(n_steps):
        t = grid[i].expand(z.shape[0]).to(z.dtype)
        x = x + (grid[i + 1] - grid[i]).to(z.dtype) * velocity(x, t)
        x = replace(x, grid[i + 1])
    return x


def normalise_on_grid(log_density: torch.Tensor, cell_area: float) -> torch.Tensor:
    """Turn unnormalised log-densities on a regular grid into log-densities that sum to
    one over the grid (``Σ exp(log p) · cell_area = 1``)."""
    return (
        log_density
        - torch.logsumexp(log_density.flatten(), 0)
        - torch.log(torch.tensor(cell_area, dtype=log_density.dtype))
    )
