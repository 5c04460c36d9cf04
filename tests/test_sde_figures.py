"""Chapter 5's measurements: the forward paths against their closed-form marginals, the
reverse family's bookkeeping, the corrector study, the likelihood tables, the sampler
suite's NFE and its agreement between integrators, the NFE table loop."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from course_lib import ddpm, edm, metrics
from course_lib import sde as sdes
from course_lib import sde_figures as sf
from course_lib.gaussian_mixture import GaussianMixture
from course_lib.sampling import SampleResult
from course_lib.schedules import linear_schedule

LINEAR = linear_schedule(1000)
GM = GaussianMixture(
    torch.tensor([0.6, 0.4]),
    torch.tensor([[-1.0, 0.3], [1.0, -0.5]]),
    torch.tensor([[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]]]),
)


def teardown_function():
    plt.close("all")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ forward SDEs
@pytest.mark.parametrize("sde", [sdes.VPSDE(), sdes.SubVPSDE(), sdes.VESDE(sigma_max=5.0)])
def test_forward_paths_match_the_closed_form_marginal(sde):
    """Euler–Maruyama from a point mass x0 = 1.5 (20,000 paths, 400 steps): the mean and
    std at t = 0.5 and t = 1 are a(t) x0 and std(t) within Monte Carlo and step error."""
    x0 = torch.full((20_000, 1), 1.5, dtype=torch.float64)
    res = sf.forward_paths(sde, x0, n_steps=400, generator=_gen(0), keep=200)
    assert res.trajectory.shape == (3, 20_000, 1) and res.nfe == 400
    torch.testing.assert_close(res.times, torch.tensor([0.0, 0.5, 1.0]))
    for k, t in ((1, 0.5), (2, 1.0)):
        m = sde.marginal(t)
        x = res.trajectory[k, :, 0]
        se = float(m.std) / math.sqrt(x.numel())
        assert abs(float(x.mean()) - 1.5 * float(m.a)) < 5 * se + 0.01 * float(m.std)
        assert float(x.std()) == pytest.approx(float(m.std), rel=0.03)


def test_family_and_path_figures():
    family = {"VE": sdes.VESDE(), "VP": sdes.VPSDE(), "sub-VP": sdes.SubVPSDE()}
    fig = sf.plot_families(family)
    assert len(fig.axes) == 3 and all(len(ax.lines) == 3 for ax in fig.axes)
    fig = sf.plot_forward_paths(family, n_paths=3, n_steps=50)
    assert len(fig.axes) == 3
    assert fig.axes[0].get_yscale() == "symlog"  # VE grows to sigma_max = 50
    assert fig.axes[1].get_yscale() == "linear"


# ------------------------------------------------------------- reverse processes
def test_reverse_family_shares_its_start_and_noise():
    sde = sdes.VPSDE()
    score = sdes.exact_score(sde, GM)
    x_T = sde.prior_sample((200, 2), _gen(0), torch.float64)
    runs = sf.reverse_family(sde, score, x_T, [0.0, 1.0], steps=20, seed=3)
    assert set(runs) == {0.0, 1.0}
    for res in runs.values():
        assert res.nfe == 20 and res.trajectory.shape == (21, 200, 2)
        torch.testing.assert_close(res.trajectory[0], x_T)
    again = sf.reverse_family(sde, score, x_T, [1.0], steps=20, seed=3)[1.0]
    torch.testing.assert_close(again.x, runs[1.0].x)  # same seed, same noise
    other = sf.reverse_family(sde, score, x_T, [0.0], steps=20, seed=4)[0.0]
    torch.testing.assert_close(other.x, runs[0.0].x)  # the ODE draws no noise
    assert not torch.allclose(runs[0.0].x, runs[1.0].x)


def test_reverse_panel_reaches_the_target_with_many_steps():
    fig = sf.reverse_panel(sdes.VPSDE(), GM, lam=1.0, steps=200, n=800)
    left, right = fig.axes[:2]
    assert "KL" in left.get_title() and "λ = 1" in left.get_title()
    kl = float(left.get_title().split("KL ")[1].split()[0])
    assert kl < 0.25  # measured ~0.05 (floor at n = 800 ~0.03)
    assert "paths" in right.get_title()


# ------------------------------------------------------------ predictor-corrector
def test_corrector_repair_moves_towards_p_t():
    sde, t = sdes.VPSDE(), 0.3
    m = sde.marginal(t)
    p_t = GM.noised(float(m.a), float(m.std))
    x = 2 * torch.randn(2000, 2, generator=_gen(0), dtype=torch.float64)  # far too wide
    curve = sf.corrector_repair(
        sdes.exact_score(sde, GM), p_t.log_prob, x, t, 30, generator=_gen(1)
    )
    assert len(curve) == 31
    assert curve[0] > 1.0 and curve[-1] < 0.3 * curve[0]  # measured 1.6 -> ~0.1


def test_pc_study_rows_and_costs():
    sde = sdes.VESDE()
    out = sf.pc_study(sde, sdes.exact_score(sde, GM), GM.log_prob, n=300, steps=5, seeds=(0, 1))
    assert list(out) == ["P, 5 steps", "PC, 5 steps", "P, 10 steps"]
    assert [m.nfe for m in out.values()] == [6, 11, 11]
    assert all(math.isfinite(m.mean) and m.std >= 0 for m in out.values())


# ------------------------------------------------------------------- likelihoods
def test_hutchinson_study_against_the_exact_likelihood():
    sde = sdes.VPSDE()
    drift = sdes.pf_ode_drift(sde, sdes.exact_score(sde, GM))
    log_p_t = sdes.exact_log_prob(sde, GM)

    def prior(z):
        return log_p_t(z, torch.ones(z.shape[0], dtype=z.dtype))

    x = GM.sample(3, _gen(2)).double()
    study = sf.hutchinson_study(drift, x, 0.0, 1.0, prior, repeats=60, generator=_gen(3))
    assert study.estimates.shape == (60, 3)
    torch.testing.assert_close(study.exact, GM.log_prob(x), rtol=0, atol=1e-4)
    z = (study.mean - study.exact) / study.standard_error.clamp_min(1e-9)
    assert (z.abs() < 4).all(), z
    assert study.nfe_exact > 0 and study.nfe_hutchinson > 0
    assert (study.std > 0).any()


def test_likelihood_rows_are_paired_differences():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rows = sf.likelihood_rows(
        {
            "ref": (ref, 10),
            "shifted": (ref + 0.5, 12),
            "noisy": (ref + torch.tensor([1.0, -1, 1, -1]), 3),
        },
        reference="ref",
    )
    by_name = {r.name: r for r in rows}
    assert by_name["ref"].error == 0 and by_name["ref"].value == pytest.approx(2.5)
    assert by_name["shifted"].error == pytest.approx(0.5) and by_name["shifted"].nfe == 12
    assert by_name["noisy"].error == pytest.approx(0.0)
    assert by_name["noisy"].error_spread == pytest.approx(2 / math.sqrt(3))
    assert by_name["shifted"].error_spread == pytest.approx(0.0)
    assert by_name["ref"].standard_error == pytest.approx(float(ref.std() / 2))
    text = sf.format_likelihood_rows(rows, unit="nats")
    assert "shifted" in text and "+0.5000" in text
    with pytest.raises(ValueError, match="reference"):
        sf.likelihood_rows({"a": (ref, 1)}, reference="b")


# ---------------------------------------------------------------------------- EDM
def test_edm_figures():
    fig = sf.plot_time_grids(10, rhos=(1.0, 7.0))
    left = fig.axes[0]
    assert len(left.lines) == 2
    rho7 = left.lines[1].get_ydata()
    assert rho7[0] == pytest.approx(80.0) and rho7[-1] == pytest.approx(0.002)
    fig = sf.plot_preconditioning(0.5)
    assert len(fig.axes[0].lines) == 5  # three coefficients, |c_out| of eps, sigma_data


# ----------------------------------------------------------------- samplers vs NFE
def _suite(sigma_max: float = 5.0):
    return sf.nfe_samplers(
        edm.exact_denoiser(GM),
        ddpm.exact_model(GM, LINEAR),
        LINEAR,
        sigma_min=1.001 * edm.sigma_range(LINEAR)[0],
        sigma_max=sigma_max,
    )


def test_nfe_samplers_count_their_calls():
    fns = _suite()
    z = torch.randn(64, 2, generator=_gen(0), dtype=torch.float64)
    want = {
        sf.EULER: (6, 6),
        sf.HEUN: (6, 11),
        sf.RK4: (4, 13),
        sf.PC: (5, 11),
        sf.DDIM: (10, 10),
        sf.DDPM: (10, 10),
    }
    for name, (knob, nfe) in want.items():
        res = fns[name](knob, z, _gen(1))
        assert res.nfe == nfe, name
        assert res.x.shape == z.shape and torch.isfinite(res.x).all(), name
    res = fns[sf.DOPRI5](3, z, _gen(1))
    assert res.nfe > 10 and torch.isfinite(res.x).all()


def test_ode_samplers_of_the_suite_solve_one_ode():
    """From the same z, Heun and RK4 with many steps agree with a tight dopri5 solve of
    the same ODE (and the final denoising step): the suite wires sigma_max, the grid and
    the last Euler step alike."""
    fns = _suite()
    z = torch.randn(256, 2, generator=_gen(5), dtype=torch.float64)
    ref = fns[sf.DOPRI5](7, z, _gen(0)).x
    for name, knob in ((sf.HEUN, 200), (sf.RK4, 100)):
        err = (fns[name](knob, z, _gen(0)).x - ref).abs().max().item()
        assert err < 2e-3, (name, err)


def test_exact_heun_reaches_the_target():
    fns = _suite()
    n = 3000
    x = fns[sf.HEUN](18, torch.randn(n, 2, generator=_gen(7)), _gen(8)).x
    floor = metrics.kl_floor(lambda m: GM.sample(m), GM.log_prob, n, repeats=3)
    kl = metrics.kl_divergence(x, GM.log_prob)
    assert kl < floor.mean + 4 * floor.std + 0.02, (kl, floor)


def test_quality_vs_nfe_shares_z_across_samplers_and_averages_seeds():
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def make(name, scale):
        def run(knob, z, g):
            seen[name].append(z.clone())
            noise = torch.randn(z.shape, generator=g)
            return SampleResult(x=z * 0 + scale * knob + 0 * noise, nfe=2 * knob)

        return run

    table = sf.quality_vs_nfe(
        {"a": make("a", 1.0), "b": make("b", 2.0), "c": make("c", 3.0)},
        {"a": [1, 3], "b": [2]},
        metric=lambda x: float(x.mean()),
        shape=(5, 2),
        seeds=(0, 1, 2),
    )
    assert set(table) == {"a", "b"}  # "c" is not in the plan: not run
    assert [p.knob for p in table["a"]] == [1, 3]
    p = table["a"][1]
    assert p.quality == 3.0 and p.spread == 0.0 and p.nfe == 6 and p.n == 5
    assert p.x.shape == (5, 2) and p.per_second > 0
    assert table["b"][0].quality == 4.0
    # seed k gives the same z to every sampler, and different seeds differ
    torch.testing.assert_close(seen["a"][0], seen["b"][0])
    assert not torch.equal(seen["a"][0], seen["a"][1])
    assert sf.find(table, "a", 3) is p
    with pytest.raises(KeyError):
        sf.find(table, "a", 7)
    with pytest.raises(ValueError, match="no sampler named"):
        sf.quality_vs_nfe({"a": make("a", 1.0)}, {"z": [1]}, lambda x: 0.0, (2, 2))


def test_nfe_table_text_and_plot():
    point = sf.Point(
        knob=5, nfe=9.0, quality=0.5, spread=0.1, seconds=0.2, n=10, x=torch.zeros(10, 2)
    )
    table = {sf.HEUN: [point], sf.DDIM: [point]}
    text = sf.format_nfe_table(table, floor=(0.03, 0.01))
    assert "0.500 ± 0.100 @ 9" in text and text.splitlines()[-1].startswith("floor")
    ax = sf.plot_quality_vs_nfe(table, floor=(0.03, 0.01))
    assert ax.get_xscale() == "log" and len(ax.containers) == 2  # one errorbar per sampler
    labels = ax.get_legend_handles_labels()[1]
    assert sf.HEUN in labels and "floor ± spread" in labels
