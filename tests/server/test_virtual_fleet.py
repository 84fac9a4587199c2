"""A simulated fleet's virtual devices on a few nodes (``strategies.roster``): routing, the config rules,
each device's own state, and a run on 3 slots for 12 devices that reports exactly what 12 nodes do."""

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from clients.device import device_id, load_dual, save_dual
from server.app import run_federated
from strategies import protocol as P
from strategies.roster import FixedRoster, SlotRoster
from tests.inprocess_grid import NODE_BASE, InProcessGrid
from tests.server.test_server import TINY

pytestmark = pytest.mark.usefixtures("flower_task", "quiet_console")


def test_slots_are_distinct_within_an_exchange_and_rotate_across_them():
    roster = SlotRoster(100_000, [7, 8, 9])
    assert len(roster) == 100_000 and roster.node_count() == 3 and roster.ids()[-1] == 99_999
    assert roster.route([5, 99_999]) == [7, 8]
    assert roster.route([1, 2, 3]) == [9, 7, 8]  # the next exchange starts where the last stopped
    with pytest.raises(ValueError, match="asks 4 devices but the simulation has 3 nodes"):
        roster.route([1, 2, 3, 4])
    with pytest.raises(KeyError, match="100000"):
        roster.route([100_000])
    assert FixedRoster({3: 30, 1: 10}).ids() == [1, 3] and FixedRoster({3: 30, 1: 10}).route([3]) == [30]


def test_simulation_nodes_follow_the_largest_exchange_not_the_fleet():
    fed = config_from_overrides(["federation.clients_per_round=10", "federation.eval_clients=25"]).federation
    assert fed.simulation_nodes(100_000) == 25 and fed.simulation_nodes(12) == 12
    every = config_from_overrides(["federation.clients_per_round=10", "federation.eval_clients=0"]).federation
    assert every.simulation_nodes(40) == 40  # evaluation on every device: a node each
    assert config_from_overrides([]).federation.eval_clients == 100  # sampled evaluation by default
    few = config_from_overrides(["federation.clients_per_round=10", "federation.ray.sim_nodes=5"]).federation
    with pytest.raises(ConfigError, match="sim_nodes: 5 nodes cannot run the 100 devices"):
        few.check_fleet(1000)


def test_a_slot_runs_the_device_a_message_names_but_a_real_device_keeps_its_own():
    named = P.make_config({"device": 41})
    slot = Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    real = Context(run_id=1, node_id=6, node_config={"device-id": 3}, state=RecordDict(), run_config={})
    assert device_id(slot, named) == 41 and device_id(slot) == 0
    assert device_id(real, named) == 3


def test_each_virtual_device_keeps_its_own_dual_whatever_slot_runs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDADMP_DEVICE_STATE_DIR", str(tmp_path))
    slots = [Context(1, n, {"partition-id": n}, RecordDict(), {}) for n in (0, 1)]
    save_dual(slots[0], 9, {"g": torch.tensor([0.5, -0.5])}, {"g": torch.tensor([1.0, 0.0])}, 4, 2.0)
    u, m, steps, rho = load_dual(slots[1], 9, {"g": 2})  # device 9 again, on the other slot
    assert torch.equal(u["g"], torch.tensor([0.5, -0.5])) and m is not None
    assert torch.equal(m["g"], torch.tensor([1.0, 0.0]))
    assert (steps, rho) == (4, 2.0)
    fresh_u, fresh_m, fresh_steps, _ = load_dual(slots[1], 8, {"g": 2})  # a device that never trained
    assert torch.equal(fresh_u["g"], torch.zeros(2)) and fresh_m is None and fresh_steps == -1
    assert not slots[0].state and not slots[1].state  # nothing of a device left in a slot's Context


def _metrics(out: Path) -> list[dict]:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]


def test_twelve_virtual_devices_on_three_slots_report_what_twelve_nodes_do(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDADMP_DEVICE_STATE_DIR", str(tmp_path / "state"))  # the slots' device files
    (tmp_path / "state").mkdir()
    fleet = ["data.num_devices=12", "federation.clients_per_round=3", "federation.eval_clients=3"]
    extra = [*fleet, "federation.dual=per_client", "federation.mask_rounds=3"]
    slots = InProcessGrid(3)
    run_federated(slots, config_from_overrides([*TINY, *extra, f"run.out_dir={tmp_path / 'v'}"]), None, virtual=True)
    monkeypatch.delenv("FEDADMP_DEVICE_STATE_DIR")  # a node per device keeps its dual in its Context
    run_federated(InProcessGrid(12), config_from_overrides([*TINY, *extra, f"run.out_dir={tmp_path / 'n'}"]), None)
    assert _metrics(tmp_path / "v") == _metrics(tmp_path / "n")
    named = {int(m.content[P.CONFIG]["device"]) for m in slots.sent}
    assert max(named) >= 3 and {m.metadata.dst_node_id for m in slots.sent} == {NODE_BASE, NODE_BASE + 1, NODE_BASE + 2}
    assert not any(m.metadata.message_type == P.QUERY_ID for m in slots.sent)  # nothing asked of every device
    trained = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert trained and all(name.startswith("dual-") for name in trained)
    (summary,) = [json.loads((p / "summary.json").read_text()) for p in (tmp_path / "v").iterdir() if p.is_dir()]
    assert (summary["devices"], summary["nodes"], summary["student"]["evaluated_devices"]) == (12, 3, 3)
