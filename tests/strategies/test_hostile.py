"""A server no single device can break: every hostile reply of issue 11 is rejected with its reason
(and nothing raises out of ``aggregate_*``), and the robust modes keep a hostile fleet's aggregate
next to the clean one. Pure strategy maths, no Ray."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict

from admp.state import AdmmSettings, AdmpState
from strategies import protocol as P
from strategies.fedadmp import FedADMP, FedKD
from strategies.fleet import Delivery, Fleet, RoundPolicy
from strategies.robust import Defence, aggregate, combine_figure, combine_statistics, pooled_moments
from strategies.selftraining import DeviceStats, LabelFree, SharedStats, label_free_metrics

pytestmark = pytest.mark.usefixtures("flower_task")

DEVICES = {i: 100 + i for i in range(10)}
PLAIN = Defence()  # weighted mean, with the default bounds
GLOBAL = {"w": torch.ones(4), "bn.num_batches_tracked": torch.tensor(5)}


def _fleet(defence: Defence = PLAIN) -> Fleet:
    return Fleet(
        dict(DEVICES),
        7,
        Delivery(P.to_record({"t": torch.ones(3)}), "abc"),
        base_config={},
        defence=defence,
        capacity=lambda device: (50, 20),  # every device holds 50 unlabeled and 20 test samples
    )


def _fedadmp(defence: Defence = PLAIN, dual: str = "global", clients: int = 10) -> FedADMP:
    state = AdmpState.initial(AdmmSettings(0.5, 0.1, 2.0, 1.0, 0), {"g": 4})
    return FedADMP(
        weights=dict(GLOBAL),
        state=state,
        s_min=0.5,
        warmup_rounds=1,
        dual=dual,
        local_epochs=1,
        fleet=_fleet(defence),
        policy=RoundPolicy(clients, 1),
    )


def _send(strategy, rnd: int = 2) -> dict[int, Message]:
    sent = strategy.configure_train(rnd, P.to_record(GLOBAL), P.make_config({}), None)
    return {m.metadata.dst_node_id: m for m in sent}


def _reply(to: Message, w=None, m=None, n=10, u=None, nbt=6, arrays: ArrayRecord | None = None) -> Message:
    masks = {"m": {"g": torch.tensor(m or [1.0, 1.0, 0.5, 0.5])}, "s": {"g": torch.ones(4)}}
    if u is not None:
        masks["u"] = {"g": torch.tensor(u)}
    weights = {"w": torch.tensor(w or [1.1, 0.9, 1.0, 1.0]), "bn.num_batches_tracked": torch.tensor(nbt)}
    content = {
        P.ARRAYS: arrays if arrays is not None else P.to_record(weights),
        P.MASKS: P.masks_to_record(**masks),
        P.METRICS: P.metrics_record({P.NUM_EXAMPLES: n, "divergence": 0.5}),
    }
    return Message(RecordDict(content), reply_to=to)


def _raw(w: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w": Array(w), "bn.num_batches_tracked": Array(np.array(6))})


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (dict(arrays=_raw(np.ones(4, dtype=np.float64))), "dtype torch.float64, expected torch.float32"),
        (dict(arrays=_raw(np.ones(4, dtype=np.float16))), "dtype torch.float16"),
        (dict(arrays=_raw(np.ones(4, dtype=np.int64))), "dtype torch.int64"),
        (dict(arrays=_raw(np.ones(4, dtype=np.complex64))), "complex"),
        (dict(w=[3e38, 1.0, 1.0, 1.0]), "magnitude 3e+38 above 1e+06"),
        # x1000: the update (999, 999, 999, 999) has norm 1998 > 10 x |global| = 10 x 2 = 20
        (dict(w=[1000.0] * 4), "update norm 1998 above 10 x the global norm (20)"),
        (dict(nbt=2**62), "num_batches_tracked: moved by"),
        (dict(m=[0.0] * 4), "every channel closed"),
        (dict(n=10**12), "num-examples: 1000000000000 is more than this device holds (50)"),
        (dict(n=51), "more than this device holds (50)"),
        (dict(n=-200), "not a positive integer"),
    ],
)
def test_each_hostile_reply_is_rejected_with_its_reason(hostile, reason):
    strategy = _fedadmp(clients=2)
    strategy.state.z_steps = 1  # after the first Z-step (a shut group is checked from then on)
    sent = _send(strategy)
    good, bad = sorted(sent)
    arrays, metrics = strategy.aggregate_train(2, [_reply(sent[good]), _reply(sent[bad], **hostile)])
    assert arrays is not None and int(metrics["valid-replies"]) == 1 and int(metrics["rejected"]) == 1
    (rejection,) = strategy.fleet.rejections
    assert rejection.node_id == bad and reason in rejection.reason
    # the aggregate is the good device's reply alone (bn counter: the maximum, 6)
    assert torch.allclose(P.from_record(arrays)["w"], torch.tensor([1.1, 0.9, 1.0, 1.0]))


@pytest.mark.parametrize(
    ("u", "reason"),
    [
        ([1e30, -1e30, 1e30, -1e30], "masks.u.g: magnitude 1e+30 above 1e+06"),
        # no Z-step yet: each dual step adds m - Z in [-1, 1], so |U| <= 0 + 1
        ([3.0, -3.0, 0.0, 0.0], "masks.u.g: values in [-3, 3], allowed [-1.0, 1.0]"),
    ],
)
def test_duals_beyond_their_bound_are_rejected(u, reason):
    strategy = _fedadmp(dual="per_client", clients=2)
    sent = _send(strategy)
    good, bad = sorted(sent)
    strategy.aggregate_train(2, [_reply(sent[good], u=[0.5, -0.5, 0.0, 1.0]), _reply(sent[bad], u=u)])
    (rejection,) = strategy.fleet.rejections
    assert rejection.node_id == bad and reason in rejection.reason


def test_duplicate_and_unasked_replies_are_rejected():
    strategy = _fedadmp(clients=2)
    sent = _send(strategy)
    first, _ = sorted(sent)
    unasked = next(node for node in DEVICES.values() if node not in sent)
    stranger = Message(_reply(sent[first]).content, reply_to=sent[first])
    stranger.metadata.__dict__["_src_node_id"] = unasked  # a node that was not sampled this round
    replies = [_reply(sent[first]), _reply(sent[first], w=[5.0] * 4), stranger]
    arrays, _ = strategy.aggregate_train(2, replies)
    reasons = sorted(r.reason for r in strategy.fleet.rejections)
    assert reasons == ["a second reply", "not asked this round"]
    assert torch.allclose(P.from_record(arrays)["w"], torch.tensor([1.1, 0.9, 1.0, 1.0]))  # the first reply only


def test_evaluation_replies_are_validated():
    strategy = FedKD(weights=dict(GLOBAL), keep=None, fleet=_fleet(), policy=RoundPolicy(4, 1, eval_clients=4))
    sent = {
        m.metadata.dst_node_id: m for m in strategy.configure_evaluate(3, P.to_record(GLOBAL), P.make_config({}), None)
    }
    nodes = sorted(sent)

    def reply(node, acc, n):
        return Message(
            RecordDict({P.METRICS: P.metrics_record({"accuracy": acc, P.NUM_EXAMPLES: n})}), reply_to=sent[node]
        )

    replies = [reply(nodes[0], 80.0, 20), reply(nodes[1], math.nan, 20), reply(nodes[2], 1e6, 20)]
    replies += [reply(nodes[3], 100.0, 10**12)]
    metrics = strategy.aggregate_evaluate(3, replies)
    assert metrics is not None and float(metrics["accuracy"]) == 80.0 and int(metrics["devices"]) == 1
    reasons = " | ".join(r.reason for r in strategy.fleet.rejections)
    assert "accuracy: nan is not a percentage" in reasons and "accuracy: 1000000.0 is not a percentage" in reasons
    assert "more than this device holds (20)" in reasons
    # n = -200: rejected, and a round where nothing is valid reports nothing (never None from a bad n)
    assert strategy.aggregate_evaluate(3, [reply(nodes[0], 50.0, -200)]) is None


def test_robust_modes_by_hand():
    items = [({"w": torch.tensor([v]), "k": torch.tensor(i)}, 1) for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 100.0])]
    assert aggregate(items, Defence("median"))["w"].item() == 3.0  # the middle of 1, 2, 3, 4, 100
    # trim 0.2 of 5 values: one cut at each end, mean of 2, 3, 4 = 3
    assert aggregate(items, Defence("trimmed_mean", trim=0.2))["w"].item() == pytest.approx(3.0)
    assert aggregate(items, Defence("median"))["k"].item() == 4  # integer buffers: the maximum
    # clip around 0: updates (1, 0), (0, 1), (10, 0) have norms 1, 1, 10; the median bound 1 turns the
    # third into (1, 0); mean of (1, 0), (0, 1), (1, 0) = (2/3, 1/3)
    clipped = [({"w": torch.tensor(v)}, 1) for v in ([1.0, 0.0], [0.0, 1.0], [10.0, 0.0])]
    out = aggregate(clipped, Defence("clip"), {"w": torch.zeros(2)})["w"]
    assert torch.allclose(out, torch.tensor([2 / 3, 1 / 3]))
    fixed = aggregate(clipped, Defence("clip", clip_norm=2.0), {"w": torch.zeros(2)})["w"]
    assert torch.allclose(fixed, torch.tensor([1.0, 1 / 3]))  # (1, 0), (0, 1), (2, 0) -> (3/3, 1/3)


@pytest.mark.parametrize("mode", ["clip", "median", "trimmed_mean"])
def test_robust_modes_keep_a_boosted_update_from_moving_the_model(mode):
    """9 honest devices move w from 1 to about 1.1; one boosted (x8) device stays inside the bounds and
    drags the plain mean by 0.8 x 8 / 10 = 0.56 extra; the robust modes stay near 1.1."""
    gen = torch.Generator().manual_seed(0)
    honest = [1.1 + 0.01 * torch.randn(4, generator=gen) for _ in range(9)]
    boosted = 1.0 + 8 * (torch.full((4,), 1.1) - 1.0) + 8 * 0.5  # update (0.1 + 0.5) x 8 = 4.8 per coordinate
    results = {}
    for name in ("mean", mode):
        strategy = _fedadmp(Defence(name, trim=0.1))
        sent = _send(strategy)
        nodes = sorted(sent)
        replies = [_reply(sent[node], w=w.tolist()) for node, w in zip(nodes[:9], honest, strict=True)]
        replies.append(_reply(sent[nodes[9]], w=boosted.tolist()))
        arrays, metrics = strategy.aggregate_train(2, replies)
        assert int(metrics["valid-replies"]) == 10  # inside every bound: only the aggregation can help
        results[name] = P.from_record(arrays)["w"]
    assert float((results["mean"] - 1.1).abs().max()) > 0.3
    assert float((results[mode] - 1.1).abs().max()) < 0.1


def test_without_known_sizes_a_claim_is_bounded_by_ten_times_the_round_median():
    """device_data: own (real devices' data): the claims 10, 11, 12 and 10^6 have the median 12 (the
    upper middle of four), so the bound is 120 and only the 10^6 is rejected."""
    strategy = _fedadmp(clients=4)
    strategy.fleet.capacity = None
    sent = _send(strategy)
    nodes = sorted(sent)
    replies = [_reply(sent[node], n=n) for node, n in zip(nodes, [10, 11, 12, 10**6], strict=True)]
    _, metrics = strategy.aggregate_train(2, replies)
    assert int(metrics["valid-replies"]) == 3
    (rejection,) = strategy.fleet.rejections
    assert rejection.node_id == nodes[3] and "more than this device holds (120)" in rejection.reason


def test_a_reply_must_answer_the_message_its_node_was_sent():
    """Bound replies: a reply to the node's message of an earlier round (another id) and a reply of another
    type are rejected with their reasons; the reply to this round's message is aggregated."""
    strategy = _fedadmp(clients=3)
    earlier = _send(strategy, rnd=2)
    for i, msg in enumerate(earlier.values()):
        msg.metadata.__dict__["_message_id"] = f"round-2-{i}"  # what a grid sets on push
    sent = _send(strategy, rnd=3)
    for i, msg in enumerate(sent.values()):
        msg.metadata.__dict__["_message_id"] = f"round-3-{i}"
    first, second, third = sorted(sent)
    stale = _reply(earlier[second])  # the same node's reply to round 2's message
    evaluate = Message(RecordDict({}), dst_node_id=third, message_type=str(P.EVALUATE))
    evaluate.metadata.__dict__["_message_id"] = "round-3-2"
    cross = _reply(evaluate)  # answers round 3's id, but as an evaluate reply to a train message
    cross.metadata.__dict__["_src_node_id"] = third
    arrays, metrics = strategy.aggregate_train(3, [_reply(sent[first]), stale, cross])
    assert arrays is not None and int(metrics["valid-replies"]) == 1 and int(metrics["rejected"]) == 2
    reasons = sorted(r.reason for r in strategy.fleet.rejections)
    assert reasons == [
        "a reply of type evaluate to a train message",
        "a reply to another message (stale, duplicated or of another round)",
    ]


