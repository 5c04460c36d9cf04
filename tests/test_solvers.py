"""Tests for :mod:`course_lib.solvers`: quadrature known answers, measured orders of
convergence, adaptive accuracy against tolerance, NFE counts, trajectories, SDE steps."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import solvers

# dx/dt = A (1 + t) x with A a damped rotation: non-autonomous, so a stage evaluated at the
# wrong time costs an order; exact solution x(1) = exp(1.5 A) x(0)
A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
X0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
EXACT = X0 @ torch.linalg.matrix_exp(1.5 * A).T
ORDERS = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}
NFE_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


def rotating(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    assert t.shape == (x.shape[0],)  # the course's model signature
    return (1 + t)[:, None] * (x @ A.T.to(x))


def quadratic(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 3 * t[:, None] ** 2 * torch.ones_like(x)


class Counting:
    """A drift that counts its calls."""

    def __init__(self, f: solvers.Drift) -> None:
        self.f, self.calls = f, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.f(x, t)


def _uniform(n: int, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    return torch.linspace(t0, t1, n + 1, dtype=torch.float64)


# ----------------------------------------------------------------- known answers
@pytest.mark.parametrize("n", [1, 3, 10])
def test_quadrature_known_answers(n: int) -> None:
    """x' = 3t², x(0) = 0: each method is a quadrature rule with a closed-form error."""
    x0, h = torch.zeros(2, 1, dtype=torch.float64), 1 / n
    exact = {
        "rk4": 1.0,  # Simpson's rule: exact for cubics
        "heun": 1 + h**2 / 2,  # trapezoid: error (h²/12) ∫ f'' = h²/2
        "midpoint": 1 - h**2 / 4,  # midpoint: error -(h²/24) ∫ f'' = -h²/4
        "euler": 1 - 1.5 * h + 0.5 * h**2,  # left Riemann sum of 3t²
    }
    for method, want in exact.items():
        got = solvers.solve_ode(quadratic, x0, _uniform(n), method=method).x
        torch.testing.assert_close(got, torch.full_like(got, want), rtol=0, atol=1e-14)


def test_heun_exact_for_linear_integrand_and_rk4_on_any_grid() -> None:
    x0 = torch.zeros(1, 1, dtype=torch.float64)

    def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 2 * t[:, None] * torch.ones_like(x)

    grid = torch.tensor([0.0, 0.1, 0.45, 0.5, 1.0], dtype=torch.float64)  # uneven
    assert solvers.solve_ode(linear, x0, grid, method="heun").x.item() == pytest.approx(
        1, abs=1e-15
    )
    assert solvers.solve_ode(quadratic, x0, grid, method="rk4").x.item() == pytest.approx(
        1, abs=1e-15
    )
    # backwards, from t = 1 to 0: removes exactly the +1
    back = solvers.solve_ode(quadratic, x0 + 1, grid.flip(0), method="rk4").x.item()
    assert back == pytest.approx(0, abs=1e-15)


# ----------------------------------------------------------------- convergence orders
def _fitted_slope(method: str, ns: list[int]) -> float:
    errors = [
        (solvers.solve_ode(rotating, X0, _uniform(n), method=method).x - EXACT).abs().max()
        for n in ns
    ]
    log_h = torch.log(1 / torch.tensor(ns, dtype=torch.float64))
    log_e = torch.log(torch.stack(errors))
    centred = log_h - log_h.mean()
    return float((centred * (log_e - log_e.mean())).sum() / (centred**2).sum())


@pytest.mark.parametrize("method", list(ORDERS))
def test_measured_order_of_convergence(method: str) -> None:
    """Global error against h on a log-log plot has slope = the method's order."""
    ns = [16, 32, 64, 128, 256] if method != "rk4" else [8, 16, 32, 64]
    slope = _fitted_slope(method, ns)  # measured: 1.06, 2.04, 2.02, 3.97
    assert slope == pytest.approx(ORDERS[method], abs=0.1), slope


def test_final_euler_costs_one_order_only_in_the_last_step() -> None:
    # Heun with its last step Euler (EDM Algorithm 1): the last step's local error O(h²)
    # is the global error now, so the order drops to 1, but the result stays close
    full = solvers.solve_ode(rotating, X0, _uniform(64), method="heun")
    last_euler = solvers.solve_ode(rotating, X0, _uniform(64), method="heun", final_euler=True)
    assert last_euler.nfe == full.nfe - 1
    err_full = (full.x - EXACT).abs().max()
    err_last = (last_euler.x - EXACT).abs().max()
    assert err_full < err_last < 2e-3


# ----------------------------------------------------------------- NFE, trajectories
@pytest.mark.parametrize("method", list(ORDERS))
def test_nfe_is_counted_exactly(method: str) -> None:
    f = Counting(rotating)
    res = solvers.solve_ode(f, X0, _uniform(7), method=method)
    assert res.nfe == f.calls == 7 * NFE_PER_STEP[method]
    step_out, n = solvers.STEPPERS[method](rotating, X0, 0.0, 0.1)
    assert n == NFE_PER_STEP[method] and step_out.shape == X0.shape


