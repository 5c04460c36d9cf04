"""Tests for :mod:`course_lib.schedules`: round trips, known values, validation."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.schedules import DiscreteSchedule, cosine_schedule, linear_schedule, respace


@pytest.mark.parametrize("schedule", [linear_schedule(), cosine_schedule(), linear_schedule(10)])
def test_round_trips(schedule: DiscreteSchedule) -> None:
    ab = schedule.alpha_bar
    again = DiscreteSchedule.from_betas(schedule.beta[1:])
    torch.testing.assert_close(again.alpha_bar, ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.cumprod(schedule.alpha, 0), ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.sigma**2 + schedule.sqrt_alpha_bar**2, torch.ones_like(ab))
    assert schedule.beta[0] == 0 and schedule.alpha_bar[0] == 1 and schedule.sigma[0] == 0
    assert (schedule.beta[1:] > 0).all() and (schedule.beta[1:] < 1).all()


def test_linear_schedule_known_values() -> None:
    s = linear_schedule(1000, 1e-4, 0.02)
    assert s.T == 1000 and s.alpha_bar.dtype == torch.float64
    # independent computation in plain Python: alpha_bar_T = prod_t (1 - beta_t)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    expected = math.exp(math.fsum(math.log1p(-b) for b in betas))
    assert float(s.alpha_bar[-1]) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(4.04e-5, rel=5e-3)  # the value quoted in the course
    assert float(s.beta[1]) == pytest.approx(1e-4, rel=1e-9)
    assert float(s.beta[-1]) == pytest.approx(0.02, rel=1e-9)
    assert float(s.beta[500]) == pytest.approx(1e-4 + (0.02 - 1e-4) * 499 / 999, rel=1e-9)


def test_cosine_matches_formula_where_unclipped() -> None:
    big_t, off = 1000, 0.008
    s = cosine_schedule(big_t, off, max_beta=0.999)

    def f(t: int) -> float:
        return math.cos((t / big_t + off) / (1 + off) * math.pi / 2) ** 2

    expected = torch.tensor([f(t) / f(0) for t in range(big_t + 1)], dtype=torch.float64)
    clipped = (s.beta >= 0.999 - 1e-12).nonzero().flatten()
    assert clipped.tolist() == [big_t]  # only the last beta hits the clip (f(T) = 0)
    torch.testing.assert_close(s.alpha_bar[:big_t], expected[:big_t], rtol=1e-10, atol=1e-15)
    # clipping: alpha_bar_T = alpha_bar_{T-1} * (1 - max_beta) instead of 0
    assert float(s.alpha_bar[-1]) == pytest.approx(float(expected[-2]) * 1e-3, rel=1e-9)
    # a tighter clip changes every beta above it, and alpha_bar follows the clipped betas
    tight = cosine_schedule(big_t, off, max_beta=0.02)
    assert float(tight.beta.max()) == pytest.approx(0.02, rel=1e-12)
    assert float(tight.alpha_bar[-1]) > float(s.alpha_bar[-1])


@pytest.mark.parametrize("schedule", [linear_schedule(), cosine_schedule(), cosine_schedule(7)])
def test_snr_monotone_and_posterior_variance(schedule: DiscreteSchedule) -> None:
    snr, log_snr = schedule.snr, schedule.log_snr
    assert math.isinf(float(snr[0])) and math.isinf(float(log_snr[0]))
    assert (snr[1:] < snr[:-1]).all() and (log_snr[1:] < log_snr[:-1]).all()
    torch.testing.assert_close(log_snr[1:], torch.log(snr[1:]))
    bt = schedule.beta_tilde
    assert bt[0] == 0 and bt[1] == 0
    assert ((bt[2:] > 0) & (bt[2:] < schedule.beta[2:])).all()  # beta_tilde < beta


def test_model_time_and_respace() -> None:
    s = linear_schedule(1000)
    assert float(s.model_time(1000)) == 1.0 and float(s.model_time(1)) == 1e-3
    grid = torch.tensor([1, 10, 250, 999, 1000])
    sub = respace(s, grid)
    assert sub.T == 5 and sub.train_T == 1000
    assert sub.timesteps.tolist() == [0, 1, 10, 250, 999, 1000]
    torch.testing.assert_close(sub.alpha_bar[1:], s.alpha_bar[grid])
    # betas recomputed from alpha_bar on the grid (improved DDPM §4)
    expected = 1 - s.alpha_bar[grid] / s.alpha_bar[torch.tensor([0, 1, 10, 250, 999])]
    torch.testing.assert_close(sub.beta[1:], expected)
    torch.testing.assert_close(torch.cumprod(sub.alpha, 0), sub.alpha_bar)
    torch.testing.assert_close(
        sub.model_time(torch.tensor([1, 5])), torch.tensor([1e-3, 1.0]).double()
    )
    # respacing a respaced schedule keeps the training times
    subsub = respace(sub, [2, 5])
    assert subsub.timesteps.tolist() == [0, 10, 1000] and subsub.train_T == 1000
    # the full grid respaced is the schedule itself
    torch.testing.assert_close(respace(s, torch.arange(1, 1001)).alpha_bar, s.alpha_bar)


def test_errors() -> None:
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteSchedule(torch.tensor([1.0, 0.5, 0.7]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteSchedule(torch.tensor([1.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiscreteSchedule(torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiscreteSchedule(torch.tensor([1.0, 1.5, 0.2]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiscreteSchedule(torch.tensor([1.0, float("nan"), 0.2]))
    with pytest.raises(ValueError, match="alpha_bar_0 must be 1"):
        DiscreteSchedule(torch.tensor([0.9, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        DiscreteSchedule(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        DiscreteSchedule.from_betas(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        DiscreteSchedule.from_betas(torch.tensor([0.0, 0.1]))
    with pytest.raises(ValueError):
        linear_schedule(0)
    with pytest.raises(ValueError):
        linear_schedule(10, 0.1, 0.01)
    with pytest.raises(ValueError):
        cosine_schedule(10, max_beta=1.0)
    s = linear_schedule(100)
    with pytest.raises(ValueError, match="increasing"):
        respace(s, [5, 3])
    with pytest.raises(ValueError, match="lie in"):
        respace(s, [0, 50])
    with pytest.raises(ValueError, match="lie in"):
        respace(s, [50, 101])
    with pytest.raises(ValueError, match="integers"):
        respace(s, torch.tensor([1.5, 3.0]))
    with pytest.raises(ValueError, match="timesteps"):
        DiscreteSchedule(torch.tensor([1.0, 0.5, 0.2]), timesteps=torch.tensor([0, 3, 2]))
