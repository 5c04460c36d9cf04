"""Chapter 4's measurements: the samplers of the table, the table loop, the naive
skipping that fails, inversion, interpolation norms, the widget's panel."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from course_lib import ddim, ddpm, metrics, toys
from course_lib import ddim_figures as df
from course_lib.schedules import linear_schedule, respace

LINEAR = linear_schedule(1000)


def teardown_function():
    plt.close("all")


def _exact(name: str = "gaussians8"):
    return ddpm.exact_model(toys.twin(name), LINEAR)


def test_quality_vs_steps_runs_every_sampler_at_its_steps():
    calls = []

    def make(scale):
        def run(steps):
            calls.append((scale, steps))
            return torch.full((10, 2), float(scale * steps))

        return run

    table = df.quality_vs_steps(
        {"a": make(1), "b": make(2), "c": make(3)},
        {"a": [5, 10], "b": [10]},
        metric=lambda x: float(x.mean()),
    )
    assert calls == [(1, 5), (1, 10), (2, 10)]
    assert set(table) == {"a", "b"}  # "c" has no steps: not run, not listed
    assert table["a"][10].quality == 10 and table["b"][10].quality == 20
    entry = table["a"][5]
    assert entry.n == 10 and entry.seconds >= 0 and entry.x.shape == (10, 2)
    assert entry.per_second > 0
    # one list for all samplers
    table = df.quality_vs_steps({"a": make(1)}, [1, 2, 3], metric=lambda x: 0.0)
    assert sorted(table["a"]) == [1, 2, 3]
    text = df.format_table({"a": table["a"], "b": {2: table["a"][2]}}, floor=0.5)
    lines = text.splitlines()
    assert len(lines) == 5 and "—" in lines[3] and lines[-1].startswith("floor")
    ax = df.plot_quality_vs_steps({"a": {1: entry, 2: entry}}, floor=1.0)
    assert ax.get_xscale() == "log"


def test_samplers_are_the_library_samplers_with_common_random_numbers():
    model = _exact()
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    fns = df.samplers(model, LINEAR, x_T, seed=3, quadratic=True)
    assert list(fns) == [df.DDIM0, df.DDIM1, df.DDPM, df.DDIM0_QUADRATIC]
    grid = ddim.timesteps(1000, 10)
    torch.testing.assert_close(fns[df.DDIM0](10), ddim.ddim_sample(model, x_T, LINEAR, grid).x)
    quad = ddim.timesteps(1000, 10, "quadratic")
    torch.testing.assert_close(
        fns[df.DDIM0_QUADRATIC](10), ddim.ddim_sample(model, x_T, LINEAR, quad).x
    )
    # eta = 1 on the strided grid is ancestral sampling with beta_tilde on the respaced chain
    sub = respace(LINEAR, grid)
    g = torch.Generator().manual_seed(3)
    want = ddpm.ancestral_sample(model, x_T, sub, "beta_tilde", generator=g).x
    torch.testing.assert_close(fns[df.DDIM1](10), want)
    # reproducible: each call reseeds its generator
    torch.testing.assert_close(fns[df.DDPM](10), fns[df.DDPM](10))


def test_table_on_the_exact_model():
    """With the exact model of gaussians8 and a bandwidth that sees the modes: at ten
    steps the quadratic grid beats the uniform one and eta = 0 beats eta = 1; at a
    hundred steps DDIM is close to the floor."""
    gm = toys.twin("gaussians8")
    model = _exact()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(1000, 2, generator=g)
    ref = gm.sample(1000, g)
    table = df.quality_vs_steps(
        df.samplers(model, LINEAR, x_T, quadratic=True),
        {df.DDIM0: [10, 100], df.DDIM1: [10], df.DDIM0_QUADRATIC: [10]},
        lambda x: metrics.mmd(x, ref, bandwidth=0.2),
    )
    assert set(table) == {df.DDIM0, df.DDIM1, df.DDIM0_QUADRATIC}
    q10 = {name: row[10].quality for name, row in table.items()}
    assert q10[df.DDIM0_QUADRATIC] < q10[df.DDIM0] < q10[df.DDIM1]
    floor = metrics.mmd(gm.sample(1000, g), ref, bandwidth=0.2)
    assert table[df.DDIM0][100].quality < 2 * floor


def test_naive_skipping_leaves_noise_and_respacing_does_not():
    model = _exact()
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(2))
    naive = df.naive_skip_sample(model, x_T, LINEAR, 10)
    assert naive.nfe == 10
    good = ddim.ddim_sample(model, x_T, LINEAR, 10).x
    ref = toys.twin("gaussians8").sample(500, torch.Generator().manual_seed(3))
    # each update removes one step's worth of noise: the cloud stays a blur
    assert metrics.mmd(naive.x, ref, bandwidth=0.2) > 3 * metrics.mmd(good, ref, bandwidth=0.2)
    dist = torch.cdist(good, toys.twin("gaussians8").means.float()).min(1).values
    assert float(dist.median()) < 0.2  # respaced DDIM lands on the modes


def test_inversion_study_error_falls_with_steps():
    gm = toys.twin("gaussians8")
    model = _exact()
    x0 = gm.sample(100, torch.Generator().manual_seed(4)).double()
    rows = df.inversion_study(model, x0, LINEAR, [5, 50])
    assert [r.steps for r in rows] == [5, 50]
    assert rows[0].rmse > rows[1].rmse and rows[1].rmse < 0.05
    assert abs(rows[1].latent_std - 1) < 0.2
    assert rows[1].reconstruction.shape == x0.shape


def test_interpolation_norms_lerp_midpoint_is_short():
    g = torch.Generator().manual_seed(5)
    d = 784
    z0, z1 = torch.randn(64, d, generator=g), torch.randn(64, d, generator=g)
    lerp, slerp = df.interpolation_norms(z0, z1, torch.linspace(0, 1, 5))
    assert lerp.shape == slerp.shape == (5, 64)
    torch.testing.assert_close(lerp[0], z0.norm(dim=1))
    torch.testing.assert_close(slerp[-1], z1.norm(dim=1))
    assert abs(float(lerp[2].mean()) / math.sqrt(d) - math.sqrt(0.5)) < 0.03
    assert abs(float(slerp[2].mean()) / math.sqrt(d) - 1) < 0.03


def test_lerp_and_slerp_share_end_points():
    gm = toys.twin("gaussians8")
    model = _exact()
    x0 = gm.sample(4, torch.Generator().manual_seed(6)).double()
    out = df.lerp_and_slerp(model, x0[:2], x0[2:], LINEAR, steps=20, n=5)
    assert out.slerp.shape == out.lerp.shape == (5, 2, 2)
    torch.testing.assert_close(out.z_lerp[0], out.z_slerp[0])
    torch.testing.assert_close(out.z_lerp[-1], out.z_slerp[-1])
    torch.testing.assert_close(out.lerp[0], out.slerp[0])


def test_fid_floor_averages_over_subsets():
    images = torch.arange(100.0).reshape(100, 1, 1, 1)
    mean, std = df.fid_floor(
        lambda x: float(x.mean()), images, 10, repeats=4, generator=torch.Generator()
    )
    assert 0 < mean < 99 and std > 0


def test_panel_and_grids_draw():
    model = _exact()
    data = toys.twin("gaussians8").sample(200, torch.Generator().manual_seed(7))
    fig = df.ddim_panel(model, LINEAR, data, steps=5, eta=0.5, grid="quadratic", n=100)
    assert len(fig.axes) == 2 and "η = 0.5" in fig.axes[0].get_title()
    fig = df.plot_time_grids(LINEAR, 10)
    assert len(fig.axes) == 2
