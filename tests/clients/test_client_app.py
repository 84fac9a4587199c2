"""The ClientApp through Flower's router and our mod: replies, error codes, teacher cache, duals, BN moments."""

import json
import os

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from admp.masks import group_sizes, ones_masks, zeros_masks
from admp.models import build_model
from admp.teacher import state_hash
from admp.trainer import teacher_targets
from admp_config.sections import AdmpHyper, DataSpec
from admp_export.bundle import adapt_bn
from clients import app as client
from clients import device as client_device
from strategies import protocol as P

pytestmark = pytest.mark.usefixtures("flower_task")


@pytest.fixture(autouse=True)
def device_cache(monkeypatch):
    monkeypatch.setenv("FEDADMP_CACHE_DIR", "")  # restored after each test; _message points it at its store


def _context(device: int) -> Context:
    return Context(
        run_id=1, node_id=50 + device, node_config={"partition-id": device}, state=RecordDict(), run_config={}
    )


def _message(
    store,
    teacher_state,
    with_teacher: bool,
    device: int = 0,
    weights=None,
    dual: str = "global",
    z_steps: int = 0,
    rho: float = 0.0,
    z=None,
) -> Message:
    os.environ["FEDADMP_CACHE_DIR"] = str(store)  # the devices' teacher store (no node cache-dir here)
    data = DataSpec(num_devices=2, samples_per_device=20).model_dump()
    scenario = P.device_scenario(0, data, {"arch": "lenet", "width": 0.25}, "lenet", 10, (1, 28, 28))
    student = build_model("lenet", 10, 0.25)
    sizes = group_sizes(student, student.channel_groups())
    content = RecordDict(
        {
            P.ARRAYS: P.to_record(weights if weights is not None else teacher_state),
            P.MASKS: P.masks_to_record(
                m=ones_masks(sizes), s=ones_masks(sizes), z=z or ones_masks(sizes), u=zeros_masks(sizes)
            ),
            P.CONFIG: P.make_config(
                {
                    "scenario": scenario,
                    "hp": AdmpHyper(batch_size=8).model_dump(),
                    "teacher_hash": state_hash(teacher_state),
                    P.SERVER_ROUND: 1,
                    "rho": rho,
                    "dual": dual,
                    "z-steps": z_steps,
                    "local_epochs": 1,
                }
            ),
        }
    )
    if with_teacher:
        content[P.TEACHER] = P.to_record(teacher_state)
    return Message(content, dst_node_id=50 + device, message_type=P.TRAIN_ADMP)


@pytest.fixture
def teacher_state():
    torch.manual_seed(0)
    return build_model("lenet", 10, 0.25).state_dict()


def test_train_reply_has_the_contracted_records(tmp_path, teacher_state):
    ctx = _context(0)
    reply = client.app(_message(tmp_path, teacher_state, with_teacher=True), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.array_records) == {P.ARRAYS, P.MASKS, P.STATS}  # stats: IM is on by default
    metrics = reply.content[P.METRICS]
    assert int(metrics[P.NUM_EXAMPLES]) == 14  # 20 drawn, 30 % held out for the device's test split
    assert int(metrics["teacher-attached"]) == 1
    assert float(metrics["seconds"]) > 0  # the mod timed the handler
    assert int(metrics["epochs"]) == 1  # no min_local_steps in this config: local_epochs stands
    assert ctx.state["device"]["teacher_hash"] == state_hash(teacher_state)  # only the hash in state
    assert len(list((tmp_path).glob("teacher-*.pt"))) == 1


def test_cached_teacher_is_used_without_resending(tmp_path, teacher_state):
    client.app(_message(tmp_path, teacher_state, with_teacher=True), _context(0))
    client_device._TEACHERS.clear()  # a fresh worker process: only the disk store is left
    client_device._TEACHER_MODELS.clear()
    reply = client.app(_message(tmp_path, teacher_state, with_teacher=False, device=1), _context(1))
    assert not reply.has_error()
    assert int(reply.content[P.METRICS]["teacher-attached"]) == 0


