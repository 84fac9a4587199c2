"""The ONNX export: every model family, with the input layer's switches on, runs in ONNX Runtime at any
batch size and computes what PyTorch computes."""

import onnx
import pytest
import torch

from admp.augment import set_input_normalisation
from admp.models import build_model, example_input
from admp_export.formats import export_onnx, onnx_max_abs_diff


@pytest.mark.parametrize(("arch", "classes"), [("lenet", 10), ("resnet", 10), ("cnn1d", 6), ("mlp", 5)])
def test_every_family_exports_with_a_dynamic_batch(arch, classes, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, classes, 0.25).eval()
    path = export_onnx(model, example_input(model), tmp_path / f"{arch}.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # not fixed to the example's 1
    inputs = torch.rand(5, *example_input(model).shape[1:])
    assert onnx_max_abs_diff(path, model, inputs) < 1e-4


@pytest.mark.parametrize(("grey", "per_image"), [(True, False), (False, True), (True, True)])
def test_the_input_layers_switches_are_part_of_the_export(grey, per_image, tmp_path):
    """Grey conversion and per-image statistics are computed inside the exported graph: a colour batch
    gives ONNX Runtime's outputs equal to PyTorch's, and unlike those of the model with both switches off."""
    torch.manual_seed(0)
    model = build_model("lenet", 10, 0.25, (3, 28, 28)).eval()
    colour = torch.rand(6, 3, 28, 28)
    set_input_normalisation(model, colour, grey=grey, per_image=per_image)
    path = export_onnx(model, example_input(model), tmp_path / "switched.onnx")
    assert onnx_max_abs_diff(path, model, colour) < 1e-4
    plain = build_model("lenet", 10, 0.25, (3, 28, 28)).eval()
    plain.load_state_dict(model.state_dict() | {"norm.mode": torch.zeros(2, dtype=torch.long)})
    assert not torch.allclose(plain(colour), model(colour), atol=1e-4)
