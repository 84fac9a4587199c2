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


@pytest.fixture
def equal_l1_scores(monkeypatch):
    """Every filter of every group scores 1: a cut's cost is the log-ratio of the kept channel counts."""
    monkeypatch.setattr(
        latency, "l1_filter_scores", lambda m, g, e: {k: torch.ones(c) for k, c in group_sizes(m, g).items()}
    )


def test_the_greedy_search_on_a_known_latency_model(monkeypatch, equal_l1_scores):
    """LeNet at width 0.25 (conv1 8, conv2 16 channels), latency (10 c1 + c2, 100 c1 + 20 c2) and equal L1
    scores; budget 0.75 of dense (96, 1120) = (72, 840). The uniform grid first: p = 0.25 keeps (6, 12),
    which runs (72, 840), the first to meet it: those are the floors. Cutting conv1 saves 10/72 + 100/840 =
    0.258 of the budget for ln(8/7), then ln(7/6); conv2 0.038 for ln(16/15) = 0.065: conv1 twice to its
    floor, then conv2 four times, one channel each, to (6, 12)."""

    def fake_ms(model, folder, repeats):
        sizes = group_sizes(model, groups_of(model))
        return 10.0 * sizes["conv1"] + sizes["conv2"], 100.0 * sizes["conv1"] + 20.0 * sizes["conv2"]

    monkeypatch.setattr(latency, "measured_ms", fake_ms)
    model = build_model("lenet", 10, 0.25)
    plan = search(model, groups_of(model), 0.75)
    assert plan.uniform_ratio == 0.25 and plan.floors == {"conv1": 6, "conv2": 12}
    assert plan.counts == {"conv1": 6, "conv2": 12}
    assert [s["group"] for s in plan.steps] == ["conv1"] * 2 + ["conv2"] * 4
    assert plan.dense_ms == pytest.approx((96.0, 1120.0)) and plan.budget_ms == pytest.approx((72.0, 840.0))
    assert plan.measured_ms == pytest.approx((72.0, 840.0))
    assert plan.ratios == pytest.approx({"conv1": 0.25, "conv2": 0.25})
    assert {g: keep_count(c, plan.ratios[g]) for g, c in group_sizes(model, groups_of(model)).items()} == plan.counts
    with pytest.raises(ValueError, match="share in"):
        search(model, groups_of(model), 1.0)


def test_the_plan_keeps_a_group_wider_than_uniform_where_its_time_is_cheap(monkeypatch, equal_l1_scores):
    """Latency from conv1 alone (10 c1, 100 c1): budget 0.75 of (80, 800) = (60, 600); the uniform grid's
    first fit is p = 0.25 (conv1 6, conv2 12, floors). Only conv1's cuts save time, so the plan cuts conv1
    to 6 and leaves conv2 whole: as fast as the uniform model, twice as wide in conv2 (16 against 12)."""

    def fake_ms(model, folder, repeats):
        c1 = group_sizes(model, groups_of(model))["conv1"]
        return 10.0 * c1, 100.0 * c1

    monkeypatch.setattr(latency, "measured_ms", fake_ms)
    model = build_model("lenet", 10, 0.25)
    plan = search(model, groups_of(model), 0.75)
    assert plan.floors == {"conv1": 6, "conv2": 12} and plan.counts == {"conv1": 6, "conv2": 16}


def test_a_search_that_reaches_the_floors_stops_at_the_uniform_model(monkeypatch, equal_l1_scores):
    """The latency model of the greedy test, but the uniform model (6, 12) runs (72, 840) only the first
    time it is measured (the grid's) and (73, 840) after, a miss by noise at the budget's edge (72, 840):
    the greedy's last cut reaches the floors over budget and stops there; the fill pass finds nothing that
    fits ((7, 12) runs 83, (6, 13) 74); the plan is the uniform model, its final time the over one."""
    seen: list[tuple[int, int]] = []

    def fake_ms(model, folder, repeats):
        sizes = group_sizes(model, groups_of(model))
        c1, c2 = sizes["conv1"], sizes["conv2"]
        noise = 1.0 if (c1, c2) in seen and (c1, c2) == (6, 12) else 0.0
        seen.append((c1, c2))
        return 10.0 * c1 + c2 + noise, 100.0 * c1 + 20.0 * c2

    monkeypatch.setattr(latency, "measured_ms", fake_ms)
    model = build_model("lenet", 10, 0.25)
    plan = search(model, groups_of(model), 0.75)
    assert plan.uniform_ratio == 0.25 and plan.counts == plan.floors == {"conv1": 6, "conv2": 12}
    assert plan.measured_ms == pytest.approx((73.0, 840.0)) and not any(s.get("fill") for s in plan.steps)
    monkeypatch.setattr(latency, "measured_ms", lambda model, folder, repeats: (100.0, 1000.0))  # nothing is faster
    with pytest.raises(ValueError, match="every group is at its floor"):
        search(model, groups_of(model), 0.75)


def test_per_group_ratios_in_the_z_step_and_the_ramp():
    m = {"a": torch.tensor([0.9, 0.1, 0.5, 0.7]), "b": torch.tensor([0.2, 0.8])}
    z = z_step(m, zeros_masks({"a": 4, "b": 2}), {"a": 0.5, "b": 0.0})  # a keeps 2, b keeps both
    assert z["a"].tolist() == [1.0, 0.0, 0.0, 1.0] and z["b"].tolist() == [1.0, 1.0]
    assert ramped_ratio({"a": 0.5, "b": 0.2}, 1, 2) == pytest.approx({"a": 0.25, "b": 0.1})
    assert ramped_ratio(0.6, 1, 2) == pytest.approx(0.3)


def test_the_fill_pass_grows_back_the_richest_step_that_still_fits():
    """Groups a (4 channels) and b (8), one channel a step; latency 10 a + b at both batches, equal L1
    scores. From (2, 4) under a budget of 40: a's step adds ln(3/2) = 0.405 of kept mass (34, fits), b's
    ln(5/4) = 0.223 (25): a grows first; then a = 4 would run 44, so b grows to 8 (38). Under 30 a never
    fits (34) and b grows alone, to 8 (28)."""
    sizes = {"a": 4, "b": 8}
    scores = {g: torch.ones(c) for g, c in sizes.items()}

    def timed(counts):
        return 10.0 * counts["a"] + counts["b"], 10.0 * counts["a"] + counts["b"]

    steps = []
    assert latency.fill({"a": 2, "b": 4}, sizes, scores, (40.0, 40.0), timed, steps) == {"a": 3, "b": 8}
    assert [s["group"] for s in steps] == ["a"] + ["b"] * 4 and all(s["fill"] for s in steps)
    assert steps[0]["gain"] == pytest.approx(math.log(3 / 2)) and steps[-1]["ms"] == [38.0, 38.0]
    assert latency.fill({"a": 2, "b": 4}, sizes, scores, (30.0, 30.0), timed, []) == {"a": 2, "b": 8}


def test_the_budgets_anchor_is_the_fastest_pass_at_each_batch():
    passes = iter([(0.063, 2.36), (0.044, 4.70), (0.045, 2.11)])  # a slow batch 1, then a slow batch 64
    assert latency.anchor_ms(lambda: next(passes)) == (0.044, 2.11)