def test_missing_teacher_and_bad_input_become_error_replies(tmp_path, teacher_state):
    client_device._TEACHERS.clear()
    client_device._TEACHER_MODELS.clear()
    missing = client.app(_message(tmp_path / "empty", teacher_state, with_teacher=False), _context(0))
    assert missing.has_error() and missing.error.code == P.TEACHER_MISSING  # the server resends on this code
    wrong = {k: v[:1] if v.dim() else v for k, v in teacher_state.items()}
    broken = client.app(_message(tmp_path, teacher_state, with_teacher=True, weights=wrong), _context(0))
    assert broken.has_error() and "size mismatch" in broken.error.reason and broken.error.code == P.CLIENT_ERROR
    outside = client.app(_message(tmp_path, teacher_state, with_teacher=True, device=7), _context(7))
    assert outside.has_error() and "device 7 out of range" in outside.error.reason


def test_per_client_dual_catches_up_with_a_new_z(tmp_path, teacher_state):
    """U_k <- (U_k + m_k - Z) * last_rho / rho when the server took a Z-step since the last round."""
    ctx = _context(0)
    first = client.app(_message(tmp_path, teacher_state, True, dual="per_client", z_steps=0, rho=0.0), ctx)
    assert not first.has_error()
    m_k = P.record_to_masks(first.content[P.MASKS], "m")
    assert all(float(v.abs().sum()) == 0 for v in P.record_to_masks(first.content[P.MASKS], "u").values())
    z = {g: torch.zeros_like(v) for g, v in m_k.items()}  # a Z of zeros, to check the arithmetic by hand
    second = client.app(_message(tmp_path, teacher_state, False, dual="per_client", z_steps=1, rho=2.0, z=z), ctx)
    u = P.record_to_masks(second.content[P.MASKS], "u")
    for g in u:  # U = 0 + m_k - 0 = m_k; a last rho of 0 means no rescale
        assert torch.allclose(u[g], m_k[g])
    m_2 = P.record_to_masks(second.content[P.MASKS], "m")
    third = client.app(_message(tmp_path, teacher_state, False, dual="per_client", z_steps=2, rho=4.0, z=z), ctx)
    u_3 = P.record_to_masks(third.content[P.MASKS], "u")
    for g in u_3:  # (U + m_2 - Z) * last_rho / rho = (m_k + m_2 - 0) * 2 / 4
        assert torch.allclose(u_3[g], (m_k[g] + m_2[g]) * 0.5, atol=1e-6)
    again = client.app(_message(tmp_path, teacher_state, False, dual="per_client", z_steps=2, rho=4.0, z=z), ctx)
    for g, v in P.record_to_masks(again.content[P.MASKS], "u").items():  # same Z-step count: no new U-step
        assert torch.equal(v, u_3[g])


def test_bn_moments_weigh_every_sample_equally():
    """Batches of 3 and 1 samples: the mean is over the 4 samples, not over the 2 batch means."""
    x = torch.tensor([[0.0], [0.0], [0.0], [4.0]])  # batch_size 3: batches (0, 0, 0) and (4)
    moments = client_device.bn_moments(torch.nn.Sequential(torch.nn.BatchNorm1d(1)), x, batch_size=3)
    assert float(moments["mean.0"]) == pytest.approx(1.0)  # 4 / 4; batch means would give (0 + 4) / 2 = 2
    assert float(moments["sq.0"]) == pytest.approx(4.0)  # 16 / 4


