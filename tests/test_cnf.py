"""Continuous normalizing flows: divergences, Hutchinson's variance, the exact likelihood of
a known flow, the regularisers, and adjoint gradients against backpropagation."""

import math

import pytest
import torch
from torch import nn

from course_lib import cnf, toys
from course_lib import flow_matching as fm
from course_lib.nets import MLP


class Linear(nn.Module):
    """``v(x, t) = A x + b``: divergence ``tr A`` everywhere, Jacobian ``A``."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T + self.b


def _matrix(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("probe", cnf.PROBES)
def test_hutchinson_mean_and_variance_match_the_closed_form(probe: str) -> None:
    a = _matrix(5, 0)
    n = 200_000
    e = cnf.draw_probe((n, 5), probe, torch.Generator().manual_seed(1), torch.float64)
    values = ((e @ a) * e).sum(1)  # εᵀ A ε per probe
    var = cnf.hutchinson_variance(a, probe)
    se_mean = math.sqrt(var / n)
    assert abs(float(values.mean()) - float(torch.trace(a))) < 4 * se_mean
    # the sample variance's relative standard error is about sqrt(2 / n) times a kurtosis
    # factor of order one here: 5% is more than ten of them
    assert float(values.var()) == pytest.approx(var, rel=0.05)


def test_rademacher_beats_gaussian_and_is_exact_for_diagonal_matrices() -> None:
    a = _matrix(6, 2)
    assert cnf.hutchinson_variance(a, "rademacher") < cnf.hutchinson_variance(a, "gaussian")
    d = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    assert cnf.hutchinson_variance(d, "rademacher") == 0.0
    assert cnf.hutchinson_variance(d, "gaussian") == pytest.approx(2 * (1 + 4 + 9 + 16))
    # an antisymmetric part does not enter εᵀ A ε
    skew = _matrix(4, 3) - _matrix(4, 3).T
    assert cnf.hutchinson_variance(skew, "gaussian") == pytest.approx(0.0, abs=1e-12)


def test_dynamics_of_a_linear_field() -> None:
    a, b = _matrix(3, 4), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    e = cnf.draw_probe((7, 3), "gaussian", torch.Generator().manual_seed(6), torch.float64)
    for divergence, want in [
        ("exact", torch.trace(a).expand(7)),
        ("hutchinson", ((e @ a) * e).sum(1)),
    ]:
        dyn = cnf.CNFDynamics(Linear(a, b), divergence)
        dyn.probe = e
        v, div, kinetic, jacobian = dyn(t, (x, torch.zeros(7)))
        torch.testing.assert_close(v, x @ a.T + b)
        torch.testing.assert_close(div, want)
        torch.testing.assert_close(kinetic, ((x @ a.T + b) ** 2).sum(1))
        torch.testing.assert_close(jacobian, ((e @ a) ** 2).sum(1))  # ‖εᵀ A‖²
    assert dyn.nfe == 1


def test_log_prob_of_the_exact_mixture_flow_is_the_mixture_log_prob() -> None:
    """Chapter 6's exact linear-path velocity carries N(0, I) to the mixture, so the CNF's
    change of variables must return the mixture's own log-density."""
    gm = toys.twin("gaussians8")
    u = fm.exact_velocity(gm, fm.linear_path())

    class Exact(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return u(x, t)

    x = gm.sample(30, torch.Generator().manual_seed(7)).double()
    with torch.no_grad():
        res = cnf.log_prob(
            Exact(), x, rtol=1e-7, atol=1e-7, generator=torch.Generator().manual_seed(1)
        )
    torch.testing.assert_close(res.log_p, gm.log_prob(x), rtol=0, atol=1e-4)
    torch.testing.assert_close(res.log_p, res.prior + res.delta)
    assert res.nfe > 10
    # a wrong prior shifts every log-likelihood by the same known amount
    with torch.no_grad():
        shifted = cnf.log_prob(
            Exact(),
            x,
            lambda z: cnf.standard_normal_log_prob(z) + 1.0,
            rtol=1e-7,
            atol=1e-7,
            generator=torch.Generator().manual_seed(1),  # the same probe: the same steps
        )
    torch.testing.assert_close(shifted.log_p, res.log_p + 1.0, rtol=0, atol=1e-6)


def test_log_prob_and_regularisers_of_simple_flows() -> None:
    """``v = A x``: ``log p_1(x) = log N(e^{-A} x) - tr A`` (the flow map is ``e^{tA}``);
    the Hutchinson version is ``-εᵀ A ε`` per sample, unbiased. A constant field
    ``v = c`` has kinetic energy ``‖c‖²`` and no Jacobian."""
    a = 0.5 * _matrix(2, 8)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    net = Linear(a, torch.zeros(2, dtype=torch.float64))
    with torch.no_grad():
        exact = cnf.log_prob(net, x, rtol=1e-9, atol=1e-9)
        hutch = cnf.log_prob(
            net, x, divergence="hutchinson", generator=torch.Generator().manual_seed(10)
        )
    z = x @ torch.linalg.matrix_exp(-a).T
    torch.testing.assert_close(exact.z, z, rtol=0, atol=1e-6)
    want = cnf.standard_normal_log_prob(z) - torch.trace(a)
    torch.testing.assert_close(exact.log_p, want, rtol=0, atol=1e-6)
    var = cnf.hutchinson_variance(a, "rademacher")
    err = float((hutch.delta - exact.delta).mean())
    assert abs(err) < 4 * math.sqrt(var / 50) + 1e-6
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    const = Linear(torch.zeros(2, 2, dtype=torch.float64), c)
    with torch.no_grad():
        res = cnf.log_prob(const, x, method="rk4", n_steps=4)
    torch.testing.assert_close(res.kinetic, torch.full((50,), 5.0, dtype=torch.float64))
    torch.testing.assert_close(res.jacobian, torch.zeros(50, dtype=torch.float64))
    torch.testing.assert_close(res.z, x - c)


@pytest.mark.parametrize("divergence", cnf.DIVERGENCES)
def test_adjoint_gradients_equal_backpropagation(divergence: str) -> None:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16, depth=1, time_scale=1.0).double()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        net.zero_grad()
        loss = cnf.mle_loss(
            net, x, kinetic_weight=0.1, jacobian_weight=0.1, divergence=divergence,
            adjoint=adjoint, rtol=1e-7, atol=1e-7, generator=torch.Generator().manual_seed(12),
        )  # fmt: skip
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    # both are gradients of the same solve up to the solver's tolerance (measured ~4e-5)
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-3
    assert float(grads[0].norm()) > 1e-3  # a gradient that is there at all


def test_bad_input() -> None:
    net = Linear(torch.eye(2), torch.zeros(2))
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="Unknown method"):
        cnf.log_prob(net, x, method="rk45")
    with pytest.raises(ValueError, match="Unknown divergence"):
        cnf.log_prob(net, x, divergence="trace")
    with pytest.raises(ValueError, match="Unknown probe"):
        cnf.log_prob(net, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match=r"shape \(B, D"):
        cnf.log_prob(net, torch.zeros(4))

    class Nan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.w * x * float("nan")

    with pytest.raises(FloatingPointError, match="regulariser"):
        cnf.mle_loss(Nan(), x, method="euler", n_steps=2)
