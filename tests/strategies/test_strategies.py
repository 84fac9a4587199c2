"""Strategy maths and reply validation on mocked Flower messages (no Ray)."""

import math

import pytest
import torch
from flwr.app import Error, Message, RecordDict

from admp.state import AdmmSettings, AdmpState
from server.guards import keeps_result, student_flag
from strategies import protocol as P
from strategies.aggregation import ReplyError, bn_statistics, check_arrays, check_range, weighted_average
from strategies.fedadmp import FedADMP, FedKD
from strategies.fleet import Delivery, Fleet, RoundPolicy
from strategies.selftraining import LabelFree, SharedStats, label_free_metrics
from tests.conftest import set_flower_task


@pytest.fixture(autouse=True)
def task_identity():
    """Flower needs a run/task identity to build messages outside a running app."""
    set_flower_task()
    yield


def test_weighted_average_by_hand():
    a = {"w": torch.tensor([1.0, 1.0]), "count": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 5.0]), "count": torch.tensor(9)}
    out = weighted_average([(a, 1), (b, 3)])
    assert torch.allclose(out["w"], torch.tensor([2.5, 4.0]))  # (1*1 + 3*3)/4, (1*1 + 3*5)/4
    assert int(out["count"]) == 9  # integer buffers take the maximum


def test_checks_reject_bad_arrays():
    expected = {"w": (2,)}
    check_arrays({"w": torch.zeros(2)}, expected, "weights")
    with pytest.raises(ReplyError, match="missing keys"):
        check_arrays({}, expected, "weights")
    with pytest.raises(ReplyError, match=r"weights.w: shape \(3,\)"):
        check_arrays({"w": torch.zeros(3)}, expected, "weights")
    with pytest.raises(ReplyError, match="non-finite"):
        check_arrays({"w": torch.tensor([0.0, math.nan])}, expected, "weights")
    with pytest.raises(ReplyError, match=r"masks.m.g: values in \[-0.1"):
        check_range({"g": torch.tensor([-0.1, 0.5])}, 0.0, 1.0, "masks.m")


def test_bn_statistics_pool_moments_by_hand():
    # client A: values {-1, 1} -> E[x]=0, E[x^2]=1; client B: {1, 3} -> E[x]=2, E[x^2]=5
    mean, var = bn_statistics(
        [
            ({"bn": torch.tensor([0.0])}, {"bn": torch.tensor([1.0])}, 2),
            ({"bn": torch.tensor([2.0])}, {"bn": torch.tensor([5.0])}, 2),
        ]
    )
    assert float(mean["bn"]) == pytest.approx(1.0)  # mean of {-1, 1, 1, 3}
    assert float(var["bn"]) == pytest.approx(2.0)  # population variance of {-1, 1, 1, 3}


DEVICES = {0: 100, 1: 101, 2: 102, 3: 103}


def _fleet(seed: int = 7) -> Fleet:
    return Fleet(dict(DEVICES), seed, Delivery(P.to_record({"t": torch.ones(3)}), "abc"), base_config={})


def _strategy(
    seed: int = 7,
    prune_ratio: float = 0.5,
    rho: float = 0.1,
    prune_ramp: int = 0,
    dual: str = "global",
    clients: int = 2,
    min_replies: int = 1,
) -> FedADMP:
    state = AdmpState.initial(AdmmSettings(prune_ratio, rho, 2.0, 1.0, prune_ramp), {"g": 4})
    return FedADMP(
        weights={"w": torch.zeros(2)},
        state=state,
        s_min=0.5,
        warmup_rounds=1,
        dual=dual,
        local_epochs=1,
        fleet=_fleet(seed),
        policy=RoundPolicy(clients, min_replies),
    )


def _reply(to: Message, w, m, s, n, u=None) -> Message:
    masks = {"m": {"g": torch.tensor(m)}, "s": {"g": torch.tensor(s)}}
    if u is not None:
        masks["u"] = {"g": torch.tensor(u)}
    return Message(
        RecordDict(
            {
                P.ARRAYS: P.to_record({"w": torch.tensor(w)}),
                P.MASKS: P.masks_to_record(**masks),
                P.METRICS: P.metrics_record({P.NUM_EXAMPLES: n, "divergence": 0.5}),
            }
        ),
        reply_to=to,
    )


