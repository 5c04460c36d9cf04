"""The course's ground truth: a Gaussian mixture and everything about it in closed form.

If ``x0 ~ sum_k w_k N(mu_k, C_k)`` and ``x_t = a * x0 + s * eps`` with ``eps ~ N(0, I)``,
then ``x_t ~ sum_k w_k N(a mu_k, a^2 C_k + s^2 I)``: again a Gaussian mixture. So for
any noise level the course knows exactly

* the noised density ``p_t`` and its score ``grad log p_t`` (:meth:`GaussianMixture.noised_score`),
* the optimal denoiser ``E[x0 | x_t]`` (:meth:`GaussianMixture.optimal_denoiser`),
  from which the optimal noise prediction, velocity and flow field follow,
* log-likelihoods (:meth:`GaussianMixture.log_prob`).

Samplers, losses and likelihood routines are tested against these answers. All
computations run in float64 and return the dtype of the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from course_lib.tensors import expand_like


@dataclass(frozen=True)
class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, C_k)``.

    Args:
        weights: ``(K,)``, positive, summing to one (normalised on construction).
        means: ``(K, D)``.
        covariances: ``(K, D, D)``, symmetric positive definite.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        mu = torch.as_tensor(self.means, dtype=torch.float64)
        cov = torch.as_tensor(self.covariances, dtype=torch.float64)
        if w.ndim != 1 or mu.ndim != 2 or cov.ndim != 3:
            raise ValueError(
                "GaussianMixture needs weights (K,), means (K, D), covariances (K, D, D); "
                f"got shapes {tuple(w.shape)}, {tuple(mu.shape)}, {tuple(cov.shape)}"
            )
        k, d = mu.shape
        if w.shape[0] != k or cov.shape != (k, d, d):
            raise ValueError(
                f"inconsistent shapes: weights {tuple(w.shape)}, means {tuple(mu.shape)}, "
                f"covariances {tuple(cov.shape)} (expected ({k},), ({k}, {d}), ({k}, {d}, {d}))"
            )
        if (w <= 0).any():
            raise ValueError("mixture weights must be positive")
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "means", mu)
        object.__setattr__(self, "covariances", cov)
        try:
            object.__setattr__(self, "_chol", torch.linalg.cholesky(cov))
        except RuntimeError as err:
            raise ValueError("every covariance must be positive definite") from err

    @classmethod
    def isotropic(
        cls,
        weights: torch.Tensor | list[float],
        means: torch.Tensor | list,
        std: float | list[float],
    ) -> GaussianMixture:
        """A mixture of ``N(mu_k, std_k^2 I)`` components."""
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        std_t = torch.as_tensor(std, dtype=torch.float64).expand(mu.shape[0])
        eye = torch.eye(mu.shape[1], dtype=torch.float64)
        return cls(torch.as_tensor(weights), mu, std_t[:, None, None] ** 2 * eye)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        """``E[x] = sum_k w_k mu_k``, shape ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """``Cov[x] = sum_k w_k (C_k + mu_k mu_k^T) - E[x] E[x]^T``, shape ``(D, D)``."""
        second = torch.einsum("k,kij->ij", self.weights, self.covariances) + torch.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        m = self.mean()
        return second - torch.outer(m, m)

    # ----------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, float32 of shape ``(n, D)``: pick ``k ~ w``, then
        ``x = mu_k + L_k z`` with ``C_k = L_k L_k^T`` and ``z ~ N(0, I)``."""
        return self.sample_with_labels(n, generator)[0]

    def sample_with_labels(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and the index of the component each came from."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self._chol[k], z)
        return x.float(), k

    # ---------------------------------------------------- densities at one level
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)``, shape ``(B,)`` for ``x`` of shape ``(B, D)``."""
        return self.noised_log_prob(x, 1.0, 0.0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``grad_x log p(x) = sum_k r_k(x) C_k^{-1} (mu_k - x)`` with responsibilities
        ``r_k(x) = w_k N(x; mu_k, C_k) / p(x)``; shape ``(B, D)``."""
        return self.noised_score(x, 1.0, 0.0)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``r_k(x) = p(k | x)``, shape ``(B, K)``."""
        return self._components(x, 1.0, 0.0)[0].exp().to(x)

    def noised(self, a: float, s: float) -> GaussianMixture:
        """The law of ``a * x0 + s * eps``: ``sum_k w_k N(a mu_k, a^2 C_k + s^2 I)``."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covariances + s**2 * eye)

    # ------------------------------------------- noised quantities, per sample
    def noised_log_prob(
        self, x_t: torch.Tensor, a: float | torch.Tensor, s: float | torch.Tensor
    ) -> torch.Tensor:
        """``log p_t(x_t)`` for ``x_t = a x0 + s eps``; ``a``, ``s`` scalars or ``(B,)``."""
        log_p = self._components(x_t, a, s)[1]
        return log_p.to(x_t)

    def noised_score(
        self, x_t: torch.Tensor, a: float | torch.Tensor, s: float | torch.Tensor
    ) -> torch.Tensor:
        """``grad log p_t(x_t) = sum_k r_k(x_t) S_k^{-1} (a mu_k - x_t)`` with
        ``S_k = a^2 C_k + s^2 I``; ``a``, ``s`` scalars or shape ``(B,)``."""
        log_r, _, _, sinv_diff, _ = self._components(x_t, a, s)
        return -(log_r.exp()[..., None] * sinv_diff).sum(1).to(x_t)

    def optimal_denoiser(
        self, x_t: torch.Tensor, a: float | torch.Tensor, s: float | torch.Tensor
    ) -> torch.Tensor:
        """``E[x0 | a x0 + s eps = x_t]``, the minimiser of ``E||D(x_t) - x0||^2``.

        Per component, ``E[x0 | x_t, k] = mu_k + a C_k S_k^{-1} (x_t - a mu_k)``;
        these are averaged with the responsibilities ``r_k(x_t)`` under ``p_t``.
        Equivalently (Tweedie), ``E[x0 | x_t] = (x_t + s^2 grad log p_t(x_t)) / a``
        when ``a > 0``. Shape ``(B, D)``.
        """
        log_r, _, a_b, sinv_diff, _ = self._components(x_t, a, s)
        # (B, K, D): mu_k + a C_k S_k^{-1} (x_t - a mu_k)
        post = self.means[None] + a_b[:, None, None] * torch.einsum(
            "kij,bkj->bki", self.covariances, sinv_diff
        )
        return (log_r.exp()[..., None] * post).sum(1).to(x_t)

    def marginal_velocity(
        self,
        x_t: torch.Tensor,
        a: float | torch.Tensor,
        s: float | torch.Tensor,
        a_dot: float | torch.Tensor,
        s_dot: float | torch.Tensor,
    ) -> torch.Tensor:
        """The marginal velocity of an affine path ``x_t = a x1 + s x0`` (flow letters:
        ``x1`` from this mixture, ``x0 ~ N(0, I)``) moving with ``ȧ``, ``ṡ``:

        ``u(x_t) = E[ȧ x1 + ṡ x0 | x_t] = ȧ E[x1 | x_t] - ṡ s ∇log p_t(x_t)``,

        the conditional velocities averaged with the posterior (Lipman et al. 2023,
        eq. 8), where ``E[x0 | x_t] = -s ∇log p_t(x_t)`` is Tweedie's formula for the
        noise. Finite at ``s = 0`` (the data end). Shape ``(B, D)``.
        """
        b = x_t.shape[0]
        a_dot_b = torch.as_tensor(a_dot, dtype=torch.float64).expand(b)[:, None]
        s_dot_b = torch.as_tensor(s_dot, dtype=torch.float64).expand(b)[:, None]
        s_b = torch.as_tensor(s, dtype=torch.float64).expand(b)[:, None]
        x1_hat = self.optimal_denoiser(x_t.to(torch.float64), a, s)
        score = self.noised_score(x_t.to(torch.float64), a, s)
        coef = [c.to(x1_hat.device) for c in (a_dot_b, s_dot_b, s_b)]
        return (coef[0] * x1_hat - coef[1] * coef[2] * score).to(x_t)

    def _components(
        self, x_t: torch.Tensor, a: float | torch.Tensor, s: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """On the CPU in float64: log responsibilities ``(B, K)``, ``log p_t`` ``(B,)``,
        ``a`` as ``(B,)``, ``S_k^{-1}(x_t - a mu_k)`` ``(B, K, D)`` and the component log
        densities."""
        if x_t.ndim != 2 or x_t.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (B, {self.dim}), got {tuple(x_t.shape)}")
        x = x_t.to(torch.float64).cpu()  # differentiable: autograd checks use it
        b = x.shape[0]
        a_b = expand_like(torch.as_tensor(a, dtype=torch.float64).cpu(), x[:, 0]).expand(b)
        s_b = expand_like(torch.as_tensor(s, dtype=torch.float64).cpu(), x[:, 0]).expand(b)
        eye = torch.eye(self.dim, dtype=torch.float64)
        if torch.as_tensor(a).ndim == 0 and torch.as_tensor(s).ndim == 0:
            # one noise level for the batch: factor K covariances, not B * K
            cov = (a_b[0] ** 2 * self.covariances + s_b[0] ** 2 * eye)[None]  # (1, K, D, D)
        else:
            cov = (
                a_b[:, None, None, None] ** 2 * self.covariances[None]
                + s_b[:, None, None, None] ** 2 * eye
            )  # (B, K, D, D)
        chol = torch.linalg.cholesky(cov)
        # S_k^{-1} once per component (per sample only when the noise level varies):
        # a batched matmul is far cheaper than B * K triangular solves
        sinv = torch.cholesky_inverse(chol)  # (1 or B, K, D, D)
        diff = x[:, None, :] - a_b[:, None, None] * self.means[None]  # (B, K, D)
        if sinv.shape[0] == 1:
            sinv_diff = torch.einsum("kij,bkj->bki", sinv[0], diff)  # (B, K, D)
        else:
            sinv_diff = torch.einsum("bkij,bkj->bki", sinv, diff)
        mahalanobis = (diff * sinv_diff).sum(-1)  # (B, K)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (1 or B, K)
        log_comp = -0.5 * (mahalanobis + logdet + self.dim * math.log(2 * math.pi))
        log_joint = torch.log(self.weights)[None] + log_comp
        log_p = torch.logsumexp(log_joint, dim=1)
        log_r = log_joint - log_p[:, None]
        return log_r, log_p, a_b, sinv_diff, log_comp