def test_trajectory_recording() -> None:
    grid = _uniform(10, 1.0, 0.0)  # descending, like a sampler
    res = solvers.solve_ode(rotating, X0, grid, method="rk4", keep=1)
    assert res.trajectory.shape == (11, *X0.shape)
    torch.testing.assert_close(res.times.double(), grid)
    torch.testing.assert_close(res.trajectory[0], X0)
    torch.testing.assert_close(res.trajectory[-1], res.x)
    sparse = solvers.solve_ode(rotating, X0, grid, method="rk4", keep=4)
    assert sparse.times.tolist() == pytest.approx([1.0, 0.6, 0.2, 0.0])  # every 4th + last
    assert solvers.solve_ode(rotating, X0, grid).trajectory is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(dtype: torch.dtype) -> None:
    for method in ORDERS:
        assert (
            solvers.solve_ode(rotating, X0.to(dtype), _uniform(3), method=method).x.dtype == dtype
        )
    assert solvers.solve_ode_adaptive(rotating, X0.to(dtype), 0, 1).x.dtype == dtype


# ----------------------------------------------------------------- adaptive
def test_adaptive_error_follows_tolerance_and_nfe_is_counted() -> None:
    errors, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        f = Counting(rotating)
        res = solvers.solve_ode_adaptive(f, X0, 0.0, 1.0, rtol=tol, atol=tol)
        assert res.nfe == f.calls
        errors.append(float((res.x - EXACT).abs().max()))
        nfes.append(res.nfe)
        assert errors[-1] < 30 * tol, (tol, errors[-1])  # measured: 1.2-1.8 tol
    assert errors == sorted(errors, reverse=True) and nfes == sorted(nfes)
    # dopri5 is order 5: 1e4 times tighter costs about 10^(4/5) ~ 6x more steps
    assert 2 < nfes[-1] / nfes[1] < 20


def test_adaptive_backwards_and_keep_times() -> None:
    forward = solvers.solve_ode_adaptive(rotating, X0, 0.0, 1.0, rtol=1e-10, atol=1e-10)
    back = solvers.solve_ode_adaptive(rotating, forward.x, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back.x, X0, rtol=0, atol=1e-8)
    res = solvers.solve_ode_adaptive(
        rotating, X0, 0.0, 1.0, rtol=1e-10, atol=1e-10, keep_times=[0.25, 0.5]
    )
    assert res.times.tolist() == [0.0, 0.25, 0.5, 1.0]
    for t, x_t in zip(res.times.tolist(), res.trajectory, strict=True):
        exact = X0 @ torch.linalg.matrix_exp((t + t**2 / 2) * A).T  # ∫_0^t (1 + u) du
        torch.testing.assert_close(x_t, exact, rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", solvers.ADAPTIVE_METHODS)
def test_every_adaptive_method_solves_both_ways(method: str) -> None:
    tol = 1e-7  # measured errors: 3e-8 (dopri8) .. 4e-5 (fehlberg2, order 2)
    res = solvers.solve_ode_adaptive(rotating, X0, 0.0, 1.0, method=method, rtol=tol, atol=tol)
    back = solvers.solve_ode_adaptive(rotating, res.x, 1.0, 0.0, method=method, rtol=tol, atol=tol)
    assert (res.x - EXACT).abs().max() < 1e-3 and (back.x - X0).abs().max() < 1e-3


# ----------------------------------------------------------------- Euler–Maruyama
@pytest.mark.parametrize("h", [0.3, -0.3])
def test_euler_maruyama_step_moments(h: float) -> None:
    """dx = μ dt + g dw from x: one step is exactly N(x + μ h, g² |h|) per coordinate."""
    n, mu, g = 200_000, 0.7, 1.5
    x = torch.zeros(n, 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    out = solvers.euler_maruyama_step(
        lambda x, t: torch.full_like(x, mu), lambda t: torch.full_like(t, g), x, 0.5, 0.5 + h, gen
    )
    var = g**2 * abs(h)
    z_mean = (out.mean() - mu * h) / math.sqrt(var / n)
    z_var = (out.var() - var) / (var * math.sqrt(2 / n))  # SE of a Gaussian sample variance
    assert abs(float(z_mean)) < 4 and abs(float(z_var)) < 4, (z_mean, z_var)


# ----------------------------------------------------------------- errors
def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"Unknown ODE method 'rk5'.*euler, heun, midpoint, rk4"):
        solvers.solve_ode(rotating, X0, _uniform(2), method="rk5")
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        solvers.solve_ode(rotating, X0, [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"S >= 1"):
        solvers.solve_ode(rotating, X0, [0.0])
    with pytest.raises(ValueError, match=r"Unknown adaptive method 'heun'.*dopri5"):
        solvers.solve_ode_adaptive(rotating, X0, 0, 1, method="heun")
    with pytest.raises(ValueError, match="must differ"):
        solvers.solve_ode_adaptive(rotating, X0, 0.5, 0.5)
    with pytest.raises(ValueError, match="keep_times must lie between"):
        solvers.solve_ode_adaptive(rotating, X0, 0, 1, keep_times=[1.5])