def test_fleet_statistics_follow_the_mode_by_hand():
    """Per-example statistics (0.5, 0.5), (0.6, 0.4) and a claim of (1, 0) on 1000 examples."""
    items = [({"p": torch.tensor(v)}, n) for v, n in (([0.5, 0.5], 10), ([0.6, 0.4], 10), ([1.0, 0.0], 1000))]
    assert combine_statistics(items, PLAIN)["p"].tolist() == pytest.approx([1011 / 1020, 9 / 1020], abs=1e-6)
    assert combine_statistics(items, Defence("median"))["p"].tolist() == pytest.approx([0.6, 0.4])
    assert combine_statistics(items, Defence("trimmed_mean", trim=0.34))["p"].tolist() == pytest.approx([0.6, 0.4])
    # clip: centre (0.6, 0.4); distances 0.1414, 0, 0.5657; the median bound 0.1414 moves the claim a quarter
    # of the way, to (0.7, 0.3); weighted mean (10 x 0.5 + 10 x 0.6 + 1000 x 0.7) / 1020
    clipped = combine_statistics(items, Defence("clip"))["p"]
    assert clipped.tolist() == pytest.approx([711 / 1020, 309 / 1020], abs=1e-6)


def test_pooled_bn_moments_follow_the_mode_by_hand():
    """E[x] = 1, 2, 100 and E[x^2] = 2, 5, 10001: the median pools mean 2 and E[x^2] 5, variance 5 - 4 = 1;
    the mean pools the union (n = 1 each): mean 103/3, variance 10008/3 - (103/3)^2."""
    items = [
        ({"bn": torch.tensor([m])}, {"bn": torch.tensor([s])}, 1) for m, s in ((1.0, 2.0), (2.0, 5.0), (100.0, 10001.0))
    ]
    means, variances = pooled_moments(items, Defence("median"))
    assert means["bn"].item() == 2.0 and variances["bn"].item() == pytest.approx(1.0)
    means, variances = pooled_moments(items, PLAIN)
    assert means["bn"].item() == pytest.approx(103 / 3) and variances["bn"].item() == pytest.approx(
        10008 / 3 - (103 / 3) ** 2, rel=1e-5
    )


