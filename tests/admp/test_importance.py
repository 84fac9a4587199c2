"""The fleet's choice of channels (admp.importance, server.importance): gate Fisher information on
unlabeled data, its pooling, the stepped keep set, and the server's checks of a device's sums."""

import math

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from admp.importance import fisher_keep, fisher_ratios, gate_fisher, pooled_fisher, stepped_keep
from admp.masks import gated, group_sizes
from admp.models import build_model
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from server.importance import _parse_fisher
from strategies import protocol as P
from strategies.aggregation import ReplyError


def _brute_force(model, groups, x, labels, keep=None):
    """sum_i (d log p(y_i | x_i) / d m)^2 by autograd on explicit gates, one sample at a time."""
    sizes = group_sizes(model, groups)
    total = {g: torch.zeros(c) for g, c in sizes.items()}
    for xi, yi in zip(x, labels, strict=True):
        gates = {g: (keep[g].clone() if keep else torch.ones(c)).requires_grad_(True) for g, c in sizes.items()}
        with gated(model, groups, gates):
            log_p = torch.log_softmax(model(xi[None]), dim=1)[0, yi]
        log_p.backward()
        for g in sizes:
            total[g] += gates[g].grad ** 2
    return total


def _drawn_labels(model, x, seed):
    """The labels gate_fisher draws with a generator seeded ``seed`` (one batch)."""
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def test_gate_fisher_is_the_sum_of_squared_per_sample_gate_gradients():
    torch.manual_seed(0)
    model = build_model("lenet", 4, width=0.25).eval()
    groups = model.channel_groups()
    x = torch.randn(5, 1, 28, 28)
    fisher = gate_fisher(model, groups, x, torch.Generator().manual_seed(3))
    expected = _brute_force(model, groups, x, _drawn_labels(model, x, 3))
    for g in expected:
        assert torch.allclose(fisher[g], expected[g], rtol=1e-4, atol=1e-9)
        assert bool((fisher[g] > 0).all())  # every open channel moves some prediction


def test_gate_fisher_under_a_keep_set_measures_the_open_channels_only():
    torch.manual_seed(1)
    model = build_model("lenet", 4, width=0.25).eval()
    groups = model.channel_groups()
    sizes = group_sizes(model, groups)
    keep = {g: torch.tensor([1.0, 0.0] * (c // 2) + [1.0] * (c % 2)) for g, c in sizes.items()}
    x = torch.randn(4, 1, 28, 28)
    fisher = gate_fisher(model, groups, x, torch.Generator().manual_seed(5), keep)
    with gated(model, groups, keep):
        labels = _drawn_labels(model, x, 5)
    expected = _brute_force(model, groups, x, labels, keep)
    for g in sizes:
        assert bool((fisher[g][keep[g] == 0] == 0).all())  # a closed gate is not a candidate
        assert torch.allclose(fisher[g][keep[g] == 1], expected[g][keep[g] == 1], rtol=1e-4, atol=1e-9)


def test_batches_add_up_to_the_whole():
    torch.manual_seed(2)
    model = build_model("mlp", 3).eval()
    groups = model.channel_groups()
    x = torch.randn(10, *model.input_shape)
    whole = gate_fisher(model, groups, x, torch.Generator().manual_seed(0), batch_size=10)
    labels = _drawn_labels(model, x, 0)
    expected = _brute_force(model, groups, x, labels)
    for g in whole:
        assert torch.allclose(whole[g], expected[g], rtol=1e-4, atol=1e-9)


def test_fisher_ratios_remove_the_same_share_of_what_remains():
    # p = 0.9 in 3 steps: kept shares 0.1^(1/3) = 0.4642, 0.1^(2/3) = 0.2154, 0.1
    assert fisher_ratios(0.9, 3) == pytest.approx([0.5358, 0.7846, 0.9], abs=1e-4)
    assert fisher_ratios(0.6, 1) == [0.6]
    with pytest.raises(ValueError, match="steps"):
        fisher_ratios(0.6, 0)


def test_fisher_keep_takes_the_largest_among_the_channels_still_kept():
    scores = {"g": torch.tensor([0.1, 0.5, 0.3, 0.2])}
    assert fisher_keep(scores, None, 0.5)["g"].tolist() == [0.0, 1.0, 1.0, 0.0]
    # channel 1 was removed in an earlier step: the top 2 of channels 0, 2, 3 are 2 and 3
    closed = {"g": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    assert fisher_keep(scores, closed, 0.5)["g"].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_stepped_keep_measures_each_step_under_the_last_steps_gates():
    seen = []
    scores = {"g": torch.tensor([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0])}

    def measure(keep):
        seen.append(None if keep is None else keep["g"].tolist())
        return scores

    keep = stepped_keep(measure, 0.75, 2)
    # step 1 at 1 - 0.25^(1/2) = 0.5: keep ceil(4) = channels 0, 2, 4, 6; step 2 at 0.75: top 2 of those
    assert seen == [None, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    assert keep["g"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_pooled_fisher_is_the_fleet_mean_per_sample():
    items = [({"g": torch.tensor([2.0, 4.0])}, 2), ({"g": torch.tensor([1.0, 0.0])}, 3)]
    # (2 + 1) / 5 = 0.6, (4 + 0) / 5 = 0.8
    assert pooled_fisher(items)["g"].tolist() == pytest.approx([0.6, 0.8])


class _Bounds:
    def examples_bound(self, device, split, metric=P.NUM_EXAMPLES):
        return 10


def _reply(arrays, n=5):
    return RecordDict({P.ARRAYS: ArrayRecord(arrays), P.METRICS: MetricRecord({P.NUM_EXAMPLES: n})})


def test_the_server_takes_sane_fisher_sums_and_refuses_the_rest():
    parse = _parse_fisher({"g": 3}, _Bounds())
    sums, n = parse(0, _reply({"fisher.g": torch.tensor([1.0, 0.0, 2.0])}))
    assert sums["g"].tolist() == [1.0, 0.0, 2.0] and n == 5
    bad = {
        "shape": ({"fisher.g": torch.ones(4)}, 5),
        "unexpected keys": ({"fisher.g": torch.ones(3), "fisher.h": torch.ones(3)}, 5),
        "non-finite": ({"fisher.g": torch.tensor([1.0, math.nan, 0.0])}, 5),
        "negative": ({"fisher.g": torch.tensor([1.0, -1.0, 0.0])}, 5),
        "above": ({"fisher.g": torch.tensor([1.0, 6e6, 0.0])}, 5),  # mean 1.2e6 per sample
        "more than this device holds": ({"fisher.g": torch.ones(3)}, 11),
    }
    for reason, (arrays, count) in bad.items():
        with pytest.raises(ReplyError, match=reason):
            parse(0, _reply(arrays, count))


def test_merge_recovery_follows_the_start_and_fisher_is_not_a_private_release():
    from_ones = config_from_overrides(["admp.keep_init=none"])
    assert from_ones.admp.merge_recovery == "student"  # from ones: the cut needs the repair
    for init in ("l1", "fisher"):
        assert config_from_overrides([f"admp.keep_init={init}"]).admp.merge_recovery == "none"
    assert config_from_overrides(["admp.keep_init=l1", "admp.merge_recovery=student"]).admp.merge_recovery == "student"
    with pytest.raises(ConfigError, match="keep_init: fisher"):
        config_from_overrides(
            ["admp.keep_init=fisher", "federation.privacy.mode=central", "federation.privacy.target_epsilon=8"]
        )
