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