@pytest.mark.parametrize("mode", ["clip", "median", "trimmed_mean"])
def test_one_plausible_claim_cannot_move_the_fleet_marginal_or_its_label_free_score(mode):
    """Nine devices predict (0.5, 0.5) with entropy 0.6 on 50 samples; a tenth claims (1, 0) and entropy 0
    on 50. The mean moves the marginal to (0.55, 0.45); a robust mode keeps it at (0.5, 0.5) (the clip's
    median distance is 0: the claim is moved onto the median), and the label-free score with it."""
    shared = SharedStats(2, marginal_on=True)
    honest = [(DeviceStats(mean_prediction=torch.tensor([0.5, 0.5])), 50) for _ in range(9)]
    claim = (DeviceStats(mean_prediction=torch.tensor([1.0, 0.0])), 50)
    shared.update([*honest, claim], Defence(mode, trim=0.1))
    assert shared.marginal.tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    shared.update([*honest, claim])
    assert shared.marginal.tolist() == pytest.approx([0.55, 0.45], abs=1e-6)
    views = [LabelFree(0.6, torch.tensor([0.5, 0.5]), 50)] * 9 + [LabelFree(0.0, torch.tensor([1.0, 0.0]), 50)]
    robust = label_free_metrics(views, Defence(mode, trim=0.1))
    assert robust["prediction-entropy"] == pytest.approx(0.6) and robust["class-balance"] == pytest.approx(1.0)
    assert label_free_metrics(views)["prediction-entropy"] == pytest.approx(0.54)


