import math

import pytest
import torch

from admp import losses


def test_kd_divergence_zero_when_student_equals_teacher():
    logits = torch.randn(16, 10)
    assert float(losses.kd_divergence(logits, logits.clone(), tau=4.0)) == pytest.approx(0.0, abs=1e-6)


def test_kd_divergence_by_hand():
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # q = [0.75, 0.25] at tau = 1
    student = torch.zeros(1, 2)  # p = [0.5, 0.5]
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(losses.kd_divergence(teacher, student, tau=1.0)) == pytest.approx(expected, rel=1e-5)
    # tau scales both the softening and the tau^2 factor
    assert float(losses.kd_divergence(teacher * 2, student, tau=2.0)) == pytest.approx(4 * expected, rel=1e-5)


def test_pseudo_labels_keep_only_confident():
    teacher = torch.tensor([[5.0, 0.0], [0.1, 0.0], [0.0, 6.0]])
    labels, keep = losses.pseudo_labels(teacher, threshold=0.9)
    assert labels.tolist() == [0, 0, 1]
    assert keep.tolist() == [True, False, True]
    assert float(losses.pseudo_label_ce(torch.zeros(3, 2), torch.zeros(3, 2), 0.9)) == 0.0


def test_information_maximisation_by_hand():
    # two confident, opposite predictions: entropy per sample ~0, diversity log 2
    logits = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert float(losses.information_maximisation(logits)) == pytest.approx(-math.log(2), abs=1e-4)


@pytest.mark.parametrize("eps,s_min", [(0.1, 0.5), (0.05, 0.0), (0.3, 0.2)])
def test_projection_never_leaves_the_budget(eps, s_min):
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        s = torch.rand(37, generator=gen) * 2 - 0.5  # many entries outside [s_min, 1]
        out = losses.project_budget(s, s_min, eps)
        assert float(out.min()) >= s_min and float(out.max()) <= 1.0
        assert float((1 - out).mean()) <= eps + 1e-9


def test_projection_is_identity_inside_the_budget():
    s = torch.tensor([1.0, 0.9, 0.95, 1.0])  # mean(1 - s) = 0.0375
    assert torch.equal(losses.project_budget(s, 0.5, 0.1), s)


def test_adversary_step_ascends_and_respects_budget():
    soft = {"g": torch.ones(4)}
    grads = {"g": torch.tensor([-2.0, -1.0, 0.0, 0.5])}  # D grows when s_0, s_1 shrink
    out = losses.adversary_step(soft, grads, lr=0.1, s_min=0.5, eps=0.05)["g"]
    # normalised step: [-0.1, -0.05, 0, +0.05] -> clipped to [0.9, 0.95, 1, 1]; mean(1-s) = 0.0375
    assert torch.allclose(out, torch.tensor([0.9, 0.95, 1.0, 1.0]))
    tight = losses.adversary_step(soft, grads, lr=0.1, s_min=0.5, eps=0.02)["g"]
    assert float((1 - tight).mean()) <= 0.02 + 1e-9
    assert float(tight[0]) < float(tight[1]) <= 1.0  # the most harmful channel is attacked most


def test_teacher_targets_with_local_bn_use_the_target_statistics():
    from admp.trainer import teacher_targets

    teacher = torch.nn.Sequential(torch.nn.BatchNorm1d(2))  # running mean 0, var 1; affine identity
    teacher.eval()
    x = torch.tensor([[10.0, -4.0], [12.0, -2.0], [14.0, 0.0]])  # per-feature mean (12, -2), variance 8/3 (biased)
    source = teacher_targets(teacher, x, bn="source")
    assert torch.allclose(source, x / (1 + 1e-5) ** 0.5, atol=1e-5)  # the teacher as trained
    local = teacher_targets(teacher, x, bn="local")
    # AdaBN: normalised with the target's own statistics; running_var takes the unbiased estimate (4)
    expected = (x - torch.tensor([12.0, -2.0])) / (4.0 + 1e-5) ** 0.5
    assert torch.allclose(local, expected, atol=1e-5)
    assert torch.equal(teacher[0].running_mean, torch.zeros(2))  # the teacher itself is untouched


def test_per_device_bn_accuracy_adapts_each_device_separately():
    from admp.trainer import per_device_bn_accuracy

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(1), torch.nn.Linear(1, 2))
    with torch.no_grad():  # logits (-z, z): class 1 iff the normalised feature z > 0
        model[1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model[1].bias.zero_()
    model.eval()
    # device A lives around 10, device B around -10; in each, class 1 is "above the device's own mean"
    a = (torch.tensor([[9.0], [11.0]]), torch.tensor([[9.5], [10.5], [10.8]]), torch.tensor([0, 1, 1]))
    b = (torch.tensor([[-11.0], [-9.0]]), torch.tensor([[-10.5], [-9.5]]), torch.tensor([0, 1]))
    assert per_device_bn_accuracy(model, [a, b]) == pytest.approx(100.0)
    # with the source statistics (mean 0) device A is all class 1 and B all class 0: 2/3 and 1/2 right
    from admp.metrics import accuracy

    assert accuracy(model, torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]])) == pytest.approx(60.0)
    assert torch.equal(model[0].running_mean, torch.zeros(1))


def test_information_maximisation_with_the_fleets_marginal_by_hand():
    from admp.losses import information_maximisation

    logits = torch.tensor([[50.0, -50.0], [50.0, -50.0]])  # confident, both class 0: entropy per sample ~0
    # own batch only: mean prediction (1, 0) has entropy 0 -> IM = 0 - 0
    assert float(information_maximisation(logits)) == pytest.approx(0.0, abs=1e-6)
    # fleet (0, 1), own share 1/2: the fleet's mean is (1/2, 1/2), entropy ln 2 -> IM = 0 - ln 2
    fleet = torch.tensor([0.0, 1.0])
    assert float(information_maximisation(logits, fleet, 0.5)) == pytest.approx(-math.log(2), abs=1e-5)
    # a label-skewed device whose fleet is balanced is not pushed: share 0 -> diversity of the fleet only
    balanced = torch.tensor([0.5, 0.5])
    assert float(information_maximisation(logits, balanced, 0.0)) == pytest.approx(-math.log(2), abs=1e-5)
