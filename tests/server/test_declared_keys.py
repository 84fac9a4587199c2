"""What leaves a device is exactly what the protocol declares (``strategies.protocol.DEVICE_SENDS``): a tiny
federation through the real ClientApp, every reply's records and keys checked against the list."""

import tempfile

import pytest

from admp_config.schema import config_from_overrides
from server.app import run_federated
from strategies import protocol as P
from tests.conftest import set_flower_task
from tests.inprocess_grid import InProcessGrid
from tests.server.test_server import TINY


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    from rich.console import Console

    set_flower_task()
    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))


def _sent_keys(*extra: str) -> set[tuple[str, str, str]]:
    sent: set[tuple[str, str, str]] = set()

    def spy(msg, reply):
        if not reply.has_error():
            for record_name, record in reply.content.items():
                sent.update((str(msg.metadata.message_type), record_name, key) for key in record)
        return reply

    with tempfile.TemporaryDirectory() as out:
        run_federated(InProcessGrid(4, replies=spy), config_from_overrides([*TINY, f"run.out_dir={out}", *extra]))
    return sent


def test_every_record_a_device_sends_is_declared():
    """Both duals (masks and quantization), the teacher's self-training, the fleet-BN teacher and the
    quantization sensitivity query: every message type and record."""
    quantized = ["quantize.bits=[8, 4]", "quantize.rounds_per_stage=1", "quantize.budget_reduction=10"]
    per_client = ["federation.dual=per_client", "quantize.dual=per_client", *quantized]
    sent = _sent_keys() | _sent_keys(*per_client, "federation.teacher_rounds=1", "data.shifts=never")
    undeclared = sorted(item for item in sent if not P.declared(*item))
    assert not undeclared, undeclared
    kinds = {(message, record) for message, record, _ in sent}
    assert {("train", "masks"), ("train.kd", "stats"), ("query.bnstats", "arrays"), ("evaluate", "stats")} <= kinds
    assert {("train.kd", "qdual"), ("query.quantsens", "arrays")} <= kinds


def test_the_declaration_is_tight():
    """A label, a raw sample or a mask in a KD reply would not pass: nothing is declared by default."""
    assert not P.declared("evaluate", "metrics", "labels")
    assert not P.declared("train", "stats", "samples")
    assert not P.declared("train.kd", "masks", "m.conv1")  # masks only in mask-phase replies
    assert P.declared("train", "masks", "u.conv1") and P.declared("query.bnstats", "arrays", "sq.bn2")
    assert P.declared("train.kd", "qdual", "fc1.weight") and not P.declared("train", "qdual", "fc1.weight")