@pytest.mark.parametrize("mode", ["clip", "median", "trimmed_mean"])
def test_one_plausible_claim_cannot_move_the_fleet_accuracy(mode):
    """Nine devices report 80 % on 20 test samples, a tenth claims 0 % on its 20 (inside every bound). The
    pooled ``accuracy`` falls to 72 %; ``accuracy-robust`` under a robust mode keeps 80 %."""
    fleet = _fleet(Defence(mode, trim=0.1))
    strategy = FedKD(weights=dict(GLOBAL), keep=None, fleet=fleet, policy=RoundPolicy(10, 1, eval_clients=10))
    sent = strategy.configure_evaluate(3, P.to_record(GLOBAL), P.make_config({}), None)
    replies = [
        Message(RecordDict({P.METRICS: P.metrics_record({"accuracy": acc, P.NUM_EXAMPLES: 20})}), reply_to=m)
        for m, acc in zip(sent, [80.0] * 9 + [0.0], strict=True)
    ]
    metrics = strategy.aggregate_evaluate(3, replies)
    assert metrics is not None and int(metrics["devices"]) == 10
    assert float(metrics["accuracy-robust"]) == pytest.approx(80.0) and float(metrics["accuracy"]) == pytest.approx(72)


def test_evaluation_figures_by_hand():
    """(90 %, 100), (90 %, 100), (60 %, 300), (50 %, 0): the untested device does not count. mean:
    (90 + 90 + 180) / 5 = 72; median of 90, 90, 60 = 90; trimmed (a third at each end) = 90."""
    pairs = [(90.0, 100), (90.0, 100), (60.0, 300), (50.0, 0)]
    assert combine_figure(pairs, PLAIN) == pytest.approx(72.0)
    assert combine_figure(pairs, Defence("median")) == pytest.approx(90.0)
    assert combine_figure(pairs, Defence("trimmed_mean", trim=0.34)) == pytest.approx(90.0)
    assert combine_figure([(50.0, 0)], Defence("median")) == 0.0


def test_a_forged_reply_first_does_not_shut_out_the_nodes_real_one():
    """A reply to another message arrives before the node's real reply: the forgery is rejected and the
    real reply, which answers what was sent, is aggregated."""
    strategy = _fedadmp(clients=2)
    sent = _send(strategy)
    for i, msg in enumerate(sent.values()):
        msg.metadata.__dict__["_message_id"] = f"round-2-{i}"  # what a grid sets on push
    first, second = sorted(sent)
    forged = Message(_reply(sent[first], w=[5.0] * 4).content, reply_to=sent[second])
    forged.metadata.__dict__["_src_node_id"] = first  # from the first node, answering the second's message
    arrays, _ = strategy.aggregate_train(2, [forged, _reply(sent[first])])
    reasons = [r.reason for r in strategy.fleet.rejections]
    assert reasons == ["a reply to another message (stale, duplicated or of another round)"]
    assert torch.allclose(P.from_record(arrays)["w"], torch.tensor([1.1, 0.9, 1.0, 1.0]))