def _messages(strategy, rnd):
    return {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(rnd, P.to_record({"w": torch.zeros(2)}), P.make_config({}), None)
    }


def test_sampling_is_seeded_by_root_seed_and_round():
    a, b = _strategy(), _strategy()
    assert a.sample(3, 2) == b.sample(3, 2)
    assert len(a.sample(3, 2)) == 2 and a.sample(3, 0) == [0, 1, 2, 3]
    draws = {tuple(a.sample(r, 2)) for r in range(1, 30)}
    assert len(draws) > 1  # not the same devices every round
    other = _strategy(seed=8)
    assert any(other.sample(r, 2) != a.sample(r, 2) for r in range(1, 30))  # the root seed matters


def test_aggregation_validation_and_admm_round():
    strategy = _strategy(clients=4)
    msgs = _messages(strategy, 2)
    replies = [
        _reply(msgs[100], [1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0] * 4, 1),
        _reply(msgs[101], [3.0, 3.0], [0.6, 0.2, 1.0, 0.2], [1.0, 1.0, 0.5, 1.0], 3),
        _reply(msgs[102], [5.0, 5.0], [1.5, 0.0, 0.0, 0.0], [1.0] * 4, 5),  # m out of range
        Message(Error(code=P.CLIENT_ERROR, reason="RuntimeError: sensor offline"), reply_to=msgs[103]),
    ]
    arrays, metrics = strategy.aggregate_train(2, replies)
    assert torch.allclose(P.from_record(arrays)["w"], torch.tensor([2.5, 2.5]))
    assert torch.allclose(strategy.state.m["g"], torch.tensor([0.7, 0.4, 0.75, 0.15]))
    assert torch.allclose(strategy.state.s["g"], torch.tensor([1.0, 1.0, 0.625, 1.0]))
    # round 2 > warm-up 1: Z = top-2(m + 0), U = m - Z, rho starts at its initial value
    assert strategy.state.z["g"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.allclose(strategy.state.u["g"], torch.tensor([-0.3, 0.4, -0.25, 0.15]))
    assert strategy.state.rho == pytest.approx(0.1) and int(metrics["valid-replies"]) == 2
    reasons = {r.device: r.reason for r in strategy.fleet.rejections}
    assert set(reasons) == {2, 3}
    assert "masks.m.g: values in [0, 1.5]" in reasons[2] and "sensor offline" in reasons[3]
    stale = _reply(msgs[100], [1.0, 1.0], [1.0] * 4, [1.0] * 4, 1)  # round 2's exchange, aggregated in round 3
    assert strategy.aggregate_train(3, [stale])[0] is None and strategy.fleet.rejections[-1].reason == (
        "not asked this round"
    )
    msgs = _messages(strategy, 3)
    strategy.aggregate_train(3, [_reply(msgs[100], [1.0, 1.0], [1.0] * 4, [1.0] * 4, 1)])
    assert strategy.state.rho == pytest.approx(0.2)  # rho schedule: x2


def test_too_few_valid_replies_keep_the_global_state():
    strategy = _strategy(clients=4, min_replies=2)
    msgs = _messages(strategy, 2)
    before = strategy.state.m["g"].clone()
    arrays, metrics = strategy.aggregate_train(2, [_reply(msgs[100], [1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [1.0] * 4, 1)])
    assert arrays is None and int(metrics["valid-replies"]) == 1
    assert torch.equal(strategy.state.m["g"], before)


def test_wrong_shapes_and_counts_are_rejected():
    strategy = _strategy(clients=4)
    msgs = _messages(strategy, 1)
    bad_shape = _reply(msgs[100], [1.0, 1.0, 1.0], [1.0] * 4, [1.0] * 4, 1)
    bad_count = _reply(msgs[101], [1.0, 1.0], [1.0] * 4, [1.0] * 4, 0)
    bad_soft = _reply(msgs[102], [1.0, 1.0], [1.0] * 4, [0.2] * 4, 1)  # below s_min
    arrays, _ = strategy.aggregate_train(1, [bad_shape, bad_count, bad_soft])
    assert arrays is None
    reasons = sorted(r.reason for r in strategy.fleet.rejections)
    assert any("arrays.w: shape (3,)" in r for r in reasons)
    assert any("num-examples: 0" in r for r in reasons)
    assert any("masks.s.g" in r for r in reasons)


def test_per_client_duals_use_consensus():
    strategy = _strategy(dual="per_client", clients=4)
    msgs = _messages(strategy, 2)
    replies = [
        _reply(msgs[100], [0.0, 0.0], [0.2, 0.9, 0.1, 0.5], [1.0] * 4, 1, u=[0.5, 0.0, 0.0, 0.0]),
        _reply(msgs[101], [0.0, 0.0], [0.2, 0.9, 0.1, 0.5], [1.0] * 4, 1, u=[0.5, 0.0, 0.0, 0.0]),
    ]
    strategy.aggregate_train(2, replies)
    assert strategy.state.z["g"].tolist() == [1.0, 1.0, 0.0, 0.0]  # top-2 of m + U = [0.7, 0.9, 0.1, 0.5]
    missing_u = _reply(msgs[100], [0.0, 0.0], [0.2] * 4, [1.0] * 4, 1)
    assert strategy.aggregate_train(3, [missing_u])[0] is None


def test_teacher_is_sent_once_per_device_and_again_when_missing():
    strategy = _strategy(clients=4)
    first = _messages(strategy, 1)
    assert all(P.TEACHER in m.content for m in first.values())
    second = _messages(strategy, 2)
    assert not any(P.TEACHER in m.content for m in second.values())
    assert strategy.fleet.delivery.sends == {0: 1, 1: 1, 2: 1, 3: 1}
    lost = Message(Error(code=P.TEACHER_MISSING, reason="TeacherMissing: no cached teacher"), reply_to=second[101])
    strategy.aggregate_train(2, [lost])
    third = _messages(strategy, 3)
    assert [d for d, n in strategy.fleet.devices.items() if P.TEACHER in third[n].content] == [1]
    assert strategy.fleet.delivery.sends[1] == 2
    down_with_teacher = P.content_bytes(third[101].content)
    assert down_with_teacher > P.content_bytes(third[100].content)


def test_fedkd_averages_weights_and_sends_keep_masks():
    keep = {"g": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    fleet = Fleet({0: 10, 1: 11}, 1, Delivery(P.to_record({"t": torch.ones(1)}), "h"), base_config={})
    strategy = FedKD(
        weights={"w": torch.zeros(2)}, keep=keep, local_epochs=1, lr=0.01, fleet=fleet, policy=RoundPolicy(2)
    )
    msgs = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(1, P.to_record({"w": torch.zeros(2)}), P.make_config({}), None)
    }
    assert P.record_to_masks(msgs[10].content[P.MASKS], "keep")["g"].tolist() == keep["g"].tolist()
    assert msgs[10].metadata.message_type == P.TRAIN_KD
    replies = [
        Message(
            RecordDict(
                {
                    P.ARRAYS: P.to_record({"w": torch.tensor([2.0, 0.0])}),
                    P.METRICS: P.metrics_record({P.NUM_EXAMPLES: 1, "divergence": 1.0}),
                }
            ),
            reply_to=msgs[10],
        ),
        Message(
            RecordDict(
                {
                    P.ARRAYS: P.to_record({"w": torch.tensor([4.0, 4.0])}),
                    P.METRICS: P.metrics_record({P.NUM_EXAMPLES: 1, "divergence": 3.0}),
                }
            ),
            reply_to=msgs[11],
        ),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert P.from_record(arrays)["w"].tolist() == [3.0, 2.0]
    assert float(metrics["divergence"]) == pytest.approx(2.0)


def test_rho_zero_is_plain_l1_without_admm_steps():
    strategy = _strategy(rho=0.0, clients=4)
    msgs = _messages(strategy, 2)
    replies = [
        _reply(msgs[100], [1.0, 1.0], [0.9, 0.1, 0.4, 0.3], [1.0] * 4, 1),
        _reply(msgs[101], [1.0, 1.0], [0.9, 0.1, 0.4, 0.3], [1.0] * 4, 1),
    ]
    strategy.aggregate_train(2, replies)  # past the warm-up, yet no Z/U step and no penalty
    assert strategy.state.z["g"].tolist() == [1.0] * 4 and strategy.state.u["g"].tolist() == [0.0] * 4
    assert strategy.state.rho == 0.0
    assert strategy.state.merge_mask()["g"].tolist() == [1.0, 0.0, 1.0, 0.0]  # top-2 of m itself


def test_prune_ramp_prunes_part_of_the_share_at_the_first_z_step():
    strategy = _strategy(prune_ramp=2, clients=4)  # p = 0.5 over 4 channels: 1 pruned at the first Z-step, then 2
    reply = lambda rnd: [_reply(_messages(strategy, rnd)[100], [1.0, 1.0], [0.9, 0.1, 0.4, 0.3], [1.0] * 4, 1)]  # noqa: E731
    strategy.aggregate_train(2, reply(2))
    assert strategy.state.z["g"].tolist() == [1.0, 0.0, 1.0, 1.0]  # keep ceil(0.75 * 4) = 3
    strategy.aggregate_train(3, reply(3))
    assert strategy.state.z["g"].sum() == 2 and strategy.state.merge_mask()["g"].sum() == 2


def test_fleet_marginal_is_aggregated_validated_and_sent_with_the_next_round():
    fleet = Fleet({0: 100, 1: 101, 2: 102}, 7, Delivery(P.to_record({"t": torch.ones(3)}), "abc"), {},
                  shared=SharedStats(2, marginal_on=True))  # fmt: skip
    strategy = FedKD(weights={"w": torch.zeros(2)}, keep=None, fleet=fleet, policy=RoundPolicy(3))
    msgs = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, P.to_record({"w": torch.zeros(2)}),
                                                                        P.make_config({}), None)}  # fmt: skip
    assert not any(P.FLEET in m.content for m in msgs.values())  # no marginal before the first round

    def reply(node, p, n):
        return Message(RecordDict({P.ARRAYS: P.to_record({"w": torch.zeros(2)}),
                                   P.STATS: P.to_record({"mean-prediction": torch.tensor(p)}),
                                   P.METRICS: P.metrics_record({P.NUM_EXAMPLES: n, "divergence": 0.1})}),
                       reply_to=msgs[node])  # fmt: skip

    _, metrics = strategy.aggregate_train(
        1, [reply(100, [0.8, 0.2], 1), reply(101, [0.4, 0.6], 3), reply(102, [0.9, 0.3], 5)]
    )
    # device 2's prediction sums to 1.2: rejected; (1 * 0.8 + 3 * 0.4) / 4 = 0.5 -> a balanced fleet, entropy ln 2
    assert fleet.shared.marginal.tolist() == pytest.approx([0.5, 0.5]) and fleet.shared.marginal_examples == 4
    assert float(metrics["marginal-entropy"]) == pytest.approx(math.log(2), abs=1e-6)
    assert [r.device for r in fleet.rejections] == [2] and "sums to 1.2" in fleet.rejections[0].reason
    nxt = list(strategy.configure_train(2, P.to_record({"w": torch.zeros(2)}), P.make_config({}), None))
    sent = P.from_record(P.array_record(nxt[0].content, P.FLEET))["marginal"]
    assert sent.tolist() == pytest.approx([0.5, 0.5]) and int(nxt[0].content[P.CONFIG]["fleet-examples"]) == 4


def test_fleet_centroids_are_the_pooled_centroids_validated_and_sent_with_the_next_round():
    """Two devices' feature sums add up to the fleet's centroids, row by row over the summed masses;
    a class sum longer than its mass, or masses that do not add up to num-examples, are rejected."""
    fleet = Fleet({0: 100, 1: 101, 2: 102, 3: 103}, 7, Delivery(P.to_record({"t": torch.ones(3)}), "abc"), {},
                  shared=SharedStats(2, centroids_on=True, feature_dim=2))  # fmt: skip
    strategy = FedKD(weights={"w": torch.zeros(2)}, keep=None, fleet=fleet, policy=RoundPolicy(4))
    msgs = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, P.to_record({"w": torch.zeros(2)}),
                                                                        P.make_config({}), None)}  # fmt: skip
    assert not any(P.FLEET in m.content for m in msgs.values())  # no centroids before the first round

    def reply(node, sums, mass, n):
        stats = {"feature-sums": torch.tensor(sums), "feature-mass": torch.tensor(mass)}
        return Message(RecordDict({P.ARRAYS: P.to_record({"w": torch.zeros(2)}), P.STATS: P.to_record(stats),
                                   P.METRICS: P.metrics_record({P.NUM_EXAMPLES: n, "divergence": 0.1})}),
                       reply_to=msgs[node])  # fmt: skip

    _, metrics = strategy.aggregate_train(
        1,
        [
            reply(100, [[0.6, 0.0], [0.0, 0.0]], [1.0, 0.0], 1),  # class 0 only
            reply(101, [[0.2, 0.0], [0.0, 1.6]], [1.0, 2.0], 3),
            reply(102, [[3.0, 0.0], [0.0, 0.0]], [1.0, 0.0], 1),  # |S_0| = 3 > M_0 = 1: rejected
            reply(103, [[0.5, 0.0], [0.0, 0.5]], [1.0, 1.0], 5),  # masses add up to 2, not 5: rejected
        ],
    )
    # class 0: (0.6 + 0.2) / (1 + 1) = 0.4; class 1: 1.6 / 2 = 0.8
    assert torch.allclose(fleet.shared.sums.centroids(), torch.tensor([[0.4, 0.0], [0.0, 0.8]]), atol=1e-6)
    assert int(metrics["centroid-classes"]) == 2
    assert [r.device for r in fleet.rejections] == [2, 3]
    assert "longer than its mass" in fleet.rejections[0].reason and "not num-examples 5" in fleet.rejections[1].reason
    nxt = list(strategy.configure_train(2, P.to_record({"w": torch.zeros(2)}), P.make_config({}), None))
    sent = P.from_record(P.array_record(nxt[0].content, P.FLEET))
    assert set(sent) == {"centroids"} and torch.allclose(
        sent["centroids"], torch.tensor([[0.4, 0.0], [0.0, 0.8]]), atol=1e-6
    )
    fleet.shared.start_phase(2)  # same feature length (LeNet's pruned student): the centroids stay
    assert fleet.shared.sums is not None
    fleet.shared.start_phase(5)  # a pruned student with other features: they go, devices use their own
    assert fleet.shared.sums is None and fleet.shared.records() == {}


