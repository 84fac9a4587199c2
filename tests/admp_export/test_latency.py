"""The latency search by hand: the cut's cost, the greedy choice on a latency model whose every figure is
known, the plan's ratios; and a run that plans its ratios keeps them (config, summary, resume)."""

import math

import pytest
import torch

from admp.admm import keep_count, ramped_ratio, z_step
from admp.masks import group_sizes, zeros_masks
from admp.models import build_model, groups_of
from admp_export import latency
from admp_export.latency import meets, removal_cost, search


def test_the_cost_of_a_cut_is_the_log_ratio_of_the_kept_l1_mass():
    scores = torch.tensor([1.0, 4.0, 2.0, 3.0])  # kept strongest first: 4, 3, 2, 1
    assert removal_cost(scores, kept=4, step=1) == pytest.approx(math.log(10 / 9))
    assert removal_cost(scores, kept=2, step=1) == pytest.approx(math.log(7 / 4))
    assert removal_cost(scores, kept=1, step=1) == math.inf  # a group is never cut to nothing
    assert meets((1.0, 5.0), (1.0, 5.0)) and not meets((1.0, 5.1), (2.0, 5.0))


def test_the_greedy_search_on_a_known_latency_model(monkeypatch):
    """LeNet at width 0.25 (conv1 8, conv2 16 channels), latency (c1 + 0.1 c2, 10 c1 + 2 c2) and equal L1
    scores; budget 0.75 of dense (9.6, 112) = (7.2, 84). Each step one channel: cutting conv1 saves
    1/7.2 + 10/84 = 0.258 of the budget for ln(8/7), ln(7/6), ln(6/5); conv2 0.1/7.2 + 2/84 = 0.038 for
    ln(16/15) = 0.065: conv1 wins three times, (5, 16) runs (6.6, 82) and meets both budgets."""

    def fake_ms(model, folder, repeats):
        sizes = group_sizes(model, groups_of(model))
        return sizes["conv1"] + 0.1 * sizes["conv2"], 10.0 * sizes["conv1"] + 2.0 * sizes["conv2"]

    monkeypatch.setattr(latency, "measured_ms", fake_ms)
    monkeypatch.setattr(
        latency, "l1_filter_scores", lambda m, g, e: {k: torch.ones(c) for k, c in group_sizes(m, g).items()}
    )
    model = build_model("lenet", 10, 0.25)
    plan = search(model, groups_of(model), 0.75)
    assert plan.counts == {"conv1": 5, "conv2": 16} and [s["group"] for s in plan.steps] == ["conv1"] * 3
    assert plan.dense_ms == pytest.approx((9.6, 112.0)) and plan.budget_ms == pytest.approx((7.2, 84.0))
    assert plan.measured_ms == pytest.approx((6.6, 82.0))
    assert plan.ratios == pytest.approx({"conv1": 0.375, "conv2": 0.0})
    assert {g: keep_count(c, plan.ratios[g]) for g, c in group_sizes(model, groups_of(model)).items()} == plan.counts
    with pytest.raises(ValueError, match="share in"):
        search(model, groups_of(model), 1.0)


def test_per_group_ratios_in_the_z_step_and_the_ramp():
    m = {"a": torch.tensor([0.9, 0.1, 0.5, 0.7]), "b": torch.tensor([0.2, 0.8])}
    z = z_step(m, zeros_masks({"a": 4, "b": 2}), {"a": 0.5, "b": 0.0})  # a keeps 2, b keeps both
    assert z["a"].tolist() == [1.0, 0.0, 0.0, 1.0] and z["b"].tolist() == [1.0, 1.0]
    assert ramped_ratio({"a": 0.5, "b": 0.2}, 1, 2) == pytest.approx({"a": 0.25, "b": 0.1})
    assert ramped_ratio(0.6, 1, 2) == pytest.approx(0.3)
