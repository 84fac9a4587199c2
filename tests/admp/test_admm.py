import math

import pytest
import torch

from admp import admm


def test_keep_count_is_ceil_of_kept_share():
    assert admm.keep_count(10, 0.6) == 4
    assert admm.keep_count(32, 0.6) == 13  # ceil(12.8)
    assert admm.keep_count(10, 0.7) == 3  # (1-0.7)*10 is 3.0000000000000004 in floats
    assert admm.keep_count(3, 0.9) == 1  # never below one channel
    assert admm.keep_count(7, 0.0) == 7
    with pytest.raises(ValueError):
        admm.keep_count(10, 1.0)


def test_project_topk_keeps_exactly_k_largest():
    scores = torch.tensor([0.1, 0.9, -0.3, 0.5, 0.7])
    z = admm.project_topk(scores, 2)
    assert z.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert admm.project_topk(scores, 5).sum() == 5


def test_project_topk_breaks_ties_by_lowest_index():
    assert admm.project_topk(torch.ones(5), 2).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_z_step_keeps_exactly_k_per_group():
    gen = torch.Generator().manual_seed(0)
    m = {"a": torch.rand(32, generator=gen), "b": torch.rand(7, generator=gen)}
    u = {"a": torch.zeros(32), "b": torch.zeros(7)}
    for p in (0.3, 0.5, 0.6, 0.7):
        z = admm.z_step(m, u, p)
        for g in m:
            assert int(z[g].sum()) == math.ceil(round((1 - p) * m[g].numel(), 9))
            assert set(z[g].unique().tolist()) <= {0.0, 1.0}
            kept_min = m[g][z[g] == 1].min()
            dropped_max = m[g][z[g] == 0].max()
            assert kept_min >= dropped_max  # top-k of m + U with U = 0


def test_z_step_uses_the_dual():
    m = {"g": torch.tensor([0.9, 0.8, 0.1])}
    u = {"g": torch.tensor([-0.5, 0.0, 0.8])}  # m + U = [0.4, 0.8, 0.9]
    assert admm.z_step(m, u, 0.5)["g"].tolist() == [0.0, 1.0, 1.0]


def test_u_step_by_hand():
    u = {"g": torch.tensor([0.0, 0.2, -0.1])}
    m = {"g": torch.tensor([0.9, 0.3, 0.6])}
    z = {"g": torch.tensor([1.0, 0.0, 1.0])}
    assert torch.allclose(admm.u_step(u, m, z)["g"], torch.tensor([-0.1, 0.5, -0.5]))


def test_rho_schedule_grows_then_caps():
    assert admm.rho_next(0.1, 1.5, 1.0) == pytest.approx(0.15)
    assert admm.rho_next(0.8, 1.5, 1.0) == 1.0


def test_penalty_and_residual_by_hand():
    m = {"g": torch.tensor([1.0, 0.5])}
    z = {"g": torch.tensor([1.0, 0.0])}
    u = {"g": torch.tensor([0.5, 0.5])}
    # ||m - z + u||^2 = 0.5^2 + 1.0^2 = 1.25; times rho/2 with rho = 2
    assert float(admm.admm_penalty(m, z, u, 2.0)) == pytest.approx(1.25)
    assert admm.primal_residual(m, z) == pytest.approx(0.5)


def test_ramped_ratio_grows_linearly_then_holds():
    assert [admm.ramped_ratio(0.6, i, 3) for i in (1, 2, 3, 4)] == pytest.approx([0.2, 0.4, 0.6, 0.6])
    assert admm.ramped_ratio(0.6, 1, 0) == 0.6 and admm.ramped_ratio(0.6, 1, 1) == 0.6  # no ramp
