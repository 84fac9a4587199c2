"""ClientApp handlers called directly: failures become error replies, the teacher cache works."""

import dataclasses

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from admp.data.tasks import DataSpec
from admp.masks import group_sizes, ones_masks, zeros_masks
from admp.models import build_model
from admp.teacher import state_hash
from admp.trainer import AdmpHyper
from clients import app as client
from clients import device as client_device
from strategies import protocol as P


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _context(device: int) -> Context:
    return Context(run_id=1, node_id=50 + device, node_config={"partition-id": device},
                   state=RecordDict(), run_config={})


def _message(store, teacher_state, with_teacher: bool, device: int = 0, weights=None) -> Message:
    scenario = {"seed": 0, "data": dataclasses.asdict(DataSpec(num_devices=2, samples_per_device=20)),
                "model": {"arch": "lenet", "width": 0.25}, "arch": "lenet", "num_classes": 10}
    student = build_model("lenet", 10, 0.25)
    sizes = group_sizes(student, student.channel_groups())
    content = RecordDict({
        P.WEIGHTS: P.state_to_record(weights if weights is not None else teacher_state),
        P.MASKS: P.masks_to_record(m=ones_masks(sizes), s=ones_masks(sizes), z=ones_masks(sizes), u=zeros_masks(sizes)),
        P.CONFIG: P.make_config({"scenario": scenario, "hp": dataclasses.asdict(AdmpHyper(batch_size=8)),
                                 "teacher_hash": state_hash(teacher_state), "teacher_store": str(store),
                                 "round": 1, "rho": 0.0, "dual": "global", "z_version": 0, "local_epochs": 1}),
    })
    if with_teacher:
        content[P.TEACHER] = P.state_to_record(teacher_state)
    return Message(content, dst_node_id=50 + device, message_type=P.TRAIN_ADMP)


@pytest.fixture
def teacher_state():
    torch.manual_seed(0)
    return build_model("lenet", 10, 0.25).state_dict()


def test_train_reply_has_the_contracted_records(tmp_path, teacher_state):
    ctx = _context(0)
    reply = client.train_admp(_message(tmp_path, teacher_state, with_teacher=True), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.array_records) == {P.WEIGHTS, P.MASKS}
    metrics = reply.content[P.METRICS]
    assert int(metrics[P.NUM_EXAMPLES]) == 14  # 20 drawn, 30 % held out for the device's test split
    assert int(metrics["teacher-attached"]) == 1
    assert ctx.state["device"]["teacher_hash"] == state_hash(teacher_state)  # only the hash in state
    assert len(list((tmp_path).glob("teacher-*.pt"))) == 1


def test_cached_teacher_is_used_without_resending(tmp_path, teacher_state):
    client.train_admp(_message(tmp_path, teacher_state, with_teacher=True), _context(0))
    client_device._TEACHERS.clear()  # a fresh worker process: only the disk store is left
    client_device._TEACHER_MODELS.clear()
    reply = client.train_admp(_message(tmp_path, teacher_state, with_teacher=False, device=1), _context(1))
    assert not reply.has_error()
    assert int(reply.content[P.METRICS]["teacher-attached"]) == 0


def test_missing_teacher_and_bad_input_become_error_replies(tmp_path, teacher_state):
    client_device._TEACHERS.clear()
    client_device._TEACHER_MODELS.clear()
    missing = client.train_admp(_message(tmp_path / "empty", teacher_state, with_teacher=False), _context(0))
    assert missing.has_error() and "teacher-missing" in missing.error.reason
    wrong = {k: v[:1] if v.dim() else v for k, v in teacher_state.items()}
    broken = client.train_admp(_message(tmp_path, teacher_state, with_teacher=True, weights=wrong), _context(0))
    assert broken.has_error() and "size mismatch" in broken.error.reason
    outside = client.train_admp(_message(tmp_path, teacher_state, with_teacher=True, device=7), _context(7))
    assert outside.has_error() and "device 7 out of range" in outside.error.reason