def test_label_free_metrics_by_hand():
    """A sure device predicting class 0 and an unsure one predicting both alike: mean entropy ln2 / 2,
    fleet marginal [0.75, 0.25] with entropy 0.5623 nats: score 0.3466 - 0.5623 = -0.2158."""
    items = [LabelFree(0.0, torch.tensor([1.0, 0.0]), 1), LabelFree(math.log(2), torch.tensor([0.5, 0.5]), 1)]
    metrics = label_free_metrics(items)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert metrics["prediction-entropy"] == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert metrics["class-balance"] == pytest.approx(h / math.log(2), abs=1e-6)
    assert metrics["label-free-score"] == pytest.approx(math.log(2) / 2 - h, abs=1e-6)
    collapsed = label_free_metrics([LabelFree(0.0, torch.tensor([1.0, 0.0]), 2)])  # sure, but one class
    assert collapsed["class-balance"] == pytest.approx(0.0, abs=1e-6) and collapsed["label-free-score"] > -0.2158


def test_evaluation_replies_carry_a_validated_label_free_view():
    fleet = Fleet({0: 100, 1: 101}, 7, Delivery(P.to_record({"t": torch.ones(3)}), "abc"), {},
                  shared=SharedStats(2))  # fmt: skip
    strategy = FedKD(weights={"w": torch.zeros(2)}, keep=None, fleet=fleet, policy=RoundPolicy(2))

    def ask(rnd):
        return {m.metadata.dst_node_id: m for m in strategy.configure_evaluate(rnd, P.to_record({"w": torch.zeros(2)}),
                                                                               P.make_config({}), None)}  # fmt: skip

    msgs = ask(1)

    def reply(node, entropy, p):
        metrics = {"accuracy": 50.0, P.NUM_EXAMPLES: 10, "entropy": entropy, "unlabeled": 4}
        return Message(RecordDict({P.METRICS: P.metrics_record(metrics),
                                   P.STATS: P.to_record({"mean-prediction": torch.tensor(p)})}),
                       reply_to=msgs[node])  # fmt: skip

    good = strategy.aggregate_evaluate(1, [reply(100, 0.0, [1.0, 0.0]), reply(101, math.log(2), [0.5, 0.5])])
    assert float(good["label-free-score"]) == pytest.approx(
        math.log(2) / 2 + 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
    )
    msgs = ask(2)
    bad = strategy.aggregate_evaluate(2, [reply(100, 0.0, [1.0, 0.0]), reply(101, 0.9, [0.5, 0.5])])
    assert int(bad["devices"]) == 1 and "outside [0, log 2]" in fleet.rejections[-1].reason  # 0.9 > ln 2: rejected