def test_bnstats_and_identity_handlers(tmp_path, teacher_state):
    msg = _message(tmp_path, teacher_state, False)
    query = Message(
        RecordDict({P.ARRAYS: msg.content[P.ARRAYS], P.CONFIG: msg.content[P.CONFIG]}),
        dst_node_id=50,
        message_type=P.QUERY_BN,
    )
    reply = client.app(query, _context(0))
    stats = P.from_record(reply.content[P.ARRAYS])
    assert int(reply.content[P.METRICS][P.NUM_EXAMPLES]) == 14
    assert {k.split(".", 1)[0] for k in stats} == {"mean", "sq"}
    assert set(stats) == {"mean.bn1", "sq.bn1", "mean.bn2", "sq.bn2"}  # every BatchNorm of LeNet, by name
    student = build_model("lenet", 10, 0.25)
    student.load_state_dict(teacher_state)
    x = client_device.load_device(P.config_json(msg.content[P.CONFIG], "scenario"), 0).train.x
    with torch.no_grad():
        first = student.conv1(student.norm(x))  # the first BatchNorm's input, (14, 8, 24, 24)
    assert torch.allclose(stats["mean.bn1"], first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(stats["sq.bn1"], (first**2).mean(dim=(0, 2, 3)), atol=1e-5)
    ident = client.app(Message(RecordDict({}), dst_node_id=57, message_type=P.QUERY_ID), _context(7))
    assert int(ident.content[P.METRICS]["device"]) == 7


def test_small_devices_run_more_epochs_for_min_local_steps(tmp_path, teacher_state):
    """14 samples in batches of 8: 2 SGD steps per epoch, so min_local_steps = 5 needs ceil(5 / 2) = 3 epochs."""
    msg = _message(tmp_path, teacher_state, with_teacher=True)
    msg.content[P.CONFIG]["min_local_steps"] = 5
    reply = client.app(msg, _context(0))
    assert int(reply.content[P.METRICS]["epochs"]) == 3


def test_devices_report_their_mean_prediction_and_use_the_fleets(tmp_path, teacher_state):
    msg = _message(tmp_path, teacher_state, with_teacher=True)
    hp = AdmpHyper(batch_size=8, lambda_im=1.0).model_dump()
    msg.content[P.CONFIG]["hp"] = json.dumps(hp)
    first = client.app(msg, _context(0))
    mean = P.from_record(first.content[P.STATS])["mean-prediction"]
    assert mean.shape == (10,) and float(mean.sum()) == pytest.approx(1.0, abs=1e-5) and float(mean.min()) >= 0
    with_prior = _message(tmp_path, teacher_state, with_teacher=False)
    with_prior.content[P.CONFIG]["hp"] = json.dumps(hp)
    with_prior.content[P.CONFIG]["fleet-examples"] = 28  # this device's 14 samples are half the fleet's
    with_prior.content[P.FLEET] = P.to_record({"marginal": torch.full((10,), 0.1)})
    second = client.app(with_prior, _context(0))
    assert not second.has_error() and P.STATS in second.content
    plain = _message(tmp_path, teacher_state, with_teacher=False)
    plain.content[P.CONFIG]["hp"] = json.dumps(AdmpHyper(batch_size=8, lambda_im=0.0, lambda_pl=0.0).model_dump())
    assert P.STATS not in client.app(plain, _context(0)).content  # no IM, no pseudo labels: nothing more leaves


def test_devices_report_feature_sums_and_label_by_the_fleets_centroids(tmp_path, teacher_state):
    """With centroid pseudo labels a reply carries per-class feature sums (K, 128 + 1) whose masses add
    up to the device's 14 samples; fleet centroids of the wrong feature length fail the reply."""
    msg = _message(tmp_path, teacher_state, with_teacher=True)
    hp = json.dumps(AdmpHyper(batch_size=8, lambda_im=0.0, pseudo_labels="centroid", centroids="fleet").model_dump())
    msg.content[P.CONFIG]["hp"] = hp
    stats = P.from_record(client.app(msg, _context(0)).content[P.STATS])
    assert set(stats) == {"feature-sums", "feature-mass"} and stats["feature-sums"].shape == (10, 129)
    assert float(stats["feature-mass"].sum()) == pytest.approx(14.0, abs=1e-4)
    assert bool((stats["feature-sums"].norm(dim=1) <= stats["feature-mass"] + 1e-5).all())
    for width, ok in ((129, True), (65, False)):
        nxt = _message(tmp_path, teacher_state, with_teacher=False)
        nxt.content[P.CONFIG]["hp"] = hp
        nxt.content[P.FLEET] = P.to_record({"centroids": torch.eye(10, width)})
        reply = client.app(nxt, _context(0))
        assert reply.has_error() != ok and (ok or "65 feature dims, the model 129" in reply.error.reason)


def test_with_device_centroids_no_feature_sums_leave_the_device(tmp_path, teacher_state):
    msg = _message(tmp_path, teacher_state, with_teacher=True)
    hp = AdmpHyper(batch_size=8, lambda_im=0.0, pseudo_labels="centroid", centroids="device").model_dump()
    msg.content[P.CONFIG]["hp"] = json.dumps(hp)
    reply = client.app(msg, _context(0))
    assert not reply.has_error() and P.STATS not in reply.content


def test_an_evaluation_asked_for_fleet_stats_reports_the_feature_sums_too(tmp_path, teacher_state):
    """A phase's start: the evaluate reply adds the model's feature sums (K, 129), masses adding up to
    the device's 14 unlabeled samples, to its mean prediction; unasked, only the mean prediction."""
    hp = json.dumps(AdmpHyper(batch_size=8, lambda_im=0.0, pseudo_labels="centroid", centroids="fleet").model_dump())
    for asked in (True, False):
        msg = _message(tmp_path, teacher_state, with_teacher=False)
        msg.metadata.message_type = P.EVALUATE
        msg.content[P.CONFIG]["hp"] = hp
        msg.content[P.CONFIG]["fleet-stats"] = asked
        reply = client.app(msg, _context(0))
        assert not reply.has_error()
        stats = P.from_record(reply.content[P.STATS])
        assert set(stats) == ({"mean-prediction", "feature-sums", "feature-mass"} if asked else {"mean-prediction"})
        if asked:
            assert stats["feature-sums"].shape == (10, 129)
            assert float(stats["feature-mass"].sum()) == pytest.approx(14.0, abs=1e-4)


def test_an_evaluation_asked_for_the_reference_reports_how_often_the_model_disagrees_with_the_teacher(
    tmp_path, teacher_state
):
    """The export rule's reference: the teacher itself, evaluated as the model with the same BN step,
    disagrees with it on 0 % of the device's samples; another model on the share counted here by hand;
    unasked, no figure leaves the device."""
    hp = json.dumps(AdmpHyper(batch_size=8, teacher_bn="local").model_dump())
    torch.manual_seed(1)
    other = build_model("lenet", 10, 0.25).state_dict()

    def evaluate(weights, asked: bool) -> Message:
        msg = _message(tmp_path, teacher_state, with_teacher=True, weights=weights)
        msg.metadata.message_type = P.EVALUATE
        msg.content[P.CONFIG]["hp"] = hp
        msg.content[P.CONFIG]["local-bn"] = True
        msg.content[P.CONFIG]["reference"] = asked
        return client.app(msg, _context(0))

    assert P.metric(evaluate(teacher_state, True).content, "reference-disagreement") == 0.0
    scenario = P.config_json(_message(tmp_path, teacher_state, False).content[P.CONFIG], "scenario")
    x = client_device.load_device(scenario, 0).train.x
    model, teacher = build_model("lenet", 10, 0.25), build_model("lenet", 10, 0.25)
    model.load_state_dict(other)
    teacher.load_state_dict(teacher_state)
    by_hand = (adapt_bn(model, x)(x).argmax(1) != teacher_targets(teacher, x, "local").argmax(1)).float().mean()
    assert by_hand > 0 and P.metric(evaluate(other, True).content, "reference-disagreement") == pytest.approx(
        100 * float(by_hand)
    )
    assert "reference-disagreement" not in P.metric_record(evaluate(other, False).content)


def test_a_kd_message_with_quantization_targets_adds_the_penalty_and_checks_them(tmp_path, teacher_state):
    """A train.kd message carrying ``quant`` targets trains with (rho / 2) ||W - T||^2; a target whose
    shape is not the student's weight is refused before training (an error reply naming it)."""
    from admp.quantize import project, quantized_weights

    def kd_message(targets, rho):
        msg = _message(tmp_path, teacher_state, with_teacher=True)
        content = RecordDict({k: v for k, v in msg.content.items() if k != P.MASKS})
        config = dict(content[P.CONFIG]) | {"lr": 0.05, "quant-rho": rho}
        content[P.CONFIG] = ConfigRecord(config)
        content[P.QUANT] = P.to_record(targets)
        return Message(content, dst_node_id=50, message_type=P.TRAIN_KD)

    names = quantized_weights(build_model("lenet", 10, 0.25))
    targets = {n: project(teacher_state[n], 2) for n in names}

    def distance(rho):
        reply = client.app(kd_message(targets, rho), _context(0))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        trained = P.from_record(reply.content[P.ARRAYS])
        return sum(float(((trained[n] - targets[n]) ** 2).sum()) for n in names)

    assert distance(10.0) < 0.5 * distance(0.0)  # the penalty pulls the weights onto the targets
    wrong = dict(targets) | {names[0]: targets[names[0]][:1]}
    reply = client.app(kd_message(wrong, 1.0), _context(0))
    assert reply.has_error() and f"quant.{names[0]}" in reply.error.reason


@pytest.mark.parametrize("where", ["node state", "simulation file"])
def test_a_device_keeps_its_own_quantization_dual(tmp_path, teacher_state, monkeypatch, where):
    """quantize.dual per_client: the first round of a stage trains towards Z with U_k = 0 and sends U_k; after
    a new Z (steps 0 -> 1, rho 1 -> 2) U_k = (0 + W_1 - Z) * 1 / 2, W_1 the weights it sent; a new stage
    starts again from U_k = 0. Kept in the node state on a real device, in a file per virtual device in a
    simulation."""
    from admp.quantize import project, quantized_weights

    if where == "simulation file":
        monkeypatch.setenv("FEDADMP_DEVICE_STATE_DIR", str(tmp_path / "state"))
        (tmp_path / "state").mkdir()
    names = quantized_weights(build_model("lenet", 10, 0.25))
    z = {n: project(teacher_state[n], 2) for n in names}
    ctx = _context(0)

    def round_(stage, steps, rho):
        msg = _message(tmp_path, teacher_state, with_teacher=True)
        content = RecordDict({k: v for k, v in msg.content.items() if k != P.MASKS})
        quant = {"quant-rho": rho, "quant-dual": "per_client", "quant-stage": stage, "quant-steps": steps}
        content[P.CONFIG] = ConfigRecord(dict(content[P.CONFIG]) | {"lr": 0.05} | quant)
        content[P.QUANT] = P.to_record(z)
        reply = client.app(Message(content, dst_node_id=50, message_type=P.TRAIN_KD), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        return P.from_record(reply.content[P.ARRAYS]), P.from_record(reply.content[P.QUANT_DUAL])

    w_1, u_1 = round_(0, 0, 1.0)
    assert sorted(u_1) == sorted(names) and all(float(u.abs().sum()) == 0 for u in u_1.values())
    _, u_2 = round_(0, 1, 2.0)
    for n in names:
        assert torch.allclose(u_2[n], (w_1[n] - z[n]) * 0.5, atol=1e-6) and float(u_2[n].abs().sum()) > 0
    assert (tmp_path / "state" / "qdual-0.pt").is_file() == (where == "simulation file")
    _, u_3 = round_(1, 0, 1.0)
    assert all(float(u.abs().sum()) == 0 for u in u_3.values())
