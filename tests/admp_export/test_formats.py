"""The ONNX export: torchlib's registry is built once per process, and torch is left as it was."""

import torch

from admp.models import build_model, example_input
from admp_export import formats
from admp_export.formats import export_onnx, onnx_max_abs_diff


def test_exports_share_one_registry_and_leave_the_exporter_as_it_was(tmp_path, monkeypatch):
    from torch.onnx._internal.exporter import _registration

    monkeypatch.setattr(formats, "_REGISTRIES", {})
    original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    for arch, classes in (("lenet", 10), ("cnn1d", 6)):
        model = build_model(arch, classes, 0.25).eval()
        export_onnx(model, example_input(model), tmp_path / f"{arch}.onnx")
        inputs = torch.cat([example_input(model)] * 3)
        assert onnx_max_abs_diff(tmp_path / f"{arch}.onnx", model, inputs) < 1e-4
    assert len(formats._REGISTRIES) == 1  # two exports, one build
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is original  # restored after each export
