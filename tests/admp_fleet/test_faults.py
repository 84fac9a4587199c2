"""Injected faults (``federation.faults``): seeded draws, the client mod, and a faulty fleet end to end."""

import json
import math

import pytest
from flwr.app import Context, Message, RecordDict

from admp_config.base import ConfigError
from admp_config.fleet import FaultSpec
from admp_config.schema import config_from_overrides
from admp_fleet.faults import corruptions_for, draw_fault
from clients import app as client
from strategies import protocol as P
from tests.server.test_server import _rows, _run, _summary

pytestmark = pytest.mark.usefixtures("flower_task")


def _rate(spec: FaultSpec, fault: str, deadline: float = 600.0, n: int = 4000) -> float:
    return sum(draw_fault(spec, 3, r, d, deadline)[0] == fault for r in range(n // 20) for d in range(20)) / n


def test_fault_draws_are_seeded_and_have_their_rates():
    spec = FaultSpec(dropout=0.3)
    assert [draw_fault(spec, 3, r, 1, 600.0) for r in range(20)] == [
        draw_fault(spec, 3, r, 1, 600.0) for r in range(20)
    ]
    assert _rate(spec, "dropout") == pytest.approx(0.3, abs=0.03)
    # stragglers: P(late) = P(slow) x P(Exp(mean 30) > 30) = 0.5 x e^-1 = 0.184
    slow = FaultSpec(straggler=0.5, straggler_delay_s=30.0)
    assert _rate(slow, "late", deadline=30.0) == pytest.approx(0.5 * math.exp(-1), abs=0.03)
    assert _rate(slow, "late", deadline=1e9) == 0.0
    assert _rate(FaultSpec(crash=0.2), "crash") == pytest.approx(0.2, abs=0.03)
    # a hostile device corrupts every reply with the whole hostile list; garbage draws one corruption
    hostile = FaultSpec(hostile_devices=[4])
    assert corruptions_for(hostile, 3, 1, 4, "") == ["scale", "huge_n", "zero_masks", "flip_duals"]
    assert corruptions_for(hostile, 3, 1, 5, "") == [] and len(corruptions_for(hostile, 3, 1, 5, "garbage")) == 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dropout", 1.0, "federation.faults.dropout"),
        ("hostile", "[teleport]", "federation.faults.hostile"),
        ("straggler_delay_s", ".nan", "federation.faults.straggler_delay_s"),
    ],
)
def test_bad_fault_settings_name_their_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_overrides([f"federation.faults.{key}={value}"])


def _train_message(faults: dict, device: int = 0, rnd: int = 1) -> Message:
    config = {"scenario": {"seed": 0}, P.SERVER_ROUND: rnd, "device": device, "faults": faults, "round-timeout": 60.0}
    return Message(RecordDict({P.CONFIG: P.make_config(config)}), dst_node_id=7, message_type=P.TRAIN_KD)


def _context(node: dict | None = None) -> Context:
    return Context(run_id=1, node_id=7, node_config=node or {"partition-id": 0}, state=RecordDict(), run_config={})


@pytest.mark.parametrize(
    ("faults", "code", "reason"),
    [
        ({"dropout": 0.999}, P.DEVICE_DROPPED, "injected dropout"),
        ({"straggler": 0.999, "straggler_delay_s": 1e6}, P.DEVICE_LATE, "injected straggler"),
        ({"crash": 0.999}, P.CLIENT_ERROR, "RuntimeError: injected crash"),
    ],
)
def test_the_client_mod_acts_on_the_drawn_fault(faults, code, reason):
    assert draw_fault(FaultSpec(**faults), 0, 1, 0, 60.0)[0] in {"dropout", "late", "crash"}  # this draw is a fault
    reply = client.app(_train_message(json.loads(json.dumps(faults))), _context())
    assert reply.has_error() and reply.error.code == code and reason in str(reply.error.reason)


def test_a_faulty_fleet_still_trains_and_reports_every_rejection(tmp_path):
    """Device 1 is hostile (boosted update, 1e12 examples, zero masks), about a third of the rest drop
    out; the run ends, the coordinate-wise median aggregates what is left, and every rejected reply
    is in the metrics and the summary with its device and reason."""
    run = _run(
        tmp_path,
        "federation.faults.dropout=0.3",
        "federation.faults.hostile_devices=[1]",
        "federation.robust.aggregation=median",
        "federation.clients_per_round=4",
    )
    summary = _summary(run)
    reasons = [(r["device"], r["reason"]) for r in summary["rejections"]]
    assert summary["rejected_replies"] == len(reasons) > 0 and summary["aggregation"] == "median"
    hostile = [r["reason"] for r in summary["rejections"] if r["device"] == 1]
    # mask rounds: the zero masks (once Z exists) or the 1e12 examples; the fine-tune round: the 1e12 examples
    assert hostile and all("every channel closed" in why or "num-examples: 1000000000000" in why for why in hostile)
    assert any("injected dropout" in why for _, why in reasons)
    assert sum(int(row.get("rejected", 0)) for row in _rows(run)) == len(reasons)
    assert summary["student"]["target_acc"] is not None


def test_a_real_device_never_injects_faults():
    """A node with a device-id (a real SuperNode) ignores a faults config: the handler runs (and fails
    here on the message's missing records, not on an injected dropout)."""
    reply = client.app(_train_message({"dropout": 0.999}), _context({"device-id": 0}))
    assert reply.has_error() and reply.error.code == P.CLIENT_ERROR and "injected" not in str(reply.error.reason)
