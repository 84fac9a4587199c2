"""The source recipe: normalisation inside the model (and its export), augmentation, selection on validation."""

import copy

import onnxruntime as ort
import pytest
import torch

from admp.augment import InputNorm, augment, set_input_normalisation
from admp.metrics import accuracy
from admp.models import build_model, example_input
from admp.source import train_supervised
from admp.surgery import prune_model
from admp_config.sections import TeacherSpec
from admp_export.formats import export_onnx


def test_input_norm_uses_the_source_statistics_per_channel():
    x = torch.tensor([[[[0.0, 2.0]], [[10.0, 10.0]]], [[[4.0, 6.0]], [[10.0, 10.0]]]])  # (2, 2, 1, 2)
    norm = InputNorm(2)
    set_input_normalisation(norm, x)
    # channel 0: values 0, 2, 4, 6 -> mean 3, sample std sqrt(20/3); channel 1 constant -> std floored at 1e-3
    assert norm.mean.tolist() == pytest.approx([3.0, 10.0])
    assert norm.std.tolist() == pytest.approx([(20 / 3) ** 0.5, 1e-3])
    out = norm(x)
    assert float(out[0, 0, 0, 0]) == pytest.approx(-3.0 / (20 / 3) ** 0.5) and float(out[0, 1].abs().max()) == 0.0


def test_grey_input_replaces_every_channel_by_the_channels_mean():
    norm = InputNorm(3)
    norm.set_mode(grey=True, per_image=False)  # source statistics left at mean 0, std 1
    pixel = torch.tensor([0.3, 0.6, 0.9]).view(1, 3, 1, 1)
    assert norm(pixel).flatten().tolist() == pytest.approx([0.6, 0.6, 0.6])
    swapped = pixel[:, [2, 0, 1]]  # another hue, the same grey level
    assert torch.allclose(norm(swapped), norm(pixel))


def test_per_image_statistics_remove_a_change_of_mean_colour_and_contrast():
    norm = InputNorm(1)
    norm.set_mode(grey=False, per_image=True)
    image = torch.tensor([0.0, 0.0, 2.0, 2.0]).view(1, 1, 2, 2)
    # mean 1, sample std sqrt(4/3): every value is -+ 1/sqrt(4/3) = -+0.866
    assert norm(image).flatten().tolist() == pytest.approx([-0.8660254, -0.8660254, 0.8660254, 0.8660254])
    assert torch.allclose(norm(image * 0.3 + 0.5), norm(image), atol=1e-6)


def test_the_input_switches_travel_with_the_weights_and_old_states_load_with_them_off():
    model = build_model("lenet", 10, 0.25, (3, 28, 28))
    set_input_normalisation(model, torch.rand(8, 3, 28, 28), grey=True, per_image=True)
    copy_of = build_model("lenet", 10, 0.25, (3, 28, 28))
    copy_of.load_state_dict(model.state_dict())
    assert (copy_of.norm.grey, copy_of.norm.per_image) == (True, True)
    assert model.state_dict()["norm.mode"].dtype == torch.long  # integer: no DP noise, never averaged away
    older = {k: v for k, v in model.state_dict().items() if k != "norm.mode"}
    fresh = build_model("lenet", 10, 0.25, (3, 28, 28))
    fresh.load_state_dict(older)
    assert (fresh.norm.grey, fresh.norm.per_image) == (False, False)


def test_the_source_statistics_under_grey_input_are_the_grey_images():
    x = torch.zeros(2, 3, 1, 1)
    x[0, :, 0, 0] = torch.tensor([0.0, 0.3, 0.6])  # grey 0.3
    x[1, :, 0, 0] = torch.tensor([0.9, 0.9, 0.9])  # grey 0.9
    norm = InputNorm(3)
    set_input_normalisation(norm, x, grey=True)
    # every channel sees 0.3 and 0.9: mean 0.6, sample std sqrt(0.18) = 0.4243
    assert norm.mean.tolist() == pytest.approx([0.6] * 3) and norm.std.tolist() == pytest.approx([0.18**0.5] * 3)


def test_input_switches_the_samples_cannot_take_are_config_errors():
    from admp.teacher import configure_input
    from admp_config.base import ConfigError

    model = build_model("mlp", 3, 1.0, (5,))
    with pytest.raises(ConfigError, match=r"teacher\.input_stats"):
        configure_input(model, TeacherSpec(input_stats="image"), torch.rand(4, 5))
    with pytest.raises(ConfigError, match=r"teacher\.grey_input"):
        configure_input(model, TeacherSpec(grey_input=True), torch.rand(4, 5))
    colour, grey = build_model("lenet", 10, 0.25, (3, 28, 28)), build_model("lenet", 10, 0.25, (1, 28, 28))
    configure_input(colour, TeacherSpec(), torch.rand(4, 3, 28, 28))  # input_stats auto
    configure_input(grey, TeacherSpec(), torch.rand(4, 1, 28, 28))
    assert colour.norm.per_image and not grey.norm.per_image  # auto: per-image statistics for colour only
    images = build_model("lenet", 10, 0.25, (3, 28, 28))
    configure_input(images, TeacherSpec(normalise=False, grey_input=True), torch.rand(4, 3, 28, 28))
    assert images.norm.grey and images.norm.mean.tolist() == [0.0] * 3  # switch set, statistics left alone


def test_the_exported_model_normalises_raw_inputs_itself(tmp_path):
    """Normalisation is part of the model, survives pruning and is in the ONNX graph: a device feeds raw x."""
    torch.manual_seed(0)
    model = build_model("lenet", 10, 0.25)
    set_input_normalisation(model, torch.rand(64, 1, 28, 28) * 0.5 + 0.2)
    model.eval()
    keep = {g: (torch.arange(n) % 2 == 0).float() for g, n in (("conv1", 8), ("conv2", 16))}
    pruned = prune_model(model, model.channel_groups(), keep, example_input(model)).eval()
    assert torch.equal(pruned.norm.mean, model.norm.mean)  # the statistics travel with the weights
    export_onnx(pruned, example_input(pruned), tmp_path / "m.onnx")
    raw = torch.rand(3, 1, 28, 28)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: raw.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_out), pruned(raw), atol=1e-4)
        manual = copy.deepcopy(pruned)
        manual.norm = torch.nn.Identity()  # without its norm layer the model would see other inputs
        assert not torch.allclose(manual(raw), pruned(raw), atol=1e-3)


def test_augment_is_seeded_shape_preserving_and_small():
    images = torch.zeros(4, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, images)
    assert float(a.sum()) == pytest.approx(float(images.sum()), rel=0.15)  # moved and turned, hardly lost
    windows = torch.randn(4, 6, 128)
    w = augment(windows, torch.Generator().manual_seed(0))
    assert w.shape == windows.shape and not torch.equal(w, windows)
    ratio = (w.std() / windows.std()).item()
    assert 0.85 < ratio < 1.15  # scaling within +-10 % plus 5 % jitter


def test_selection_on_validation_keeps_the_best_epoch():
    """The weights kept are those of the epoch with the best validation accuracy (ties: the later epoch)."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = build_model("lenet", 2, 0.25)
    recipe = TeacherSpec(epochs=4, lr=0.05, batch_size=16, augment=False, label_smoothing=0.0)
    history = train_supervised(model, x, y, recipe, torch.Generator().manual_seed(0), val=(x, y))
    best = max(range(4), key=lambda i: (history["val_acc"][i], i))  # ties: the later epoch
    assert history["kept_epoch"] == best + 1 and len(history["losses"]) == 4
    assert accuracy(model, x, y) == pytest.approx(history["val_acc"][best])  # the kept weights are that epoch's
