"""Chapter 6's studies: each measures what it claims, against a case with a known answer."""

import math

import pytest
import torch

from course_lib import couplings, toys
from course_lib import flow_figures as ff
from course_lib import flow_matching as fm
from course_lib import sde_figures as sf


@pytest.fixture(scope="module")
def gm():
    return toys.twin("gaussians8")


def test_continuity_check_passes_the_exact_field_and_fails_a_wrong_one(gm) -> None:
    g = torch.Generator().manual_seed(0)
    lin, cos = fm.linear_path(), fm.cosine_path()
    ok = ff.continuity_check(gm, lin, fm.exact_velocity(gm, lin), 0.5, generator=g)
    assert ok.max_error < 1e-6 * ok.scale
    bad = ff.continuity_check(gm, cos, fm.exact_velocity(gm, lin), 0.5, generator=g)
    assert bad.max_error > 1e-2 * bad.scale


def test_count_crossings() -> None:
    x0 = torch.tensor([[0.0], [1.0], [2.0]])
    assert ff.count_crossings(x0, torch.tensor([[2.0], [1.0], [0.0]])) == 3  # all reversed
    assert ff.count_crossings(x0, torch.tensor([[5.0], [6.0], [9.0]])) == 0
    assert ff.count_crossings(x0, torch.tensor([[1.0], [0.0], [9.0]])) == 1
    # the optimal coupling for the squared distance in 1D is monotone: no two paths meet
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, 1, generator=g), torch.randn(200, 1, generator=g) * 2 + 1
    n_pairs = 200 * 199 // 2
    assert 0.4 * n_pairs < ff.count_crossings(a, b) < 0.6 * n_pairs  # independent: ~half
    assert ff.count_crossings(a, b[couplings.ot_assignment(a, b)]) == 0
    with pytest.raises(ValueError, match="one-dimensional"):
        ff.count_crossings(torch.zeros(3, 2), torch.zeros(3, 2))


def test_ot_cost_falls_towards_w2_from_above() -> None:
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    c = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    chol = torch.linalg.cholesky(c)
    w2 = couplings.gaussian_w2_squared(torch.zeros(2), torch.eye(2), m, c)
    g = torch.Generator().manual_seed(2)
    rows = ff.ot_cost_vs_batch(
        lambda n, gen: m + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ chol.T,
        [4, 64, 512],
        repeats=8,
        generator=g,
    )
    independent = float((m**2).sum() + 2 + torch.trace(c))  # E‖x1 - x0‖², x0 ⟂ x1
    for r in rows:
        assert r.ot <= r.independent
        assert r.independent == pytest.approx(independent, rel=0.25)
    # decreasing in B and, at B = 512, within a few standard errors above W2²
    assert rows[0].ot > rows[1].ot > rows[2].ot
    assert rows[2].ot > w2 - 3 * rows[2].ot_se
    assert rows[2].ot - w2 < 0.25 * (independent - w2)


def test_label_mass_sees_the_partition_of_the_noise(gm) -> None:
    g = torch.Generator().manual_seed(3)
    x1, lab = gm.sample_with_labels(800, g)
    x0 = torch.randn(800, 2, generator=g)
    ind = ff.label_mass(x0, lab, gm.n_components)
    ot = ff.label_mass(x0, lab[couplings.ot_assignment(x0, x1)], gm.n_components)
    # independent: each label's 100 noise draws have mean ~ N(0, I/100): norm ~ 0.13
    assert float(ind.max()) < 0.45
    assert float(ot.min()) > 0.7


def test_flow_samplers_count_calls_and_agree_with_each_other(gm) -> None:
    lin = fm.linear_path()
    fns = ff.flow_samplers(fm.exact_velocity(gm, lin), lin, torch.float64)
    assert set(fns) == set(ff.METHODS)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(4))
    g = torch.Generator()
    nfe = {m: fns[m](8, z, g).nfe for m in (ff.EULER, ff.MIDPOINT, ff.HEUN, ff.RK4)}
    assert nfe == {ff.EULER: 8, ff.MIDPOINT: 16, ff.HEUN: 16, ff.RK4: 32}
    ref = fns[ff.RK4](100, z, g).x
    assert fns[ff.RK4](100, z, g).x.dtype == torch.float64
    adaptive = fns[ff.DOPRI5](6, z, g)
    assert float((adaptive.x - ref).abs().max()) < 1e-3
    assert float((fns[ff.EULER](4, z, g).x - ref).abs().max()) > 1e-2


def test_quality_by_method_regroups_and_reaches(gm) -> None:
    lin = fm.linear_path()
    models = {
        "exact": ff.flow_samplers(fm.exact_velocity(gm, lin), lin, torch.float64),
        "zero field": ff.flow_samplers(lambda x, t: torch.zeros_like(x), lin),
    }
    table = ff.quality_by_method(
        models, {ff.EULER: [2, 16], ff.HEUN: [8]}, lambda x: float(x.norm(dim=1).mean()), (64, 2)
    )
    assert set(table) == {ff.EULER, ff.HEUN} and set(table[ff.EULER]) == {"exact", "zero field"}
    assert [p.nfe for p in table[ff.EULER]["exact"]] == [2, 16]
    # the zero field leaves the noise where it is: E‖z‖ = √(π/2) for 2D standard normals
    assert table[ff.HEUN]["zero field"][0].quality == pytest.approx(math.sqrt(math.pi / 2), rel=0.2)
    points = table[ff.EULER]["exact"]
    assert ff.nfe_to_reach(points, max(p.quality for p in points)) == 2
    assert ff.nfe_to_reach(points, -1.0) == math.inf
    assert isinstance(points[0], sf.Point)
    text = ff.format_by_method(table)
    assert "Euler" in text and "zero field" in text
    fig = ff.plot_by_method(table)
    assert len(fig.axes) == 2


def test_flow_and_diffusion_samplers_cover_both_models() -> None:
    from types import SimpleNamespace

    from course_lib import schedules

    diffusion = SimpleNamespace(
        model=lambda x, t: torch.zeros_like(x), schedule=schedules.linear_schedule(1000)
    )
    fns = ff.flow_and_diffusion_samplers(lambda x, t: -x, diffusion, fm.linear_path())
    assert set(fns) == {"flow, Euler", "flow, Heun", sf.DDIM, sf.HEUN}
    z, g = torch.randn(4, 1, 4, 4), torch.Generator()
    assert fns["flow, Euler"](3, z, g).nfe == 3 and fns["flow, Heun"](3, z, g).nfe == 6
    assert fns[sf.HEUN](5, z, g).nfe == 9  # EDM Heun: 2N - 1
    out = fns[sf.DDIM](5, z, g).x
    assert out.shape == z.shape and float(out.abs().max()) <= 1.0  # x0 clipped to [-1, 1]
