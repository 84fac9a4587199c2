"""Training loops on tiny models with hand-checked expectations."""

import copy

import pytest
import torch

from admp.losses import kd_divergence
from admp.masks import group_sizes
from admp.models import build_model, classifier_of
from admp.state import AdmmSettings, AdmpState
from admp.trainer import (
    admp_local_train,
    frozen_bn_stats,
    kd_finetune,
    local_epochs_for,
    recalibrate_bn,
    steps_per_epoch,
    trained_parameters,
)
from admp_config.sections import AdmpHyper


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet", 10, 0.25)


def _own_targets(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own train-mode logits: KD towards them has zero divergence and zero gradient."""
    model.train()
    with torch.no_grad(), frozen_bn_stats(model):
        return model(x)


def test_frozen_bn_stats_keeps_running_statistics_and_restores_momentum():
    bn = torch.nn.BatchNorm1d(2).train()
    with frozen_bn_stats(bn):
        bn(torch.full((4, 2), 5.0))
    assert bn.running_mean.tolist() == [0.0, 0.0] and bn.momentum == 0.1
    bn(torch.full((4, 2), 5.0))  # outside the block the statistics move again: 0.9 * 0 + 0.1 * 5
    assert bn.running_mean.tolist() == pytest.approx([0.5, 0.5])


def test_recalibrate_bn_is_the_plain_mean_over_all_batches():
    bn = torch.nn.BatchNorm1d(1)
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0], [8.0]])  # batches of 2: (0, 2), (4, 6), (8)
    recalibrate_bn(torch.nn.Sequential(bn), x, batch_size=2)
    # cumulative average of the batch means 1, 5 (the single-sample last batch is skipped): 3
    assert float(bn.running_mean) == pytest.approx(3.0) and bn.momentum == 0.1 and not bn.training


def _state(student: torch.nn.Module, z_zero: dict[str, list[int]], rho: float) -> AdmpState:
    state = AdmpState.initial(AdmmSettings(0.5, rho, 1.0, 1.0), group_sizes(student, student.channel_groups()))
    for group, channels in z_zero.items():
        state.z[group][channels] = 0.0
    state.rho = rho
    return state


def test_one_admp_step_moves_m_by_the_admm_gradient_only():
    """Student = teacher, m = s = 1: D and its gradient vanish, so one SGD step on m is
    -mask_lr * rho * (m - Z + U) = -0.1 on the channels whose Z is 0, and 0 elsewhere."""
    student = _lenet()
    x = torch.rand(8, 1, 28, 28)
    hp = AdmpHyper(
        mask_lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        batch_size=8,
        lambda_pl=0.0,
        lambda_im=0.0,
        l1_m=0.0,
        adversary=False,
    ).model_copy(update={"lr": 0.0})  # W frozen (a config needs lr > 0)
    state = _state(student, {"conv1": [0, 3]}, rho=1.0)
    before = copy.deepcopy(student.state_dict())
    stats = admp_local_train(
        student, student.channel_groups(), state, x, _own_targets(student, x), 1, hp, torch.Generator().manual_seed(0)
    )
    expected = torch.ones(8)
    expected[[0, 3]] = 0.9
    assert torch.allclose(state.m["conv1"], expected) and torch.allclose(state.m["conv2"], torch.ones(16))
    assert stats["samples"] == 8 and stats["divergence"] == pytest.approx(0.0, abs=1e-6)
    assert all(
        torch.equal(before[k], v)
        for k, v in student.state_dict().items()
        if "running" not in k and "num_batches" not in k
    )  # lr = 0: the weights stay


def test_l1_push_and_clipping_of_m():
    student = _lenet()
    x = torch.rand(8, 1, 28, 28)
    hp = AdmpHyper(
        mask_lr=0.1, momentum=0.0, batch_size=8, lambda_pl=0.0, lambda_im=0.0, l1_m=0.5, adversary=False
    ).model_copy(update={"lr": 0.0})
    state = _state(student, {}, rho=0.0)  # no penalty: only the L1 push, 0.1 * 0.5 per step
    admp_local_train(
        student, student.channel_groups(), state, x, _own_targets(student, x), 1, hp, torch.Generator().manual_seed(0)
    )
    assert torch.allclose(state.m["conv1"], torch.full((8,), 0.95))
    state.m = {g: torch.full_like(v, 0.01) for g, v in state.m.items()}  # one more step would cross 0
    admp_local_train(
        student, student.channel_groups(), state, x, _own_targets(student, x), 1, hp, torch.Generator().manual_seed(0)
    )
    assert all(float(v.min()) == 0.0 for v in state.m.values())  # clipped to [0, 1]


def test_adversary_keeps_s_in_its_box_and_budget():
    student, teacher = _lenet(), build_model("lenet", 10, 0.25)
    x = torch.rand(32, 1, 28, 28)
    hp = AdmpHyper(batch_size=8, adv_lr=0.2, adv_eps=0.1, s_min=0.5)
    state = _state(student, {}, rho=0.0)
    teacher.eval()
    with torch.no_grad():
        targets = teacher(x)
    admp_local_train(student, student.channel_groups(), state, x, targets, 2, hp, torch.Generator().manual_seed(1))
    for s in state.s.values():
        assert float(s.min()) >= 0.5 - 1e-6 and float(s.max()) <= 1.0 + 1e-6
        assert float((1 - s).mean()) <= 0.1 + 1e-5  # the budget
    assert any(float(s.min()) < 1.0 for s in state.s.values())  # the adversary did attenuate channels


def test_kd_finetune_brings_the_student_to_its_teacher():
    torch.manual_seed(0)
    student, teacher = build_model("lenet", 10, 0.25), build_model("lenet", 10, 0.5).eval()
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        targets = teacher(x)
    hp = AdmpHyper(batch_size=16, lambda_pl=0.0)
    first = kd_finetune(student, x, targets, 1, hp, torch.Generator().manual_seed(0), lr=0.05)
    for _ in range(15):
        last = kd_finetune(student, x, targets, 1, hp, torch.Generator().manual_seed(0), lr=0.05)
    assert last["samples"] == 32 and last["divergence"] < 0.5 * first["divergence"]
    student.eval()
    with torch.no_grad():
        assert float(kd_divergence(targets, student(x), hp.tau)) < first["divergence"]


def test_local_epochs_give_every_device_its_minimum_of_sgd_steps():
    assert steps_per_epoch(210, 64) == 4  # 3 full batches + 18 samples
    assert steps_per_epoch(65, 64) == 1  # the single leftover sample is skipped (BatchNorm)
    assert local_epochs_for(210, 64, epochs=1, min_steps=20) == 5  # ceil(20 / 4)
    assert local_epochs_for(65, 64, epochs=2, min_steps=20) == 20
    assert local_epochs_for(6400, 64, epochs=2, min_steps=20) == 2  # 100 steps per epoch: local_epochs stands
    assert local_epochs_for(1, 64, epochs=3, min_steps=20) == 3 and local_epochs_for(210, 64, 1, 0) == 1


def test_max_local_epochs_bounds_what_min_local_steps_adds():
    assert local_epochs_for(65, 64, epochs=2, min_steps=20, max_epochs=5) == 5  # 20 wanted, 5 at most
    assert local_epochs_for(210, 64, epochs=1, min_steps=20, max_epochs=5) == 5  # ceil(20 / 4) = 5: unbounded
    assert local_epochs_for(300, 64, epochs=1, min_steps=20, max_epochs=5) == 4  # ceil(20 / 5)
    assert local_epochs_for(65, 64, epochs=8, min_steps=20, max_epochs=5) == 8  # local_epochs itself is not bounded
    assert local_epochs_for(65, 64, epochs=1, min_steps=20, max_epochs=0) == 20  # 0: no bound


def test_a_frozen_classifier_keeps_its_source_weights_while_the_features_adapt():
    torch.manual_seed(0)
    student = build_model("lenet", 10, 0.25)
    head = classifier_of(student)
    head_name = next(n for n, m in student.named_modules() if m is head)
    hp = AdmpHyper(batch_size=8, freeze_classifier=True)
    assert len(trained_parameters(student, hp)) == len(list(student.parameters())) - 2  # head weight and bias
    before = {k: v.clone() for k, v in student.state_dict().items()}
    kd_finetune(student, torch.rand(16, 1, 28, 28), torch.randn(16, 10), 1, hp, torch.Generator().manual_seed(0), 0.1)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert f"{head_name}.weight" not in changed and f"{head_name}.bias" not in changed
    assert any(k.endswith("weight") for k in changed)  # the feature layers did train
