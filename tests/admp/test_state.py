"""AdmpState: the ADMM steps by hand, checkpoint round trip, and federated rounds = the centralized loop."""

import copy

import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from admp.centroids import feature_dim, student_pseudo_labels
from admp.masks import group_sizes
from admp.models import build_model
from admp.state import AdmmSettings, AdmpState
from admp.teacher import state_hash
from admp.trainer import admp_local_train, teacher_targets
from admp_config.sections import AdmpHyper, DataSpec
from admp_config.seeding import torch_generator
from clients import app as client
from clients.device import load_device
from strategies import protocol as P
from strategies.fedadmp import FedADMP
from strategies.fleet import Delivery, Fleet, RoundPolicy
from strategies.selftraining import SharedStats
from tests.conftest import set_flower_task


def _state(p: float = 0.5, rho0: float = 0.1, ramp: int = 0) -> AdmpState:
    return AdmpState.initial(AdmmSettings(p, rho0, 2.0, 1.0, ramp), {"g": 4})


def test_global_dual_step_by_hand():
    state = _state()
    state.m = {"g": torch.tensor([0.9, 0.2, 0.6, 0.1])}
    state.u = {"g": torch.tensor([0.0, 0.5, 0.0, 0.0])}  # m + U = [0.9, 0.7, 0.6, 0.1]
    state.admm_step()
    assert state.z["g"].tolist() == [1.0, 1.0, 0.0, 0.0]  # top-2
    # U + m - Z = [-0.1, -0.3, 0.6, 0.1]; the first step sets rho = rho0 (no rescale from rho = 0)
    assert torch.allclose(state.u["g"], torch.tensor([-0.1, -0.3, 0.6, 0.1]))
    assert state.rho == pytest.approx(0.1) and state.z_steps == 1
    state.admm_step()  # m = [0.9, 0.2, 0.6, 0.1], U = [-0.1, -0.3, 0.6, 0.1]: m + U = [0.8, -0.1, 1.2, 0.2]
    assert state.z["g"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # U + m - Z = [-0.2, -0.1, 0.2, 0.2], then rho 0.1 -> 0.2 halves the scaled dual: [-0.1, -0.05, 0.1, 0.1]
    assert torch.allclose(state.u["g"], torch.tensor([-0.1, -0.05, 0.1, 0.1]))
    assert state.rho == pytest.approx(0.2)


def test_consensus_step_keeps_the_server_dual_at_zero():
    state = _state()
    state.admm_step(consensus={"g": torch.tensor([0.1, 0.8, 0.3, 0.9])})
    assert state.z["g"].tolist() == [0.0, 1.0, 0.0, 1.0] and state.u["g"].tolist() == [0.0] * 4


def test_client_dual_catch_up_by_hand():
    state = _state()
    state.z, state.rho = {"g": torch.tensor([1.0, 0.0, 1.0, 0.0])}, 0.2
    state.u = {"g": torch.tensor([0.2, 0.2, 0.0, 0.0])}
    state.advance_client_dual({"g": torch.tensor([0.6, 0.4, 1.0, 0.0])}, last_rho=0.1)
    # (U + m - Z) * 0.1 / 0.2 = [-0.2, 0.6, 0.0, 0.0] / 2
    assert torch.allclose(state.u["g"], torch.tensor([-0.1, 0.3, 0.0, 0.0]))


def test_no_admm_and_ramp():
    off = _state(rho0=0.0)
    off.m = {"g": torch.tensor([0.9, 0.1, 0.4, 0.3])}
    off.admm_step()
    assert off.z_steps == 0 and off.rho == 0.0 and float(off.penalty(off.m)) == 0.0
    assert off.merge_mask()["g"].tolist() == [1.0, 0.0, 1.0, 0.0]  # top-2 of m itself
    ramped = _state(ramp=2)
    ramped.m = {"g": torch.tensor([0.9, 0.1, 0.4, 0.3])}
    ramped.admm_step()
    assert ramped.z["g"].sum() == 3  # p/2 = 0.25 of 4 channels: keep ceil(3.0) = 3
    assert ramped.merge_mask()["g"].sum() == 2  # the merge always prunes the full share


def test_penalty_by_hand_and_state_dict_round_trip():
    state = _state()
    state.z, state.u, state.rho = {"g": torch.tensor([1.0, 0.0, 1.0, 0.0])}, {"g": torch.full((4,), 0.5)}, 2.0
    m = {"g": torch.tensor([1.0, 0.5, 0.5, 0.0])}  # m - Z + U = [0.5, 1.0, 0.0, 0.5] -> squares sum 1.5
    assert float(state.penalty(m)) == pytest.approx(1.5)  # rho / 2 * 1.5
    copy_ = _state()
    copy_.load_state_dict(state.state_dict())
    assert copy_.rho == 2.0 and torch.equal(copy_.u["g"], state.u["g"]) and torch.equal(copy_.z["g"], state.z["g"])
    with pytest.raises(KeyError):
        copy_.load_state_dict({"m": {}})


def test_federated_rounds_with_one_device_equal_the_centralized_loop(tmp_path):
    """Three FedADMP rounds (strategy + the real ClientApp, one device) equal the centralized run's loop
    (``admp_local_train`` then ``AdmpState.admm_step``) on the same data, batches and schedule, with
    centroid pseudo labels: the fleet's aggregated centroids of one device are that device's own.

    What the two runs still differ in is outside the state: the centralized run draws its batches
    from one generator for all epochs, and its first Z-step ends epoch ``warmup_epochs`` where the
    federated one ends round ``warmup_rounds + 1``."""
    set_flower_task()
    hp = AdmpHyper(
        batch_size=16, teacher_bn="local", lambda_im=0.0, centroids="fleet"
    )  # centroid pseudo labels, no marginal
    data = DataSpec(num_devices=1, samples_per_device=40).model_dump()
    scenario = P.device_scenario(3, data, {"arch": "lenet", "width": 0.25}, "lenet", 10, (1, 28, 28))
    torch.manual_seed(0)
    teacher = build_model("lenet", 10, 0.25).eval()
    groups = teacher.channel_groups()
    settings = AdmmSettings(hp.prune_ratio, hp.rho, hp.rho_gamma, hp.rho_max, hp.prune_ramp)
    sizes = group_sizes(teacher, groups)
    fleet = Fleet(
        {0: 50},
        3,
        Delivery(P.to_record(teacher.state_dict()), state_hash(teacher.state_dict())),
        {"scenario": scenario, "hp": hp.model_dump()},
        shared=SharedStats(10, centroids_on=True, feature_dim=feature_dim(teacher)),
    )
    strategy = FedADMP(
        weights=teacher.state_dict(),
        state=AdmpState.initial(settings, sizes),
        s_min=hp.s_min,
        warmup_rounds=1,
        dual="global",
        local_epochs=1,
        fleet=fleet,
        policy=RoundPolicy(1),
    )
    context = Context(
        run_id=1,
        node_id=50,
        node_config={"partition-id": 0, "cache-dir": str(tmp_path)},
        state=RecordDict(),
        run_config={},
    )
    weights = teacher.state_dict()
    x = load_device(scenario, 0).train.x
    targets = teacher_targets(teacher, x, "local")
    student, central = copy.deepcopy(teacher), AdmpState.initial(settings, sizes)
    centroids = None  # the centroid pseudo labels: the device's own in round 1, then the last round's
    for rnd in (1, 2, 3):
        (msg,) = strategy.configure_train(rnd, P.to_record(weights), ConfigRecord(), None)
        arrays, _ = strategy.aggregate_train(rnd, [client.app(msg, context)])
        weights = P.from_record(arrays)
        labels, sums = student_pseudo_labels(student, x, centroids, (groups, central.m))
        centroids = sums.centroids()
        gen = torch_generator(3, "client", 0, rnd)
        admp_local_train(student, groups, central, x, targets, 1, hp, gen, labels=labels)
        if rnd > 1:  # after the warm-up round
            central.admm_step()
    fed = strategy.state
    assert torch.allclose(fleet.shared.sums.centroids(), centroids, atol=1e-6)
    assert fed.z_steps == central.z_steps == 2 and fed.rho == central.rho
    for name in ("m", "s", "z", "u"):
        for g in sizes:
            assert torch.allclose(getattr(fed, name)[g], getattr(central, name)[g], atol=1e-6), (name, g)
    for key, value in student.state_dict().items():
        assert torch.allclose(weights[key].float(), value.float(), atol=1e-5), key
