"""Checks that run before anything expensive: fleet-size settings, the checkpoint to resume from, and
a resumed run that does not send the teacher again to devices that hold it."""

import shutil

import pytest
import torch

from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from server.app import run_federated
from simulations import federated
from strategies import protocol as P
from tests.conftest import set_flower_task
from tests.inprocess_grid import NODE_BASE, InProcessGrid
from tests.server.test_server import TINY, _run

pytestmark = pytest.mark.usefixtures("flower_task")


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the simulation would start (the checks must come first)."""

    def started(**_kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr("flwr.simulation.run_simulation", started)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.clients_per_round=5", "federation.clients_per_round: 5 exceeds the fleet's 4 devices"),
        ("federation.ray.sim_nodes=9", "federation.ray.sim_nodes: 9 exceeds the fleet's 4 devices"),
        ("federation.ray.sim_nodes=2", "federation.ray.sim_nodes: 2 nodes cannot run the 4 devices one exchange asks"),
        ("federation.faults.hostile_devices=[7]", r"federation.faults.hostile_devices: \[7\] are not in a fleet of 4"),
    ],
)
def test_settings_beyond_the_fleet_stop_before_ray(tmp_path, no_ray, override, message):
    cfg = config_from_overrides([*TINY, f"run.out_dir={tmp_path}", override])
    with pytest.raises(ConfigError, match=message):
        federated.run_federated_simulation(cfg)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no checkpoint to resume from"),
        (b"", "not a checkpoint this version can resume"),
        (b"garbage" * 10, "not a checkpoint this version can resume"),
    ],
)
def test_a_bad_checkpoint_stops_before_ray(tmp_path, no_ray, content, message):
    if content is not None:
        (tmp_path / "checkpoint.pt").write_bytes(content)
    cfg = config_from_overrides([*TINY, f"run.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        federated.run_federated_simulation(cfg, resume=str(tmp_path))


def test_resume_checks_the_checkpoint_fits_the_config_and_keeps_the_teacher_holders(tmp_path, no_ray):
    paused = _run(tmp_path, "federation.stop_after_round=2")
    before = (paused / "checkpoint.pt").read_bytes()
    other = config_from_overrides([*TINY, f"run.out_dir={tmp_path}", "model.width=1.0"])
    with pytest.raises(ConfigError, match=r"does not match the run's config\.yaml"):
        federated.run_federated_simulation(other, resume=str(paused))
    assert (paused / "checkpoint.pt").read_bytes() == before  # nothing already written is lost
    holders = torch.load(paused / "checkpoint.pt", weights_only=True)["teacher_holders"]["devices"]
    assert holders  # 2 rounds of 3 of 4 devices: some hold the teacher
    grid = InProcessGrid(4)
    run_federated(grid, config_from_overrides([*TINY, f"run.out_dir={tmp_path}"]), str(paused))
    resent = [m.metadata.dst_node_id - NODE_BASE for m in grid.sent if P.TEACHER in m.content]
    assert not set(resent) & set(holders)  # a holder reads its cached copy; only newcomers get it


def test_a_phase_that_aggregates_nothing_is_an_error(tmp_path):
    """Every training reply lost (the devices still answer evaluation and BN queries): the run stops in
    its first training phase with an error naming it, instead of reporting the starting model."""

    def drop_training(msg, reply):
        return None if str(msg.metadata.message_type).startswith("train") else reply

    with pytest.raises(RuntimeError, match="mask phase: none of its 3 rounds had enough valid replies"):
        _run(tmp_path, "federation.round_timeout=0.2", grid=InProcessGrid(4, replies=drop_training))


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory):
    """A tiny FedADMP run paused after round 2 (the mask phase)."""
    set_flower_task()
    return _run(tmp_path_factory.mktemp("paused"), "federation.stop_after_round=2")


def _nan_student(state):
    name = next(k for k, v in state["student"].items() if v.is_floating_point())
    state["student"][name] = torch.full_like(state["student"][name], float("nan"))


def _wrong_shape(state):
    name = next(k for k, v in state["student"].items() if v.dim() == 4)
    state["student"][name] = state["student"][name][:1]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.update(phase="warmup"), "phase 'warmup' is not one of teacher, mask, kd, quant, done"),
        (lambda s: s.update(round="2"), "round '2' is not a round count"),
        (lambda s: s.update(admp={}), "ADMP state lacks m, s, z, u, rho or z_steps"),
        (_wrong_shape, r"student\.conv1\.weight is \(1, .*the run's model has"),
        (_nan_student, "holds NaN or infinite values"),
        (lambda s: s.update(phase="kd", keep={}), "the KD phase holds a dense student; a fedadmp run does not export"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_run_is_refused_whole(paused_run, tmp_path, no_ray, damage, message):
    """Each damage, re-digested so that the schema check is what refuses it, stops the resume before Ray
    with one error naming the entry; the run directory's files are left as they were."""
    from server.resume import state_digest

    run = tmp_path / "run"
    shutil.copytree(paused_run, run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state.pop("digest")
    damage(state)
    torch.save(state | {"digest": state_digest(state)}, run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    cfg = config_from_overrides([*TINY, f"run.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message):
        federated.run_federated_simulation(cfg, resume=str(run))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_flipped_bytes_a_missing_digest_and_broken_metrics_are_refused(paused_run, tmp_path, no_ray):
    cfg = config_from_overrides([*TINY, f"run.out_dir={tmp_path}"])
    run = tmp_path / "run"
    shutil.copytree(paused_run, run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in state["student"].items() if v.is_floating_point())
    state["student"][name].view(-1)[0] += 2990.0  # a weight damaged after the digest was taken
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="damaged: its contents do not match their digest"):
        federated.run_federated_simulation(cfg, resume=str(run))
    state.pop("digest")
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="no digest of its contents"):
        federated.run_federated_simulation(cfg, resume=str(run))
    shutil.copy(paused_run / "checkpoint.pt", run / "checkpoint.pt")
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"metrics\.json: not readable JSON"):
        federated.run_federated_simulation(cfg, resume=str(run))
    assert (run / "metrics.json").read_text() == "{not json"