def test_an_evaluation_asked_for_fleet_stats_seeds_the_aggregates_of_the_first_round():
    """A phase's start: the evaluate replies' mean predictions and feature sums become the fleet's
    marginal and centroids, so round 1 needs no device's own (label-skewed) ones; a reply whose sums
    fail a check is rejected whole, and an ordinary evaluation leaves the aggregates alone."""
    fleet = Fleet({0: 100, 1: 101, 2: 102}, 7, Delivery(P.to_record({"t": torch.ones(3)}), "abc"), {},
                  shared=SharedStats(2, marginal_on=True, centroids_on=True, feature_dim=2))  # fmt: skip
    strategy = FedKD(weights={"w": torch.zeros(2)}, keep=None, fleet=fleet, policy=RoundPolicy(3))
    arrays = P.to_record({"w": torch.zeros(2)})

    def reply(msgs, node, p, sums, mass, n):
        metrics = {"accuracy": 50.0, P.NUM_EXAMPLES: 10, "entropy": 0.1, "unlabeled": n}
        stats = {"mean-prediction": torch.tensor(p)}
        if strategy.exchange.collect_stats:  # a device sends its sums only when asked
            stats |= {"feature-sums": torch.tensor(sums), "feature-mass": torch.tensor(mass)}
        return Message(RecordDict({P.METRICS: P.metrics_record(metrics), P.STATS: P.to_record(stats)}),
                       reply_to=msgs[node])  # fmt: skip

    def evaluate(rnd, asked):
        config = P.make_config({"fleet-stats": asked})
        msgs = {m.metadata.dst_node_id: m for m in strategy.configure_evaluate(rnd, arrays, config, None)}
        return strategy.aggregate_evaluate(rnd, [
            reply(msgs, 100, [1.0, 0.0], [[0.6, 0.0], [0.0, 0.0]], [1.0, 0.0], 1),
            reply(msgs, 101, [1 / 3, 2 / 3], [[0.2, 0.0], [0.0, 1.6]], [1.0, 2.0], 3),
            reply(msgs, 102, [0.5, 0.5], [[3.0, 0.0], [0.0, 0.0]], [1.0, 0.0], 1),  # |S_0| > M_0: rejected
        ])  # fmt: skip

    evaluate(1, asked=False)
    assert fleet.shared.marginal is None and fleet.shared.sums is None and len(fleet.rejections) == 0
    result = evaluate(2, asked=True)
    assert int(result["devices"]) == 2 and [r.device for r in fleet.rejections] == [2]
    # marginal (1 * [1, 0] + 3 * [1/3, 2/3]) / 4 = [0.5, 0.5]; centroids (0.8 / 2, 0), (0, 1.6 / 2)
    assert fleet.shared.marginal.tolist() == pytest.approx([0.5, 0.5]) and fleet.shared.marginal_examples == 4
    assert torch.allclose(fleet.shared.sums.centroids(), torch.tensor([[0.4, 0.0], [0.0, 0.8]]), atol=1e-6)
    sent = next(iter(strategy.configure_train(3, arrays, P.make_config({}), None)))
    assert set(P.from_record(P.array_record(sent.content, P.FLEET))) == {"marginal", "centroids"}


def test_guards_keep_a_result_unless_its_label_free_score_got_worse():
    assert keeps_result(-1.0, -1.2) and keeps_result(None, 3.0) and keeps_result(-1.0, None)
    assert keeps_result(-1.0, -0.96) and not keeps_result(-1.0, -0.94)  # 0.04 worse: noise; 0.06: discarded
    assert student_flag(-1.0, -0.85)["below_start_warning"] and not student_flag(-1.0, -0.95)["below_start_warning"]
